"""Check: are reruns of one features date bit-identical? (The full-run test compares a rerun's tables with
the first run's by checksum, floats to the last bit.)

Simulates the test platform (2,000 accounts x 14 days, the tests' simulate and train settings, seed 11; or
reuses ``--warehouse``), builds the features of its first three feature dates, then runs ``features_step``
for the last one ``--runs`` times in one JVM and prints each run's seconds and a SHA-256 of the partition's
rows (every column as JSON, sorted with pandas, as the test's checksum), and the columns that differ from the
first run. One result across many runs is what a rerun needs; see BENCHMARKS.md for why it can fail.

    .venv/bin/python bench/features_reruns.py --warehouse /tmp/reruns_wh --runs 8
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

from common import local_spark  # bench/ is on sys.path when the script runs
from pyspark.sql import functions as F

from botwatch import steps
from botwatch import tables as t
from botwatch.delta_io import read_table, table_exists

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.helpers import PLATFORM_FEATURE_DATES, PLATFORM_SETTINGS, canonical_rows, write_test_platform  # noqa: E402


def partition_rows(spark, warehouse: str, day: dt.date):
    """The features partition of ``day`` as canonical text rows (pandas), and their SHA-256."""
    return canonical_rows(read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == day))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", required=True, help="simulated here when it has no accounts table")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], help="conf override key=value (repeatable)")
    args = parser.parse_args()
    wh = args.warehouse
    spark, conf = local_spark(wh, "bench-features-reruns", driver_memory="4g", shuffle_partitions=4,
                              overrides=[*PLATFORM_SETTINGS, *args.set])
    dates = PLATFORM_FEATURE_DATES
    if not table_exists(spark, wh, t.ACCOUNTS):
        write_test_platform(spark, conf, dates[:-1])
    first = None
    for run in range(args.runs):
        t0 = time.perf_counter()
        steps.features_step(spark, conf, dates[-1])
        seconds = time.perf_counter() - t0
        rows, digest = partition_rows(spark, wh, dates[-1])
        differ = [] if first is None else [c for c in rows.columns if not rows[c].equals(first[c])]
        print(f"run {run}: {seconds:.1f} s, sha256 {digest[:16]}" + (f", differs in {differ}" if differ else ""),
              flush=True)
        first = rows if first is None else first


if __name__ == "__main__":
    main()
