"""Benchmark: neighbour distributions of account attributes (botwatch.features.attributes) on a
follow graph with one hub.

Generates (hash-based, so the same flags give the same data) ``--accounts`` accounts with
``--attributes`` numeric attributes (lognormal, ~10 % null, ~10 % zero) and ``--edges`` follows:
``--hub-followers`` distinct accounts follow one hub (id 0), the rest go to Zipf-distributed
targets from uniform sources. Both are written to Parquet once; then, each timed with peak memory
(psutil: the Python driver plus its JVM):

- ``neighbor_distributions``: mean, std, median, p10, p90, share zero/missing and count of every
  attribute over followees, followers and all neighbours, written to Parquet;
- ``neighbor_overlap`` (shared neighbours, largest overlap with one other account; degree cap).

Skew is read from Spark's REST API after each run: for every stage, the largest task's share of
the stage's summed task time (1/tasks when perfectly even; 1.0 when one task does everything).
``--no-salt`` reruns the distributions with the hub salting switched off (hub_degree_cap above
every degree) for comparison.

    .venv/bin/python bench/attributes.py --accounts 1000000 --edges 5000000 --hub-followers 500000
    .venv/bin/python bench/attributes.py --accounts 250000 --edges 1250000 --hub-followers 125000
"""
from __future__ import annotations

import argparse
import calendar
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from common import PeakMemory, finish, local_spark, timed


def generate(spark, n_accounts: int, n_edges: int, hub_followers: int, n_attrs: int, seed: int):
    from pyspark.sql import functions as F

    def uniform(col, tag: int):
        return F.pmod(F.xxhash64(F.lit(seed), col, F.lit(tag)), F.lit(1 << 53)) / float(1 << 53)

    i = F.col("id")
    n = F.lit(n_accounts).cast("long")
    # Followers of the hub: accounts 1..hub_followers (distinct). Others: uniform source, Zipf target.
    src = F.when(i < hub_followers, i + 1).otherwise(F.floor(uniform(i, 1) * n_accounts).cast("long"))
    dst = F.when(i < hub_followers, F.lit(0).cast("long")).otherwise(
        F.pmod(F.floor(F.pow(uniform(i, 2), F.lit(2.5)) * n_accounts).cast("long") + 1, n))
    edges = spark.range(n_edges).select(
        src.alias("src"), dst.alias("dst"),
        (F.lit("2024-01-01").cast("timestamp") + F.make_interval(secs=F.floor(uniform(i, 3) * 86400 * 100)))
        .alias("created_at"),
    )
    attrs = []
    for k in range(n_attrs):
        u = uniform(i, 10 + k)
        value = F.exp(F.lit(1.0) * (uniform(i, 100 + k) - 0.5) * 4)
        attrs.append(F.when(u < 0.1, None).when(u < 0.2, 0.0).otherwise(value).alias(f"a{k}"))
    accounts = spark.range(n_accounts).select(i.alias("account_id"), *attrs)
    return edges, accounts


def stage_skew(ui: str, app_id: str, since_ms: float) -> dict:
    """Per stage submitted after ``since_ms``: tasks, summed task run time, the largest task's share."""
    def get(path: str):
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{app_id}{path}") as r:
            return json.load(r)

    rows = []
    for s in get("/stages?status=complete"):
        sub = s.get("submissionTime")
        if not sub:
            continue
        t_ms = calendar.timegm(time.strptime(sub[:19], "%Y-%m-%dT%H:%M:%S")) * 1000  # GMT
        if t_ms < since_ms - 2000 or s["numTasks"] < 2:
            continue
        tasks = get(f"/stages/{s['stageId']}/{s['attemptId']}/taskList?length=100000")
        times = [task.get("taskMetrics", {}).get("executorRunTime", 0) for task in tasks]
        total = sum(times)
        if total <= 0:
            continue
        rows.append({"stage": s["stageId"], "tasks": len(times), "task_seconds": round(total / 1000, 1),
                     "largest_task_share": round(max(times) / total, 3), "even_share": round(1 / len(times), 3)})
    rows.sort(key=lambda r: -r["task_seconds"])
    heavy = [r for r in rows if r["task_seconds"] >= 0.05 * sum(x["task_seconds"] for x in rows)]
    return {"stages": len(rows), "heaviest": rows[:6],
            "max_largest_task_share_of_heavy_stages": max((r["largest_task_share"] for r in heavy), default=None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=5_000_000)
    ap.add_argument("--hub-followers", type=int, default=500_000)
    ap.add_argument("--attributes", type=int, default=8)
    ap.add_argument("--cap", type=int, default=1000, help="hub_degree_cap (hubs above it are salted)")
    ap.add_argument("--salt-buckets", type=int, default=32)
    ap.add_argument("--overlap-cap", type=int, default=100)
    ap.add_argument("--no-salt", action="store_true", help="also run the distributions without hub salting")
    ap.add_argument("--skip-overlap", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--shuffle-partitions", type=int, default=16)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import datetime as dt

    from botwatch.features.attributes import neighbor_distributions, neighbor_overlap

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_attrs_"))
    spark, _ = local_spark(f"{workdir}/wh", "bench-attributes", driver_memory=args.driver_memory,
                           shuffle_partitions=args.shuffle_partitions, overrides=[
                               "spark.ui_enabled=true",
                               "spark.extra_conf={spark.ui.port: '4077', spark.ui.retainedTasks: '500000'}"])
    ui, app_id = spark.sparkContext.uiWebUrl, spark.sparkContext.applicationId
    out: dict = {"accounts": args.accounts, "edges": args.edges, "hub_followers": args.hub_followers,
                 "attributes": args.attributes, "cap": args.cap, "salt_buckets": args.salt_buckets,
                 "shuffle_partitions": args.shuffle_partitions, "driver_memory": args.driver_memory,
                 "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    with timed() as t:
        edges, accounts = generate(spark, args.accounts, args.edges, args.hub_followers, args.attributes, args.seed)
        edges.write.mode("overwrite").parquet(str(workdir / "edges"))
        accounts.write.mode("overwrite").parquet(str(workdir / "accounts"))
    out["generate_seconds"] = round(t["seconds"], 1)
    edges, accounts = spark.read.parquet(str(workdir / "edges")), spark.read.parquet(str(workdir / "accounts"))
    ids = accounts.select("account_id")
    cols = [f"a{k}" for k in range(args.attributes)]
    run_date = dt.date(2024, 6, 1)

    def run(name: str, cap: int) -> None:
        since = time.time() * 1000
        with PeakMemory() as mem, timed() as t:
            neighbor_distributions(edges, ids, run_date, accounts, cols, hub_degree_cap=cap,
                                   salt_buckets=args.salt_buckets).write.mode("overwrite").parquet(
                str(workdir / name))
        res = spark.read.parquet(str(workdir / name))
        hub = res.where("account_id = 0").select("nbr_in_count_a0", "nbr_in_mean_a0", "nbr_in_median_a0").first()
        out[name] = {"seconds": round(t["seconds"], 1), "peak_rss_gib": round(mem.peak_gib, 2),
                     "columns": len(res.columns) - 1, "hub_row": hub.asDict(),
                     "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                     "skew": stage_skew(ui, app_id, since)}
        print(json.dumps({name: out[name]}, default=str), flush=True)

    run("distributions", args.cap)
    if not args.skip_overlap:
        since = time.time() * 1000
        with PeakMemory() as mem, timed() as t:
            neighbor_overlap(edges, ids, run_date, overlap_degree_cap=args.overlap_cap, hub_degree_cap=args.cap,
                             salt_buckets=args.salt_buckets).write.mode("overwrite").parquet(str(workdir / "overlap"))
        out["overlap"] = {"seconds": round(t["seconds"], 1), "peak_rss_gib": round(mem.peak_gib, 2),
                          "overlap_cap": args.overlap_cap,
                          "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                          "skew": stage_skew(ui, app_id, since)}
        print(json.dumps({"overlap": out["overlap"]}, default=str), flush=True)
    if args.no_salt:
        run("distributions_unsalted", 10**12)
    spark.stop()
    finish(out, args.json, workdir, keep=bool(args.workdir))


if __name__ == "__main__":
    main()
