"""The nightly pipeline's steps, one function each with the same shape:
``step(spark, conf, run_date) -> dict`` (a small summary that the CLI prints and the run log keeps).

The CLI, the ``jobs/*.py`` entry points, the pipeline runner and the DAG all call these; the
logic itself lives in the modules each step calls.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import SparkSession

from botwatch.config import Config, warehouse_path

StepFn = Callable[[SparkSession, Config, dt.date], dict]


def activity_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.features.activity import build_activity_daily

    build_activity_daily(spark, warehouse_path(conf), run_date)
    return {"activity_daily_day": run_date.isoformat()}


def features_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.features.build import build_features

    n = build_features(spark, warehouse_path(conf), run_date, conf.section("features"))
    return {"accounts": n}


def train_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.training import TrainParams, train_stage1

    result = train_stage1(spark, warehouse_path(conf), run_date, TrainParams.from_conf(conf.section("train")))
    return {
        "version": result.version,
        "promoted": result.promoted,
        "reason": result.reason,
        "threshold": result.threshold,
        "golden_pr_auc": result.metrics.get("golden_pr_auc"),
        "canary_golden_pr_auc": result.metrics.get("canary_golden_pr_auc"),
    }


def score_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.scoring.publish import score_and_write

    params = {
        **conf.section("scoring"),
        # The golden set is defined once, in train: scoring must never action those accounts.
        "golden_share": conf["train.golden_share"],
        "golden_salt": conf["train.golden_salt"],
    }
    return score_and_write(spark, warehouse_path(conf), run_date, params)


STEPS: dict[str, StepFn] = {
    "activity": activity_step,
    "features": features_step,
    "train": train_step,
    "score": score_step,
}


def _expected_errors() -> tuple[type[Exception], ...]:
    from botwatch.delta_io import TableMissingError
    from botwatch.registry import NoChampionError
    from botwatch.schemas import SchemaMismatchError
    from botwatch.training import NotEnoughLabelsError

    return (TableMissingError, NoChampionError, SchemaMismatchError, NotEnoughLabelsError)


# Failures a user can act on: the CLI prints their message instead of a traceback.
EXPECTED_ERRORS = _expected_errors()
