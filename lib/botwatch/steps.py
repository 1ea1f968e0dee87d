"""The nightly pipeline's steps, one function each with the same shape:
``step(spark, conf, run_date) -> dict`` (a small summary that the CLI prints and the run log keeps).

The CLI, the ``jobs/*.py`` entry points, the pipeline runner and the DAG all call these; the
logic itself lives in the modules each step calls.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from pyspark.sql import SparkSession

from botwatch.config import Config, warehouse_path

StepFn = Callable[[SparkSession, Config, dt.date], dict]


def _validated_events(
    spark: SparkSession, warehouse: str, run_date: dt.date
) -> tuple[tuple[dt.date, int] | None, dict]:
    """(D, the events version whose rows of D validate checked) when D's events changed since
    (:func:`botwatch.nightly.validated_events`), else None; and the summary entry that keys the step's run-log
    row on that version."""
    from botwatch import nightly
    from botwatch import tables as t

    version = nightly.validated_events(spark, warehouse, run_date)
    if version is None:
        return None, {}
    return (run_date, version), {nightly.READ_VERSIONS: {t.EVENTS: version}}


def activity_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.features.activity import build_activity_daily

    warehouse = warehouse_path(conf)
    validated, read = _validated_events(spark, warehouse, run_date)
    build_activity_daily(spark, warehouse, run_date, validated=validated)
    return {"activity_daily_day": run_date.isoformat(), **read}


def features_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    from botwatch.features.build import build_features
    from botwatch.labels import dropped_sources

    warehouse = warehouse_path(conf)
    validated, read = _validated_events(spark, warehouse, run_date)
    report: dict = {}
    n = build_features(spark, warehouse, run_date, conf.section("features"), report=report,
                       dropped_label_sources=dropped_sources(conf["train.label_weights"]), validated=validated)
    return {"accounts": n, **report, **read}


def train_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Train a challenger when the refresh policy says so (no champion, too old, drift alert)."""
    from botwatch.training import TrainParams, refresh_decision, train_stage1

    warehouse = warehouse_path(conf)
    params = TrainParams.from_conf(conf.section("train"))
    cascade: dict = {}
    if not conf["cascade.enabled"]:
        retrain, why = refresh_decision(spark, warehouse, run_date, params)
        if not retrain:
            return {"trained": False, "promoted": False, "reason": why}
        result = train_stage1(spark, warehouse, run_date, params)
    else:
        # Heavy model, stage 1 as its student, then the flag threshold (botwatch.training_heavy).
        from botwatch import training_heavy as th

        retrain, why = th.cascade_refresh_decision(spark, warehouse, run_date, params)
        if not retrain:
            return {"trained": False, "promoted": False, "reason": why,
                    **th.calibrate_if_needed(spark, warehouse, run_date, conf.section("cascade"))}
        result, cascade = th.train_cascade(spark, warehouse, run_date, params, conf.section("heavy"),
                                           conf.section("cascade"))
    return {
        **cascade,
        "trained": True,
        "version": result.version,
        "promoted": result.promoted,
        "reason": result.reason,
        "refresh_reason": why,
        "threshold": result.threshold,
        "golden_pr_auc": result.metrics.get("golden_pr_auc"),
        "canary_golden_pr_auc": result.metrics.get("canary_golden_pr_auc"),
    }


def validate_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Check the input tables for D before anything reads them; D's bad rows move to ``quarantine``."""
    from botwatch.ingest import bad_share_limits
    from botwatch.validate import validate_inputs

    return validate_inputs(spark, warehouse_path(conf), run_date, **bad_share_limits(conf))


def score_stage1_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Stage 1 on every account: writes the ``scores`` partition D (stage-1 score, decisions and
    ``stage2_reached``: the accounts flagged for the heavy model)."""
    from botwatch.scoring.cascade import score_stage1_and_flag

    return score_stage1_and_flag(spark, warehouse_path(conf), run_date, _scoring_params(conf))


def _scoring_params(conf: Config) -> dict:
    return {
        **conf.section("scoring"),
        # The golden set is defined once, in train: scoring must never action those accounts.
        "golden_share": conf["train.golden_share"],
        "golden_salt": conf["train.golden_salt"],
        "budget": conf["cascade.budget"] if conf["cascade.enabled"] else 0.0,
    }


def score_stage2_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Stage 2 (heavy model) on the accounts stage 1 flagged; rewrites the ``scores`` partition D."""
    if not conf["cascade.enabled"]:
        return {"stage2": "skipped: cascade.enabled is false", "n_stage2": 0}
    from botwatch.scoring.cascade import score_stage2

    warehouse = warehouse_path(conf)
    validated, read = _validated_events(spark, warehouse, run_date)
    return {**score_stage2(spark, warehouse, run_date, _scoring_params(conf), conf.section("cascade"), validated),
            **read}


def publish_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Make D's scores visible to consumers (``scores_latest``), then scheduled table maintenance."""
    from botwatch.maintenance import maintain
    from botwatch.scoring.latest import publish_latest

    warehouse = warehouse_path(conf)
    published = publish_latest(spark, warehouse, run_date)
    return {**published, **maintain(spark, warehouse, run_date, conf.section("maintenance"))}


def monitor_step(spark: SparkSession, conf: Config, run_date: dt.date) -> dict:
    """Drift, review queue, prevalence and the run report for D (raises DriftHardAlert over the hard thresholds)."""
    from botwatch.monitoring.run import MonitorParams, monitor

    return monitor(spark, warehouse_path(conf), run_date, MonitorParams.from_conf(conf.section("monitoring")))


STEPS: dict[str, StepFn] = {
    "validate": validate_step,
    "activity": activity_step,
    "features": features_step,
    "train": train_step,
    "score_stage1": score_stage1_step,
    "score_stage2": score_stage2_step,
    "publish": publish_step,
    "monitor": monitor_step,
}

# The nightly run, in order (``score`` is the two scoring stages together, for the CLI).
RUN_ORDER = ("validate", "activity", "features", "train", "score_stage1", "score_stage2", "publish", "monitor")
# Names that stand for several steps of the run (``botwatch score``, ``jobs/score.py``).
STEP_GROUPS: dict[str, tuple[str, ...]] = {"score": ("score_stage1", "score_stage2")}


def run_order(names: Sequence[str]) -> list[str]:
    """The steps ``names`` stand for (groups expanded), once each, in :data:`RUN_ORDER`: a step never
    runs before the ones it reads from, whatever order they were asked in."""
    wanted = {s for n in names for s in STEP_GROUPS.get(n, (n,))}
    unknown = sorted(wanted - set(RUN_ORDER))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; the run's steps are {list(RUN_ORDER)} (or {list(STEP_GROUPS)})")
    return [s for s in RUN_ORDER if s in wanted]


def _expected_errors() -> tuple[type[Exception], ...]:
    from botwatch.cascade import CascadeConfigError
    from botwatch.config import ConfigError
    from botwatch.delta_io import CommitConflictError, TableMissingError
    from botwatch.features.activity import WindowSpecError
    from botwatch.features.attributes import AttributeConfigError
    from botwatch.labels import LabelConfigError
    from botwatch.monitoring.review import ReviewConfigError
    from botwatch.monitoring.run import DriftHardAlert, NothingToMonitorError
    from botwatch.registry import NoChampionError
    from botwatch.schemas import SchemaMismatchError
    from botwatch.scoring.cascade import MissingFeaturesError, StaleStage1ScoresError
    from botwatch.training import NotEnoughLabelsError
    from botwatch.validate import AccountGrainError, EventsChangedError, NoEventsError, TooManyBadRowsError

    return (ConfigError, TableMissingError, NoChampionError, SchemaMismatchError, NotEnoughLabelsError, NoEventsError,
            TooManyBadRowsError, AccountGrainError, DriftHardAlert, NothingToMonitorError, WindowSpecError,
            AttributeConfigError, LabelConfigError, MissingFeaturesError, StaleStage1ScoresError, CommitConflictError,
            ReviewConfigError, CascadeConfigError, EventsChangedError)


# Failures a user can act on: the CLI prints their message instead of a traceback.
EXPECTED_ERRORS = _expected_errors()
