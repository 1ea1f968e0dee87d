"""Benchmark: SparkSession start time through botwatch's factory (fresh Python process each run).

    .venv/bin/python bench/session_start.py --runs 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROBE = """
import json, time
t0 = time.perf_counter()
from botwatch.config import load_config
from botwatch.spark import get_spark
spark = get_spark(load_config(overrides=["spark.ui_enabled=false", "spark.master=local[2]"]))
t1 = time.perf_counter()
spark.range(1000).selectExpr("sum(id)").collect()
t2 = time.perf_counter()
print(json.dumps({"session_s": t1 - t0, "first_query_s": t2 - t1}))
spark.stop()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| run | session start (s) | first query (s) |")
    print("|---|---|---|")
    for i, r in enumerate(results, 1):
        print(f"| {i} | {r['session_s']:.1f} | {r['first_query_s']:.1f} |")


if __name__ == "__main__":
    main()
