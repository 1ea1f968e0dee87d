"""Benchmark: the synthetic platform generator (``botwatch simulate``).

For each scale (a multiple of ``--accounts``) it runs ``write_platform`` end to end (generate in
Spark and write every Delta table) into a temporary warehouse, timed, with peak memory sampled by
psutil over the process tree (Python driver + Spark JVM). It prints a markdown table of rows
written, seconds, rows per second and peak memory, and the growth exponent of time against
accounts (1.0 = linear).

    .venv/bin/python bench/simulate.py --accounts 100000 --days 28 --scales 1,2,4 \\
        --set spark.driver_memory=2g
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
from pathlib import Path

from common import PeakMemory, growth_exponent, timed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts at scale 1")
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--scales", default="1,2,4", help="comma-separated multiples of --accounts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--conf", default=None, help="environment conf (default conf/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--warehouse", default=None, help="where to write (default: a temp folder, removed after)")
    parser.add_argument("--warmup-accounts", type=int, default=2000,
                        help="an untimed small run first (JVM warm-up, Delta class loading); 0 to skip")
    args = parser.parse_args(argv)

    from botwatch.config import load_config
    from botwatch.simulate import write_platform
    from botwatch.spark import get_spark

    root = Path(args.warehouse or tempfile.mkdtemp(prefix="botwatch-bench-simulate-"))
    conf = load_config(args.conf, [*args.overrides, f"warehouse={root}"])
    params = conf.section("simulate")
    start = dt.date.fromisoformat(str(params["start_date"]))
    with timed() as session_time:
        spark = get_spark(conf, app_name="bench-simulate")
    print(f"session start: {session_time['seconds']:.1f} s; master {conf['spark.master']}, "
          f"driver memory {conf['spark.driver_memory']}", flush=True)

    rows = []
    try:
        if args.warmup_accounts:
            with timed() as warm:
                write_platform(spark, str(root / "warmup"), accounts=args.warmup_accounts, days=2, seed=args.seed,
                               start_date=start, params=params)
            print(f"warm-up ({args.warmup_accounts} accounts x 2 days, untimed): {warm['seconds']:.1f} s", flush=True)
            shutil.rmtree(root / "warmup", ignore_errors=True)
        for scale in [float(s) for s in args.scales.split(",")]:
            accounts = int(args.accounts * scale)
            target = str(root / f"x{scale:g}")
            with PeakMemory() as mem, timed() as took:
                counts = write_platform(spark, target, accounts=accounts, days=args.days, seed=args.seed,
                                        start_date=start, params=params)
            total = sum(counts.values())
            rows.append((scale, accounts, counts, total, took["seconds"], mem.peak_gib))
            print(f"x{scale:g}: {accounts} accounts, {total} rows in {took['seconds']:.1f} s "
                  f"({total / took['seconds']:,.0f} rows/s), peak {mem.peak_gib:.2f} GiB", flush=True)
            shutil.rmtree(target, ignore_errors=True)
    finally:
        spark.stop()
        if args.warehouse is None:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"`write_platform`, {args.days} days, seed {args.seed}, all five Delta tables written:")
    print()
    print("| accounts | events | edges | labels | rows in all | seconds | rows/s | events/s "
          "| peak RSS (driver + JVM) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for _scale, accounts, counts, total, seconds, peak in rows:
        print(f"| {accounts:,} | {counts['events']:,} | {counts['edges']:,} | {counts['labels']:,} | {total:,} "
              f"| {seconds:.0f} | {total / seconds:,.0f} | {counts['events'] / seconds:,.0f} | {peak:.2f} GiB |")
    if len(rows) > 1:
        exponent = growth_exponent([r[1] for r in rows], [r[4] for r in rows])
        base = rows[0][4]
        ratios = ", ".join(f"x{r[0]:g}: {r[4] / base:.2f}x time" for r in rows[1:])
        print()
        print(f"time growth vs accounts: {ratios}; log-log slope {exponent:.2f} (1.0 = linear)")


if __name__ == "__main__":
    main()
