"""Argument parsing shared by the ``jobs/*.py`` spark-submit entry points (argparse, so a job
needs nothing beyond the package): ``--conf``, ``--warehouse``, repeated ``--set`` and ``--date``."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

from botwatch.config import DEFAULT_CONF, Config, ConfigError, load_config


def job_parser(description: str, with_date: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--conf", default=DEFAULT_CONF, help="environment conf file overlaid on conf/base.yaml")
    parser.add_argument("--warehouse", default=None, help="root of the Delta tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    if with_date:
        parser.add_argument("--date", required=True, type=dt.date.fromisoformat, help="run date YYYY-MM-DD")
    return parser


def job_conf(args: argparse.Namespace) -> Config:
    """Load conf for a job; configuration errors exit 2 with the message."""
    overrides = list(args.overrides)
    if args.warehouse:
        overrides.append(f"warehouse={args.warehouse if '://' in args.warehouse else os.path.abspath(args.warehouse)}")
    try:
        return load_config(args.conf, overrides)
    except ConfigError as exc:
        print(f"botwatch: {exc}", file=sys.stderr)
        sys.exit(2)


def run_date_step(step: str, description: str) -> None:
    """The whole body of a date-keyed job: parse, load conf, build the session, run one step."""
    from botwatch import steps
    from botwatch.spark import get_spark

    args = job_parser(description).parse_args()
    conf = job_conf(args)
    spark = get_spark(conf, app_name=f"botwatch-{step}-{args.date}")
    print(json.dumps({"step": step, "run_date": str(args.date), **steps.STEPS[step](spark, conf, args.date)}, default=str))
