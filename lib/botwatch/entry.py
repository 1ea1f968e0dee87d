"""Argument parsing shared by the ``jobs/*.py`` spark-submit entry points (argparse, so a job
needs nothing beyond the package): ``--conf``, ``--warehouse``, repeated ``--set`` and ``--date``."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from botwatch.config import DEFAULT_CONF, Config, ConfigError, load_config, typed_path


def job_parser(description: str, with_date: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--conf", default=DEFAULT_CONF, help="environment conf file overlaid on conf/base.yaml")
    parser.add_argument("--warehouse", default=None, help="root of the Delta tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    if with_date:
        parser.add_argument("--date", required=True, type=dt.date.fromisoformat, help="run date YYYY-MM-DD")
    return parser


def load_checked_config(conf: str, overrides: list[str]) -> Config:
    """:func:`~botwatch.config.load_config`, plus the checks of knobs against each other that would
    otherwise fail only later, after a session started or a platform was written (ConfigError)."""
    from botwatch.nightly import lock_settings
    from botwatch.params import CascadeParams, HeavyConfig, InferenceSettings, MonitorParams, TrainParams
    from botwatch.spark import check_time_zone

    cfg = load_config(conf, overrides)
    lock_settings(cfg)
    check_time_zone(cfg)
    # Their own checks (train.prevalence "autp", psi_soft above psi_hard, heavy.dropout 1.5), else met by the
    # train, heavy, cascade (stage-2 workers) and monitor steps only, after a night's ingest, features and scores.
    TrainParams.from_conf(cfg.section("train"))
    HeavyConfig.from_mapping(cfg.section("heavy"))
    CascadeParams.from_conf(cfg.section("cascade"))
    InferenceSettings.from_conf(cfg.section("cascade"))
    MonitorParams.from_conf(cfg.section("monitoring"))
    return cfg


def job_conf(args: argparse.Namespace) -> Config:
    """Load conf for a job; configuration errors exit 2 with the message."""
    overrides = list(args.overrides)
    if args.warehouse:
        overrides.append(f"warehouse={typed_path(args.warehouse)}")
    try:
        return load_checked_config(args.conf, overrides)
    except ConfigError as exc:
        print(f"botwatch: {exc}", file=sys.stderr)
        sys.exit(2)


def run_date_step(step: str, description: str) -> None:
    """The whole body of a date-keyed job: parse, load conf, build the session, run one step (or a
    group such as ``score``) through :func:`botwatch.nightly.run_steps`: date lock, skip when done
    and inputs unchanged, run log; ``--force`` runs it regardless."""
    from botwatch import nightly
    from botwatch.spark import get_spark

    parser = job_parser(description)
    parser.add_argument("--force", action="store_true", help="run even when done and the inputs are unchanged")
    args = parser.parse_args()
    conf = job_conf(args)
    spark = get_spark(conf, app_name=f"{step}-{args.date}")
    try:
        results = nightly.run_steps(spark, conf, args.date, [step], force=args.force)
    except nightly.RunLockedError as exc:
        print(f"botwatch: {exc}", file=sys.stderr)
        sys.exit(3)
    print(json.dumps(step_report(step, args.date, results), default=str))


def step_report(step: str, run_date: dt.date, results: dict[str, dict]) -> dict:
    """What a one-step command prints: the step's result, or each step's for a group."""
    one = results.get(step)
    return {"step": step, "run_date": str(run_date), **(one if one is not None else {"steps": results})}
