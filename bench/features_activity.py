"""Benchmark: incremental activity features (daily partials + window combine) against a full
recompute, in Spark and in DuckDB.

Synthetic events come from ``spark.range`` with hash-based randomness (the same flags give the
same events): ``--accounts`` accounts over ``--days`` UTC days ending at the run date, about
``--events-per-day`` events per account and day in sessions of 4 (gaps of seconds to minutes,
session starts anywhere in the day, so sessions cross midnight), random event types, IPs and
devices. They are written once (untimed) as the Delta tables ``events`` (partitioned by
``event_date``) and ``accounts`` in a scratch warehouse. Then, timed with peak memory (psutil
over this process tree: Python driver + Spark JVM; DuckDB runs in a child process and reports
its own peak RSS):

(a) nightly step: ``activity_daily`` for the days before the run date is backfilled first
    (untimed for the ratio, reported as the partials backfill); the nightly step is
    ``build_activity_daily(D)`` (one day of events -> one Delta partition) plus
    ``activity_features(D)`` (combine the window's partials) written to Parquet. Compared with a
    from-scratch DuckDB SQL over the whole window's raw events (same features, 2 threads), whose
    output is checked against Spark's (n_events exact, entropies to 1e-9).
(b) full recompute (backfill) throughput: ``activity_features_from_scratch`` over all the
    window's raw events, in events/s.
(c) growth: the full recompute on the events of 1/8, 2/8, 4/8 and all of the accounts (subsets
    written once, untimed); least-squares exponent of time against events.

    .venv/bin/python bench/features_activity.py                      # the recorded run
    .venv/bin/python bench/features_activity.py --accounts 5000 --parts a   # a quick check
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PeakMemory, growth_exponent, local_spark, timed

DUCKDB_SQL = """
WITH ev AS (
    SELECT account_id, event_ts, event_type, ip_hash, device_id, CAST(event_date AS DATE) AS event_date
    FROM read_parquet({files}, hive_partitioning = true)
    WHERE CAST(event_date AS DATE) BETWEEN DATE '{start}' AND DATE '{run}'
),
offsets AS (
    SELECT account_id, CASE country {offset_cases} END AS off FROM read_parquet({account_files})
),
timed AS (
    SELECT *,
        epoch_us(event_ts) AS ts_us,
        lag(epoch_us(event_ts)) OVER w AS prev_us,
        lag(event_date) OVER w AS prev_day,
        count(*) OVER (PARTITION BY account_id, date_trunc('minute', event_ts)) AS per_minute,
        count(*) OVER (PARTITION BY account_id, date_trunc('hour', event_ts)) AS per_hour
    FROM ev
    WINDOW w AS (PARTITION BY account_id ORDER BY event_ts)
),
x AS (
    SELECT timed.*, win,
        CASE WHEN prev_day > DATE '{run}' - win THEN (ts_us - prev_us) / 1e6 END AS iet,
        (hour(event_ts) + off + 24) % 24 AS local_hour
    FROM timed
    CROSS JOIN (VALUES {window_values}) AS ws(win)
    LEFT JOIN offsets USING (account_id)
    WHERE event_date > DATE '{run}' - win
),
g AS (
    SELECT account_id, win,
        count(*) AS n_events,
        entropy(hour(event_ts)) AS hour_entropy,
        entropy(least(floor(log2(iet + 1)), 31)) FILTER (WHERE iet IS NOT NULL) AS iet_entropy,
        count(iet) AS n_iet, avg(iet) AS mu, stddev_pop(iet) AS sigma,
        max(per_minute) AS max_events_per_minute,
        max(per_hour) AS max_events_per_hour,
        count(local_hour) AS n_local,
        sum(cos(2 * pi() * local_hour / 24)) AS re,
        sum(sin(2 * pi() * local_hour / 24)) AS im,
        count(*) FILTER (WHERE local_hour < 6) AS n_night,
        entropy(isodow(event_date)) AS dow_entropy,
        entropy(event_type) AS event_type_entropy,
        approx_count_distinct(ip_hash) AS distinct_ips,
        approx_count_distinct(device_id) AS distinct_devices,
        count(*) FILTER (WHERE iet IS NULL OR iet > {gap}) AS session_count,
        coalesce(sum(iet) FILTER (WHERE iet <= {gap}), 0) AS session_seconds
    FROM x
    GROUP BY account_id, win
),
f AS (
    SELECT account_id, win, n_events, hour_entropy, iet_entropy,
        CASE WHEN n_iet >= 2 AND sigma + mu > 0 THEN (sigma - mu) / (sigma + mu) END AS burstiness,
        max_events_per_minute, max_events_per_hour,
        CASE WHEN n_local > 0 THEN sqrt(re * re + im * im) / n_local END AS circadian_amplitude,
        CASE WHEN n_local > 0 THEN n_night / n_local END AS night_share,
        dow_entropy, event_type_entropy, distinct_ips, distinct_devices, session_count,
        session_seconds / session_count AS mean_session_seconds
    FROM g
)
SELECT account_id, {pivot} FROM f GROUP BY account_id
"""

FEATURES = (
    "n_events", "hour_entropy", "iet_entropy", "burstiness", "max_events_per_minute", "max_events_per_hour",
    "circadian_amplitude", "night_share", "dow_entropy", "event_type_entropy", "distinct_ips", "distinct_devices",
    "session_count", "mean_session_seconds",
)


def duckdb_query(events_files: list[str], account_files: list[str], start: dt.date, run: dt.date,
                 windows: list[int], gap: int, offsets: dict[str, int]) -> str:
    pivot = ", ".join(
        [f"bool_or(win = {w}) AS has_activity_{w}d" for w in windows]
        + [f"max(CASE WHEN win = {w} THEN {n} END) AS {n}_{w}d" for w in windows for n in FEATURES]
    )
    return DUCKDB_SQL.format(
        files=json.dumps(events_files).replace('"', "'"),
        account_files=json.dumps(account_files).replace('"', "'"),
        start=start, run=run, gap=gap,
        window_values=", ".join(f"({w})" for w in windows),
        offset_cases=" ".join(f"WHEN '{c}' THEN {o}" for c, o in sorted(offsets.items())),
        pivot=pivot,
    )


def duckdb_worker(args) -> None:
    """Child process: run the from-scratch SQL, write Parquet, print seconds and peak RSS as JSON."""
    import duckdb

    spec = json.loads(Path(args.duckdb_worker).read_text())
    con = duckdb.connect()
    con.execute(f"SET threads = {spec['threads']}")
    # A cap with spilling: without one, DuckDB's window operators were OOM-killed beside Spark.
    con.execute(f"SET memory_limit = '{spec['memory_limit']}'")
    con.execute(f"SET temp_directory = '{spec['out']}.spill'")
    con.execute("SET preserve_insertion_order = false")
    start = time.perf_counter()
    con.execute(f"COPY ({spec['sql']}) TO '{spec['out']}' (FORMAT parquet)")
    seconds = time.perf_counter() - start
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{spec['out']}')").fetchone()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_gib": usage.ru_maxrss * 1024 / 2**30,
                      "cpu_s": usage.ru_utime + usage.ru_stime}))


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process tree (driver, Spark JVM, workers):
    under a shared machine this says more about cost than wall time does."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            c = proc.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def generate_events(spark, n_accounts: int, days: int, per_day: float, run: dt.date, seed: int):
    """Events of ``n_accounts`` over the ``days`` days ending at ``run``: sessions of 4 events."""
    from pyspark.sql import functions as F

    from botwatch import tables as t

    def u(tag: int, *cols):
        return F.pmod(F.xxhash64(F.lit(seed), F.lit(tag), *cols), F.lit(1 << 40)) / float(1 << 40)

    n_sessions = int(n_accounts * days * per_day / 4)
    first = dt.datetime.combine(run - dt.timedelta(days=days - 1), dt.time(), tzinfo=dt.UTC)
    # gaps inside a session: 2**(11u) seconds, i.e. 1 s to ~34 min, heavy-tailed
    gaps = [F.pow(F.lit(2.0), u(10 + k, F.col("id")) * 11.0) for k in range(3)]
    sess = spark.range(n_sessions).select(
        F.pmod(F.col("id"), F.lit(n_accounts)).alias(t.ACCOUNT_ID),
        (F.floor(u(1, F.col("id")) * days) * 86400.0 + u(2, F.col("id")) * 86400.0).alias("start_s"),
        F.col("id").alias("sid"),
        *[g.alias(f"g{k + 1}") for k, g in enumerate(gaps)],
    )
    ev = sess.select("*", F.explode(F.sequence(F.lit(0), F.lit(3))).alias("j"))
    offset_s = sum((F.when(F.col("j") >= k, F.col(f"g{k}")).otherwise(0.0) for k in (1, 2, 3)), F.lit(0.0))
    ts_us = (F.lit(int(first.timestamp() * 1e6)) + (F.col("start_s") + offset_s) * 1e6).cast("long")
    types = F.array(*[F.lit(x) for x in t.EVENT_TYPES])
    return ev.select(
        t.ACCOUNT_ID,
        F.timestamp_micros(ts_us).alias(t.EVENT_TS),
        F.get(types, F.floor(u(4, F.col("sid"), F.col("j")) * len(t.EVENT_TYPES)).cast("int")).alias(t.EVENT_TYPE),
        F.concat(F.lit("ip"), (F.col(t.ACCOUNT_ID) * 7 + F.floor(u(5, F.col("sid")) * 3)).cast("string")).alias(
            t.IP_HASH
        ),
        F.concat(F.lit("dev"), (F.col(t.ACCOUNT_ID) * 3 + F.floor(u(6, F.col("sid")) * 2)).cast("string")).alias(
            t.DEVICE_ID
        ),
    ).select("*", F.to_date(t.EVENT_TS).alias(t.EVENT_DATE)).where(F.col(t.EVENT_DATE) <= F.lit(run))


def generate_accounts(spark, n_accounts: int):
    from pyspark.sql import functions as F

    from botwatch import tables as t
    from botwatch.schemas import ACCOUNTS_SCHEMA

    countries = sorted(t.COUNTRY_UTC_OFFSET) + ["ZZ"]  # ZZ: no known offset
    arr = F.array(*[F.lit(c) for c in countries])
    cols = {
        t.ACCOUNT_ID: F.col("id"),
        t.COUNTRY: F.get(arr, F.pmod(F.xxhash64("id"), F.lit(len(countries))).cast("int")),
    }
    return spark.range(n_accounts).select(
        *[cols.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name) for f in ACCOUNTS_SCHEMA.fields]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--days", type=int, default=28, help="days of raw events ending at the run date")
    p.add_argument("--events-per-day", type=float, default=2.0, help="mean events per account and day")
    p.add_argument("--windows", default="1,7,28")
    p.add_argument("--run-date", default="2024-03-28")
    p.add_argument("--parts", default="abc", help="which of (a) nightly, (b) full recompute, (c) growth")
    p.add_argument("--scales", default="1,2,4,8", help="growth: eighths of the accounts whose events are used")
    p.add_argument("--nightly-reruns", type=int, default=0,
                   help="(a): run the same nightly step this many more times in the JVM, timed (warm cost)")
    p.add_argument("--duckdb-threads", type=int, default=2)
    p.add_argument("--duckdb-memory", default="8GB", help="DuckDB memory_limit (it spills to disk above it)")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="reuse the events and partials already in --workdir")
    p.add_argument("--duckdb-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.duckdb_worker:
        duckdb_worker(args)
        return

    from pyspark.sql import functions as F

    from botwatch import tables as t
    from botwatch.delta_io import read_table, table_exists, write_table
    from botwatch.features import activity as A

    run = dt.date.fromisoformat(args.run_date)
    windows = [int(w) for w in args.windows.split(",")]
    start = run - dt.timedelta(days=max(windows) - 1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_activity_"))
    wh = str(workdir / "warehouse")
    spark, _ = local_spark(wh, "bench-features-activity", driver_memory=args.driver_memory)
    results: dict = {"accounts": args.accounts, "days": args.days, "events_per_day": args.events_per_day,
                     "windows": windows, "run_date": str(run)}

    def report(key, value):
        results[key] = value
        print(f"{key}: {value}", flush=True)

    reuse = args.reuse and table_exists(spark, wh, t.EVENTS)
    with timed() as gen:
        if not reuse:
            write_table(generate_accounts(spark, args.accounts), wh, t.ACCOUNTS)
            write_table(generate_events(spark, args.accounts, args.days, args.events_per_day, run, args.seed), wh,
                        t.EVENTS, partition_by=[t.EVENT_DATE])
    events = read_table(spark, wh, t.EVENTS)
    accounts = read_table(spark, wh, t.ACCOUNTS)
    n_window = events.where(F.col(t.EVENT_DATE).between(F.lit(start), F.lit(run))).count()
    n_day = events.where(F.col(t.EVENT_DATE) == F.lit(run)).count()
    report("generate_s", round(gen["seconds"], 1))
    report("events_in_window", n_window)
    report("events_on_run_date", n_day)

    if "a" in args.parts:
        backfill = not (reuse and table_exists(spark, wh, t.ACTIVITY_DAILY))
        # The nightly figure depends on it: after a backfill in this JVM the daily step runs warm.
        report("nightly_mode", "warm (partials backfilled in this JVM)" if backfill else "cold (partials reused)")
        if backfill:
            with PeakMemory() as mem, timed() as back:
                A.build_activity_daily(spark, wh, start, run - dt.timedelta(days=1))
            report("backfill_partials_s", round(back["seconds"], 1))
            report("backfill_partials_events_per_s", round((n_window - n_day) / back["seconds"]))
            report("backfill_partials_peak_gib", round(mem.peak_gib, 2))
        # The night before left its window state behind (untimed): tonight rolls it forward.
        with timed() as boot:
            A.build_activity_window(spark, wh, run - dt.timedelta(days=1), windows)
        report("previous_night_state_s", round(boot["seconds"], 1))
        # What building D's partial adds first: deleting the window states of D and later (none, on a usual
        # night: a DELETE that matches no file). Three times: the first pays its JVM warm-up.
        drops = []
        for _ in range(3):
            with timed() as drop:
                A.drop_window_states_from(spark, wh, run)
            drops.append(round(drop["seconds"], 2))
        report("drop_window_states_noop_s", drops)
        spark_out = str(workdir / "spark_features.parquet")
        cpu0 = cpu_seconds()
        with PeakMemory() as mem, timed() as nightly:
            A.build_activity_daily(spark, wh, run)
            A.activity_features(spark, wh, run, windows).write.mode("overwrite").parquet(spark_out)
        nightly_cpu = cpu_seconds() - cpu0
        report("nightly_spark_s", round(nightly["seconds"], 1))
        report("nightly_spark_cpu_s", round(nightly_cpu, 1))
        report("nightly_spark_peak_gib", round(mem.peak_gib, 2))
        # Reruns of the same night in this JVM (idempotent: each replaces D's partitions): the step's warm cost.
        reruns = []
        for _ in range(args.nightly_reruns):
            with timed() as again:
                A.build_activity_daily(spark, wh, run)
                A.activity_features(spark, wh, run, windows).write.mode("overwrite").parquet(spark_out)
            reruns.append(round(again["seconds"], 1))
        if reruns:
            report("nightly_spark_rerun_s", reruns)
        # What the features step checks first (build.partial_days_to_build): missing partials, and stale
        # ones (a count of the window's events per day, from Parquet footers, against what each partial
        # recorded). Three times: the first pays its JVM warm-up.
        from botwatch.features.build import partial_days_to_build

        checks = []
        for _ in range(3):
            with timed() as check:
                to_build = partial_days_to_build(spark, wh, run, windows)
            checks.append(round(check["seconds"], 2))
        report("partial_days_to_build_s", checks)
        report("partial_days_to_build", [d.isoformat() for d in to_build])
        n_partials = read_table(spark, wh, t.ACTIVITY_DAILY).count()
        report("partial_rows", n_partials)

        from deltalake import DeltaTable

        files = [u.removeprefix("file://") for u in DeltaTable(f"{wh}/{t.EVENTS}").file_uris()]
        acc_files = [u.removeprefix("file://") for u in DeltaTable(f"{wh}/{t.ACCOUNTS}").file_uris()]
        duck_out = str(workdir / "duckdb_features.parquet")
        spec = {
            "sql": duckdb_query(files, acc_files, start, run, windows, A.SESSION_GAP_SECONDS, t.COUNTRY_UTC_OFFSET),
            "out": duck_out, "threads": args.duckdb_threads, "memory_limit": args.duckdb_memory,
        }
        spec_path = workdir / "duckdb_spec.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, __file__, "--duckdb-worker", str(spec_path)], capture_output=True,
                              text=True, check=True)
        duck = json.loads(done.stdout.strip().splitlines()[-1])
        report("duckdb_from_scratch_s", round(duck["seconds"], 1))
        report("duckdb_cpu_s", round(duck["cpu_s"], 1))
        report("ratio_duckdb_over_nightly_cpu", round(duck["cpu_s"] / nightly_cpu, 2))
        report("duckdb_peak_gib", round(duck["peak_gib"], 2))
        report("duckdb_events_per_s", round(n_window / duck["seconds"]))
        report("ratio_duckdb_over_nightly", round(duck["seconds"] / nightly["seconds"], 2))
        import duckdb

        check = duckdb.connect().execute(f"""
            SELECT count(*), count(d.account_id), max(abs(s.n_events_28d - d.n_events_28d)),
                   max(abs(s.hour_entropy_28d - d.hour_entropy_28d)), max(abs(s.iet_entropy_7d - d.iet_entropy_7d)),
                   max(abs(s.burstiness_28d - d.burstiness_28d)), max(abs(s.session_count_28d - d.session_count_28d)),
                   max(abs(s.circadian_amplitude_28d - d.circadian_amplitude_28d)),
                   max(abs(s.max_events_per_minute_7d - d.max_events_per_minute_7d))
            FROM read_parquet('{spark_out}/*.parquet') s LEFT JOIN read_parquet('{duck_out}') d USING (account_id)
        """).fetchone()
        report("spark_vs_duckdb", {
            "spark_rows": check[0], "matched": check[1], "max_abs_diff_n_events_28d": check[2],
            "hour_entropy_28d": check[3], "iet_entropy_7d": check[4], "burstiness_28d": check[5],
            "session_count_28d": check[6], "circadian_amplitude_28d": check[7], "max_per_minute_7d": check[8],
        })

    scales = [int(s) for s in args.scales.split(",")] if "c" in args.parts else []
    if "b" in args.parts and 8 not in scales:
        scales.append(8)
    if scales:
        sizes, seconds = [], []
        for k in sorted(scales):
            if k == 8:
                ev_k = events
            else:
                path = str(workdir / f"events_{k}of8.parquet")
                events.where(F.col(t.ACCOUNT_ID) < args.accounts * k // 8).write.mode("overwrite").parquet(path)
                ev_k = spark.read.parquet(path)
            n_k = ev_k.where(F.col(t.EVENT_DATE).between(F.lit(start), F.lit(run))).count()
            cpu0 = cpu_seconds()
            with PeakMemory() as mem, timed() as full:
                A.activity_features_from_scratch(ev_k, accounts, run, windows).write.mode("overwrite").format(
                    "noop"
                ).save()
            cpu = cpu_seconds() - cpu0
            sizes.append(n_k)
            seconds.append(full["seconds"])
            report(f"full_recompute_{k}of8", {"events": n_k, "seconds": round(full["seconds"], 1),
                                              "events_per_s": round(n_k / full["seconds"]),
                                              "cpu_s": round(cpu, 1), "events_per_cpu_s": round(n_k / cpu),
                                              "peak_gib": round(mem.peak_gib, 2)})
        if len(sizes) > 1:
            report("growth_exponent", round(growth_exponent(sizes, seconds), 3))

    import os

    report("load_average_1_5_15", [round(x, 1) for x in os.getloadavg()])
    spark.stop()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
