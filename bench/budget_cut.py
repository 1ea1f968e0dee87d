"""Benchmark: stage 1's budget cut (``cap_to_budget``: which accounts may reach stage 2 when more pass the
flag threshold than the budget allows), on synthetic scored accounts held in memory as the step holds them.

    .venv/bin/python bench/budget_cut.py --accounts 1000000 2000000 4000000 8000000 --runs 2 [--partitions 64]

Two ways to find the cut row, both exact: ``sort`` (orderBy + limit(k), what the step did before: every row
goes to one task) and ``sketch`` (``top_cut``: a quantile sketch brackets the cut and only the rows between its
bounds are sorted). Prints seconds per run of cap_to_budget (with the count of the accounts it flags), the peak
memory of the process tree (driver and JVM) and the growth exponent of each way's time with the accounts.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import cast

from common import PeakMemory, growth_exponent, local_spark  # bench/ is on sys.path when the script runs
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.scoring import cascade

BUDGET = 0.10


def sort_cut(scored: DataFrame, k: int, n_scored: int) -> tuple[float, int]:
    """The cut as the step found it before ``top_cut``."""
    last = (scored.orderBy(F.col(t.STAGE1_SCORE).desc(), F.col(t.ACCOUNT_ID).asc()).limit(k)
            .orderBy(F.col(t.STAGE1_SCORE).asc(), F.col(t.ACCOUNT_ID).desc()).first())
    return cast(Row, last)[t.STAGE1_SCORE], cast(Row, last)[t.ACCOUNT_ID]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000, 8_000_000])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=None,
                        help="repartition the scored rows into this many partitions (default: spark.range's)")
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args()
    warehouse = tempfile.mkdtemp(prefix="bench_budget_cut_")
    spark, _ = local_spark(warehouse, "bench-budget-cut", driver_memory=args.driver_memory)
    ways = {"sort": sort_cut, "sketch": cascade.top_cut}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    print("| accounts | way | seconds per run | flagged | peak memory |")
    print("| ---: | --- | --- | ---: | ---: |")
    for n in args.accounts:
        # As score_stage1_and_flag holds them: account, date, score, three reason codes; cached.
        scored = spark.range(n).select(
            F.col("id").alias(t.ACCOUNT_ID), F.current_date().alias(t.RUN_DATE),
            F.rand(7).alias(t.STAGE1_SCORE),
            F.array(*[F.concat(F.lit(f"f{j}:"), (F.col("id") % 97).cast("string")) for j in range(3)])
            .alias("reason_codes"))
        scored = (scored.repartition(args.partitions) if args.partitions else scored).cache()
        scored.count()
        for way, cut in ways.items():
            cascade.top_cut = cut  # cap_to_budget looks it up in its module
            times, flagged = [], 0
            with PeakMemory() as mem:
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    flag, info = cascade.cap_to_budget(scored, 0.0, BUDGET)  # everyone passes: the cut decides
                    flagged = scored.where(flag).count()
                    times.append(time.perf_counter() - t0)
            assert flagged == info["n_flagged"], (flagged, info)
            seconds[way].append(min(times))
            runs = " / ".join(f"{s:.2f}" for s in times)
            print(f"| {n:,} | {way} | {runs} | {flagged:,} | {mem.peak_gib:.1f} GiB |", flush=True)
        # The two ways' cut rows are the same row.
        cuts = {way: cut(scored, info["n_flagged"], n) for way, cut in ways.items()}
        assert len(set(cuts.values())) == 1, cuts
        scored.unpersist()
    if len(args.accounts) > 1:
        for way, secs in seconds.items():
            print(f"{way}: time grows as accounts^{growth_exponent(args.accounts, secs):.2f} (best run per size)")
    spark.stop()
    shutil.rmtree(warehouse)


if __name__ == "__main__":
    main()
