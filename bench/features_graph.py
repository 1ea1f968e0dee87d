"""Benchmark: triangles and clustering coefficients on a power-law follow graph with hubs.

Generates a directed graph in Spark (hash-based, so the same flags give the same graph) with
three kinds of follows: a ring lattice of local follows (many triangles), Zipf-distributed
targets (power-law in-degree) and "celebrity" hubs that take ``--hub-share`` of all follows
(at full size: 10 hubs of in-degree ~150k). Vertex ids are scrambled so a hub's id says nothing
about its degree. The graph is written to Parquet once; then, timed with peak memory (psutil;
for Spark the Python driver plus its JVM):

- botwatch's ``triangle_counts`` + ``clustering_coef`` on Spark (exact below the hub cap,
  hubs estimated from sampled neighbour pairs);
- an exact DuckDB self-join triangle count on the same Parquet, in a child process (so its
  peak memory is its own) with a timeout;
- GraphFrames' built-in ``triangleCount`` cannot run here: its jar is refused by Maven Central. In its
  place (``--engines`` ``gf-algorithm``), the algorithm of GraphFrames 0.12's exact ``triangleCount``
  written out in DataFrame calls: edges made undirected and distinct, every vertex's neighbour set
  gathered with ``collect_set`` (what its ``aggregateMessages`` does), then per edge the size of the
  intersection of its two ends' sets, summed per vertex and halved. It runs in a child process with
  its own Spark and a timeout, so a blow-up is measured, not fatal; where it finishes, its counts are
  checked against botwatch's below the cap. It stands for the algorithm, not for the jar.

Where DuckDB finishes, every vertex below the cap must match it exactly. The estimated hubs are
checked at every size against their exact counts (DuckDB: edges among each hub's neighbours),
as z-scores with the documented standard error.

    .venv/bin/python bench/features_graph.py --vertices 1000000 --edges 10000000
    .venv/bin/python bench/features_graph.py --vertices 100000 --edges 1000000 --duckdb-timeout 300
    .venv/bin/python bench/features_graph.py --engines gf-algorithm --gf-timeout 900   # that alone, full size
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common import PeakMemory, finish, local_spark, timed


def scramble_factor(n: int) -> int:
    """A multiplier coprime with ``n`` near n/golden ratio: i -> i*c mod n is a bijection that
    scatters consecutive indices (hubs are the smallest indices) over the whole id range."""
    c = int(n * 0.6180339887) | 1
    while math.gcd(c, n) != 1:
        c += 2
    return c


RING_WIDTH = 20  # local follows reach this many ids ahead (ring lattice: clustered neighbourhoods)


def generate(spark, n_vertices: int, n_edges: int, n_hubs: int, hub_share: float, local_share: float,
             zipf_power: float, seed: int):
    """Directed follows ``(src, dst, created_at)`` of the benchmark graph, from ``spark.range``."""
    from pyspark.sql import functions as F

    def uniform(tag: int):
        return (F.pmod(F.xxhash64(F.lit(seed), F.col("id"), F.lit(tag)), F.lit(1 << 53)) / float(1 << 53))

    n = F.lit(n_vertices).cast("long")
    src_idx = F.floor(uniform(1) * n_vertices).cast("long")
    kind = uniform(0)
    dst_idx = (
        F.when(kind < hub_share, F.floor(uniform(2) * n_hubs))
        .when(kind < hub_share + local_share, F.pmod(src_idx + 1 + F.floor(uniform(2) * RING_WIDTH), n))
        .otherwise(F.floor(F.pow(uniform(2), zipf_power) * n_vertices))
        .cast("long")
    )

    def scramble(idx):
        return F.pmod(idx * F.lit(scramble_factor(n_vertices)).cast("long") + n_vertices // 3, n)

    return spark.range(n_edges).select(
        scramble(src_idx).alias("src"),
        scramble(dst_idx).alias("dst"),
        (F.lit("2024-01-01").cast("timestamp") + F.make_interval(secs=F.floor(uniform(3) * 86400 * 120))).alias(
            "created_at"
        ),
    )


DUCKDB_SQL = """
CREATE OR REPLACE TABLE und AS
  SELECT DISTINCT least(src, dst) AS u, greatest(src, dst) AS v FROM read_parquet('{path}/*.parquet') WHERE src <> dst;
CREATE OR REPLACE TABLE tri AS
  WITH t AS (
    SELECT e1.u AS a, e1.v AS b, e2.v AS c              -- a < b < c, each triangle once
    FROM und e1 JOIN und e2 ON e1.v = e2.u JOIN und e3 ON e3.u = e1.u AND e3.v = e2.v
  )
  SELECT x AS account_id, count(*) AS triangles FROM (
    SELECT a AS x FROM t UNION ALL SELECT b FROM t UNION ALL SELECT c FROM t
  ) GROUP BY x;
"""


CHECK_SQL = """
SELECT
  count(*) FILTER (WHERE NOT o.triangles_estimated) AS exact_vertices,
  count(*) FILTER (WHERE NOT o.triangles_estimated AND o.triangles <> coalesce(d.triangles, 0)) AS exact_mismatches
FROM ours o LEFT JOIN tri d USING (account_id);
"""
# Exact triangles of the estimated hubs only (edges among each hub's neighbours): cheap even
# where the full self-join is not, so hub estimates are checked at every size.
HUB_EXACT_SQL = """
CREATE OR REPLACE TABLE hubs AS SELECT account_id AS h, degree, triangles, triangles_stderr FROM ours
  WHERE triangles_estimated;
CREATE OR REPLACE TABLE hub_nbrs AS
  SELECT h, v AS x FROM und JOIN hubs ON u = h UNION ALL SELECT h, u AS x FROM und JOIN hubs ON v = h;
CREATE OR REPLACE TABLE hub_exact AS
  SELECT a.h, count(*) AS exact FROM und e JOIN hub_nbrs a ON e.u = a.x JOIN hub_nbrs b ON e.v = b.x AND a.h = b.h
  GROUP BY a.h;
"""
HUB_ROWS_SQL = """
SELECT h, degree, coalesce(exact, 0) AS exact, triangles AS estimate, triangles_stderr AS stderr
FROM hubs LEFT JOIN hub_exact USING (h) ORDER BY degree DESC
"""


def hub_accuracy(rows: list[tuple], k: int) -> dict:
    """Hub estimates against exact counts: z uses the documented standard error with the true p."""
    zs, rel, listed = [], [], []
    for h, d, exact, est, stderr in rows:
        pairs = d * (d - 1) / 2
        p = exact / pairs
        se = pairs * math.sqrt(p * (1 - p) / k)
        z = (est - exact) / se if se > 0 else (0.0 if est == exact else float("inf"))
        zs.append(abs(z))
        rel.append(abs(est - exact) / exact if exact else None)
        if len(listed) < 10:
            listed.append({"id": h, "degree": d, "exact": exact, "estimate": round(est), "se_true_p": round(se),
                           "se_reported": round(stderr), "z": round(z, 2)})
    rels = sorted(r for r in rel if r is not None)
    return {
        "hubs": len(rows),
        "max_abs_z": round(max(zs), 2) if zs else None,
        "share_within_2se": round(sum(z <= 2 for z in zs) / len(zs), 3) if zs else None,
        "share_within_4se": round(sum(z <= 4 for z in zs) / len(zs), 3) if zs else None,
        "median_rel_error": round(rels[len(rels) // 2], 3) if rels else None,
        "largest_hubs": listed,
    }


def duckdb_child(graph: str, result: str, timeout_s: float, memory_limit: str, k: int) -> None:
    """Runs in its own process (so its memory is measured alone): the exact self-join with a
    timeout, then the checks of botwatch's counts."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = 2; SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{tempfile.mkdtemp(prefix='duckdb_tri_')}'")
    out: dict = {}
    timer = threading.Timer(timeout_s, con.interrupt)
    with PeakMemory() as mem, timed() as t:
        timer.start()
        try:
            con.execute(DUCKDB_SQL.format(path=graph))
            out["status"] = "ok"
        except duckdb.InterruptException:
            out["status"] = f"timed out after {timeout_s:.0f} s"
        except duckdb.Error as exc:
            out["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            timer.cancel()
    out["seconds"] = round(t["seconds"], 1)
    out["peak_rss_gib"] = round(mem.peak_gib, 2)
    con.execute(f"CREATE TABLE ours AS SELECT * FROM read_parquet('{result}/*.parquet')")
    if out["status"] == "ok":
        out["total_triangles"] = con.execute("SELECT sum(triangles) / 3 FROM tri").fetchone()[0]
        names = ["exact_vertices", "exact_mismatches"]
        out["check_exact_vertices"] = dict(zip(names, con.execute(CHECK_SQL).fetchone(), strict=True))
    elif not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'und'").fetchone()[0]:
        con.execute(DUCKDB_SQL.format(path=graph).split(";")[0])  # the edge list, for the hub check
    with timed() as t:
        con.execute(HUB_EXACT_SQL)
        out["check_hubs"] = hub_accuracy(con.execute(HUB_ROWS_SQL).fetchall(), k)
    out["check_hubs"]["seconds"] = round(t["seconds"], 1)
    print(json.dumps(out, default=str))


def run_duckdb(graph: str, result: str, timeout_s: float, memory_limit: str, k: int) -> dict:
    """DuckDB's exact self-join in a child process (its own memory, nothing of Spark's)."""
    cmd = [sys.executable, __file__, "--duckdb-child", graph, result, "--duckdb-timeout", str(timeout_s),
           "--duckdb-memory", memory_limit, "--pairs", str(k)]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout_s + 900)
        lines = done.stdout.strip().splitlines()
        child = json.loads(lines[-1]) if lines else {"status": f"child exited {done.returncode}"}
    except subprocess.TimeoutExpired:
        child = {"status": "child killed: no answer long after the timeout"}
    return {"engine": "duckdb exact self-join (2 threads)", "timeout_s": timeout_s, "memory_limit": memory_limit,
            **child}


def gf_algorithm_triangles(edges):
    """Triangles per vertex (``id``, ``count``) by GraphFrames 0.12's exact ``triangleCount``
    algorithm: per undirected edge, the size of the intersection of its ends' neighbour sets."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    und = edges.where(F.col("src") != F.col("dst")).select(
        F.least("src", "dst").alias("src"), F.greatest("src", "dst").alias("dst")
    ).distinct()
    messages = und.select(F.col("src").alias("id"), F.col("dst").alias("msg")).unionByName(
        und.select(F.col("dst").alias("id"), F.col("src").alias("msg"))
    )
    # GraphFrames persists the sets (MEMORY_AND_DISK) before the joins; so does this.
    sets = messages.groupBy("id").agg(F.collect_set("msg").alias("neighbors")).persist(StorageLevel.MEMORY_AND_DISK)
    sets.count()
    per_edge = (
        und.join(sets.select(F.col("id").alias("src"), F.col("neighbors").alias("src_set")), "src")
        .join(sets.select(F.col("id").alias("dst"), F.col("neighbors").alias("dst_set")), "dst")
        .select("src", "dst", F.array_size(F.array_intersect("src_set", "dst_set")).alias("common"))
        .where(F.col("common") > 0)
    )
    ends = per_edge.select(F.col("src").alias("id"), "common").unionByName(
        per_edge.select(F.col("dst").alias("id"), "common")
    )
    return ends.groupBy("id").agg((F.sum("common") / 2).cast("long").alias("count"))


def gf_child(graph: str, result: str, driver_memory: str, shuffle_partitions: int) -> None:
    """Runs in its own process group (killed whole on timeout): the GraphFrames algorithm on Spark."""
    spark, _ = local_spark(tempfile.mkdtemp(prefix="bench_gf_"), "bench-graphframes-algorithm",
                           driver_memory=driver_memory, shuffle_partitions=shuffle_partitions)
    with timed() as t:
        gf_algorithm_triangles(spark.read.parquet(graph)).write.mode("overwrite").parquet(result)
    print(json.dumps({"status": "ok", "seconds": round(t["seconds"], 1)}))


def run_gf_algorithm(graph: str, result: str, ours: str | None, timeout_s: float, driver_memory: str,
                     shuffle_partitions: int) -> dict:
    """The GraphFrames algorithm in a child process; the peak memory of the child and its JVM is
    sampled from here, so it is known even after a timeout, which kills the whole process group."""
    cmd = [sys.executable, __file__, "--gf-child", graph, result, "--driver-memory", driver_memory,
           "--shuffle-partitions", str(shuffle_partitions)]
    out: dict = {"engine": "GraphFrames 0.12 exact triangleCount algorithm in DataFrame calls (local[2])",
                 "timeout_s": timeout_s, "driver_memory": driver_memory}
    with timed() as t:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        with PeakMemory(pid=proc.pid) as mem:
            try:
                stdout, stderr = proc.communicate(timeout=timeout_s)
                lines = stdout.strip().splitlines()
                if proc.returncode == 0 and lines:
                    out.update(json.loads(lines[-1]))
                else:
                    errors = [ln for ln in stderr.splitlines() if "Exception" in ln or "Error" in ln]
                    out["status"] = f"failed (exit {proc.returncode}): {(errors or [stderr.strip()[-300:]])[0][:600]}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                out["status"] = f"timed out after {timeout_s:.0f} s"
    out["wall_seconds_with_jvm_start"] = round(t["seconds"], 1)
    out["peak_rss_gib_child_tree"] = round(mem.peak_gib, 2)
    if out.get("status") == "ok" and ours:
        import duckdb

        out["check_exact_vertices"] = dict(zip(["exact_vertices", "exact_mismatches"], duckdb.connect().execute(f"""
            SELECT count(*), count(*) FILTER (WHERE o.triangles <> coalesce(g.count, 0))
            FROM read_parquet('{ours}/*.parquet') o LEFT JOIN read_parquet('{result}/*.parquet') g
              ON o.account_id = g.id
            WHERE NOT o.triangles_estimated""").fetchone(), strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vertices", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--hubs", type=int, default=10, help="celebrity hubs")
    ap.add_argument("--hub-share", type=float, default=0.15, help="share of follows that go to the hubs")
    ap.add_argument("--local-share", type=float, default=0.35, help="share of ring-lattice follows")
    ap.add_argument("--zipf-power", type=float, default=3.0, help="dst = N * u**power for the remaining follows")
    ap.add_argument("--cap", type=int, default=1000, help="hub_degree_cap")
    ap.add_argument("--pairs", type=int, default=2000, help="hub_sample_pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--shuffle-partitions", type=int, default=16)
    ap.add_argument("--duckdb-timeout", type=float, default=600.0, help="seconds; 0 skips DuckDB")
    ap.add_argument("--duckdb-memory", default="8GB")
    ap.add_argument("--workdir", default=None, help="where the Parquet graph goes (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--engines", default="botwatch,duckdb,gf-algorithm",
                    help="which to run, of botwatch, duckdb, gf-algorithm (the checks need botwatch)")
    ap.add_argument("--gf-timeout", type=float, default=600.0, help="seconds for the GraphFrames algorithm")
    ap.add_argument("--duckdb-child", nargs=2, metavar=("GRAPH", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("--gf-child", nargs=2, metavar=("GRAPH", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duckdb_child:
        duckdb_child(*args.duckdb_child, args.duckdb_timeout, args.duckdb_memory, args.pairs)
        return
    if args.gf_child:
        gf_child(*args.gf_child, args.driver_memory, args.shuffle_partitions)
        return
    engines = set(args.engines.split(","))
    unknown = engines - {"botwatch", "duckdb", "gf-algorithm"}
    if unknown:
        ap.error(f"unknown --engines {sorted(unknown)}: choose from botwatch, duckdb, gf-algorithm")
    if "duckdb" in engines and "botwatch" not in engines:
        ap.error("--engines duckdb needs botwatch too: DuckDB's run checks botwatch's counts")

    from pyspark.sql import functions as F

    from botwatch.features.graph import clustering_coef, triangle_counts

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_graph_"))
    spark, _ = local_spark(f"{workdir}/wh", "bench-features-graph", driver_memory=args.driver_memory,
                           shuffle_partitions=args.shuffle_partitions)
    graph_path = str(workdir / "edges")
    out: dict = {"vertices": args.vertices, "edges": args.edges, "hubs": args.hubs, "cap": args.cap,
                 "pairs": args.pairs, "driver_memory": args.driver_memory}

    with timed() as t:
        generate(spark, args.vertices, args.edges, args.hubs, args.hub_share, args.local_share, args.zipf_power,
                 args.seed).write.mode("overwrite").parquet(graph_path)
    out["generate_seconds"] = round(t["seconds"], 1)
    edges = spark.read.parquet(graph_path)
    deg = edges.groupBy("dst").count()
    out["max_in_degree"] = deg.agg(F.max("count")).first()[0]
    out["in_degree_ge_100k"] = deg.where("count >= 100000").count()

    result_path = str(workdir / "clustering")
    if "botwatch" in engines:
        with PeakMemory() as mem, timed() as t:
            tri = triangle_counts(edges, hub_degree_cap=args.cap, hub_sample_pairs=args.pairs, seed=args.seed)
            tri.withColumn("clustering_coef", clustering_coef(F.col("triangles"), F.col("degree"))).write.mode(
                "overwrite"
            ).parquet(result_path)
        res = spark.read.parquet(result_path)
        summary = res.agg(
            F.count(F.lit(1)).alias("vertices_with_edges"),
            F.sum(F.col("triangles_estimated").cast("int")).alias("estimated_hubs"),
            F.max("degree").alias("max_degree"),
            (F.sum("triangles") / 3).alias("total_triangles_approx"),
            F.avg("clustering_coef").alias("mean_clustering"),
        ).first().asDict()
        out["spark"] = {"engine": "botwatch triangle_counts (Spark local[2])", "seconds": round(t["seconds"], 1),
                        "peak_rss_gib": round(mem.peak_gib, 2), **summary}
    out["graphframes"] = "not run: the GraphFrames jar is refused by Maven Central on this machine"
    spark.stop()

    if "duckdb" in engines and args.duckdb_timeout > 0:
        out["duckdb"] = run_duckdb(graph_path, result_path, args.duckdb_timeout, args.duckdb_memory, args.pairs)
    if "gf-algorithm" in engines:
        out["graphframes_algorithm"] = run_gf_algorithm(
            graph_path, str(workdir / "gf_triangles"), result_path if "botwatch" in engines else None,
            args.gf_timeout, args.driver_memory, args.shuffle_partitions,
        )

    finish(out, args.json, workdir, keep=bool(args.workdir))


if __name__ == "__main__":
    main()
