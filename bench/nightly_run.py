"""Benchmark: the nightly run (``botwatch.nightly.run_steps``) day after day on a simulated platform,
or the whole demo (``make demo``): wall time per step and the peak memory of the process tree.

    .venv/bin/python bench/nightly_run.py --demo                       # what `make demo` does
    .venv/bin/python bench/nightly_run.py --accounts 100000 --days 3    # whole runs on every day
    .venv/bin/python bench/nightly_run.py --warehouse W --rerun-date D  # every step of D again (forced), on W

Prints one JSON object: total seconds, seconds per step (summed over the days), peak GiB, the
status of every step per day.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from collections import defaultdict

from common import PeakMemory, timed  # bench/ is on sys.path when the script runs


def last_day_steps(warehouse: str, mem: PeakMemory) -> dict:
    """Per step of the last run date: seconds and peak GiB of the process tree while it ran (run_log times)."""
    from deltalake import DeltaTable

    log = DeltaTable(f"{warehouse}/run_log").to_pandas()
    log = log[(log["run_date"] == log["run_date"].max()) & (log["step"] != "_run")].sort_values("started_at")
    return {
        r.step: {"status": r.status, "seconds": round((r.finished_at - r.started_at).total_seconds(), 1),
                 "peak_gib": round(mem.peak_between(r.started_at.timestamp(), r.finished_at.timestamp()), 2)}
        for r in log.itertuples()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo", action="store_true", help="run `botwatch demo` (conf `demo`) instead")
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warehouse", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra conf key=value")
    parser.add_argument("--rerun-date", type=dt.date.fromisoformat, default=None,
                        help="rerun every step of this date (force) on an existing --warehouse; no simulation")
    args = parser.parse_args()

    from botwatch import nightly
    from botwatch.config import load_config
    from botwatch.demo import demo_conf, run_demo
    from botwatch.simulate import write_platform
    from botwatch.spark import get_spark

    warehouse = args.warehouse or tempfile.mkdtemp(prefix="bw-nightly-")
    conf = load_config(overrides=[f"warehouse={warehouse}", "spark.ui_enabled=false", "spark.log_level=ERROR",
                                  *args.sets])
    per_step: dict[str, float] = defaultdict(float)
    statuses: dict[str, dict] = {}
    with PeakMemory(keep_samples=True) as mem, timed() as total:
        if args.rerun_date:
            if args.demo:
                conf = demo_conf(conf)
            results = nightly.run_steps(get_spark(conf, app_name="bench-rerun"), conf, args.rerun_date, force=True,
                                        echo=lambda _: None)
            per_step.update({s: r["seconds"] for s, r in results.items()})
            statuses = {str(args.rerun_date): {s: r["status"] for s, r in results.items()}}
        elif args.demo:
            conf = demo_conf(conf)
            out = run_demo(get_spark(conf, app_name="bench-demo"), conf, echo=lambda _: None)
            per_step.update(out["per_step"])
            statuses = {str(k): v for k, v in out["statuses"].items()}
        else:
            spark = get_spark(conf, app_name="bench-nightly")
            start = dt.date.fromisoformat(conf["simulate.start_date"])
            with timed() as sim:
                write_platform(spark, warehouse, accounts=args.accounts, days=args.days, seed=args.seed,
                               start_date=start, params=conf.section("simulate"))
            per_step["simulate"] = sim["seconds"]
            for i in range(args.days):
                day = start + dt.timedelta(days=i)
                results = nightly.run_steps(spark, conf, day, echo=lambda _: None)
                for step, r in results.items():
                    per_step[step] += r["seconds"]
                statuses[str(day)] = {s: r["status"] for s, r in results.items()}
    print(json.dumps({
        "mode": f"rerun {args.rerun_date}" if args.rerun_date else "demo" if args.demo
        else f"{args.accounts} accounts x {args.days} days",
        "last_day": last_day_steps(warehouse, mem),
        "total_s": round(total["seconds"], 1), "peak_gib": round(mem.peak_gib, 2),
        "per_step_s": {k: round(v, 1) for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])},
        "statuses": statuses, "loadavg": open("/proc/loadavg").read().split()[:3],
    }, indent=1))


if __name__ == "__main__":
    main()
