"""Benchmark: validate's pass over the whole ``accounts`` table, with and without the grain counts
(distinct and non-null ``account_id``, which AccountGrainError rests on), on synthetic accounts.

    .venv/bin/python bench/validate_accounts.py --accounts 100000 10000000 --runs 3

Prints seconds per run (the first run of each pair also pays the JIT and the Delta log read) and the
peak memory of the process tree (driver, JVM) during each pass.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time

from common import PeakMemory, local_spark  # bench/ is on sys.path when the script runs
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.delta_io import read_table, write_table

DAY = dt.date(2025, 6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    warehouse = tempfile.mkdtemp(prefix="bench_validate_")
    spark, _ = local_spark(warehouse, "bench-validate-accounts")
    new = F.when(F.to_date(F.col(t.CREATED_AT)) == F.lit(DAY), 1)
    passes = {
        "before (row counts)": [F.count(F.lit(1)), F.count(new)],
        "with the grain counts": [F.count(F.lit(1)), F.count(new), F.count_distinct(t.ACCOUNT_ID),
                                  F.count(t.ACCOUNT_ID)],
    }
    print("| accounts | pass | seconds per run | peak memory |")
    print("| ---: | --- | --- | ---: |")
    for n in args.accounts:
        name = f"accounts_{n}"
        seconds = F.make_interval(secs=(F.col("id") % 31_000_000).cast("decimal(18,6)"))
        write_table(spark.range(n).select(
            F.col("id").alias(t.ACCOUNT_ID), (F.lit(dt.datetime(2025, 1, 1)) + seconds).alias(t.CREATED_AT),
            F.lit("US").alias(t.COUNTRY), (F.col("id") % 2 == 0).alias(t.VERIFIED),
            F.rand(1).alias(t.PROFILE_COMPLETENESS)), warehouse, name)
        accounts = read_table(spark, warehouse, name)
        for label, aggs in passes.items():
            times = []
            with PeakMemory() as mem:
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    accounts.agg(*aggs).first()
                    times.append(time.perf_counter() - t0)
            runs = " / ".join(f"{s:.2f}" for s in times)
            print(f"| {n:,} | {label} | {runs} | {mem.peak_gib:.1f} GiB |", flush=True)
    spark.stop()
    shutil.rmtree(warehouse)


if __name__ == "__main__":
    main()
