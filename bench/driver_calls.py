"""How much of a step is the driver talking to the JVM: Py4J round trips and seconds per run.

On the test platform (2,000 accounts x 14 days, the tests' settings, seed 11; simulated into ``--warehouse``
with features on its four feature dates when it has no accounts table), one fresh JVM runs ``--step`` for the last
feature date ``--runs`` times (the train step on a fresh copy of the warehouse each time, with the cascade
fixture's small heavy model) and prints each run's seconds and Py4J calls (every command the driver sent).
``--call-sites true`` turns PySpark's DataFrame call-site recording back on (conf ``spark.python_call_sites``).

    .venv/bin/python bench/driver_calls.py --warehouse /tmp/calls_wh --step features --runs 2 --call-sites false
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from common import local_spark  # bench/ is on sys.path when the script runs
from py4j.clientserver import ClientServerConnection

from botwatch import steps
from botwatch import tables as t
from botwatch.delta_io import table_exists

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.helpers import (  # noqa: E402
    CASCADE_TRAIN_SETTINGS,
    PLATFORM_FEATURE_DATES,
    PLATFORM_SETTINGS,
    write_test_platform,
)


class CallCounter:
    """Counts Py4J commands sent to the JVM (the driver's round trips)."""

    def __init__(self) -> None:
        self.calls = 0
        self._send = ClientServerConnection.send_command

    def __enter__(self) -> CallCounter:
        counter, send = self, self._send

        def counted(conn, command):
            counter.calls += 1
            return send(conn, command)

        ClientServerConnection.send_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        ClientServerConnection.send_command = self._send  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", required=True, help="simulated here when it has no accounts table")
    parser.add_argument("--step", choices=["features", "train"], default="features")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--call-sites", choices=["true", "false"], default="false")
    args = parser.parse_args()
    wh = args.warehouse.rstrip("/")
    spark, conf = local_spark(wh, "bench-driver-calls", driver_memory="4g", shuffle_partitions=4,
                              overrides=[*PLATFORM_SETTINGS, f"spark.python_call_sites={args.call_sites}"])
    dates = PLATFORM_FEATURE_DATES
    if not table_exists(spark, wh, t.ACCOUNTS):
        write_test_platform(spark, conf, dates)
    runs = []
    for run in range(args.runs):
        step_conf, target = conf, wh
        if args.step == "train":
            target = f"{wh}_train"  # a fresh copy: each run trains as the first one did
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(wh, target)
            step_conf = conf.with_overrides([f"warehouse={target}", *CASCADE_TRAIN_SETTINGS])
        with CallCounter() as counter:
            t0 = time.perf_counter()
            getattr(steps, f"{args.step}_step")(spark, step_conf, dates[-1])
            seconds = time.perf_counter() - t0
        runs.append({"run": run, "seconds": round(seconds, 1), "py4j_calls": counter.calls})
        print(json.dumps(runs[-1]), flush=True)
        if target != wh:
            shutil.rmtree(target, ignore_errors=True)
    print(json.dumps({"step": args.step, "call_sites": args.call_sites, "runs": runs}))


if __name__ == "__main__":
    main()
