"""Train or refresh the stage-1 model for run date D.

Labels are resolved as of the end of D and paired point-in-time with the features computed
before each label; the split is by time (train before T, validate on [T, D]) plus a golden set
of investigator labels never used for training or threshold picking. The canary (logistic
regression) is trained every time; the XGBoost challenger is calibrated (Platt) on validation,
its operating threshold is the lowest reaching the target precision there, and it is promoted
only through the registry's gate on the golden set.

Calibration and threshold are set for the population's bot share, not the labels': validation
rows are reweighted to ``train.prevalence`` (``auto``: the monitor's latest stratified estimate,
else ``train.prevalence_fallback``), because investigators label mostly suspicious accounts and a
threshold picked at the labels' own share actions many humans (see
:func:`botwatch.evaluation.metrics.prior_shift_weights`).
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from botwatch import registry
from botwatch import tables as t
from botwatch.config import ConfigError
from botwatch.delta_io import read_table, table_exists
from botwatch.evaluation.metrics import (
    evaluate,
    operating_threshold,
    pr_auc,
    precision_at,
    prior_shift_weights,
    recall_at_precision,
)
from botwatch.labels import golden_mask, point_in_time_join, resolve_labels, split_golden, time_split
from botwatch.models.canary import canary_scores, fit_canary
from botwatch.models.stage1 import (
    PlattCalibration,
    as_model_input,
    booster_bytes,
    feature_columns,
    fit_booster,
    predict_margin,
)
from botwatch.monitoring.drift import REFERENCE_ARTIFACT, training_reference
from botwatch.params import PREVALENCE_AUTO, TrainParams
from botwatch.spark import require_utc

STAGE1_MODEL = "stage1_xgb"
# The ``metrics`` row the monitor step sets when drift crosses the soft threshold.
DRIFT_ALERT = "drift_alert"
# The ``metrics`` row of the monitor's stratified estimate of the population's bot share.
PREVALENCE_METRIC = "prevalence"


class NotEnoughLabelsError(RuntimeError):
    """Too few labelled rows (or only one class) to train; wait for more labels or lower
    ``train.min_train_rows`` / ``train.min_positives``."""


@dataclass
class TrainResult:
    version: int
    promoted: bool
    reason: str
    metrics: dict[str, float]
    threshold: float | None


def needs_training(
    champion: dict | None, run_date: dt.date, max_age_days: int, drift_alert_on: dt.date | None
) -> tuple[bool, str]:
    """The refresh policy: retrain when there is no champion, it is too old, or the latest monitored
    run before D (on ``drift_alert_on``) flagged drift and the champion was trained on that day or
    before. A champion trained after the alert answered it: a rerun of D, or the nights after while
    the monitor stays stuck on a hard alert, train nothing new for it."""
    if champion is None:
        return True, "no champion yet"
    age = (run_date - champion[t.RUN_DATE]).days
    if drift_alert_on is not None and champion[t.RUN_DATE] <= drift_alert_on:
        return True, f"drift alert set by the monitored run of {drift_alert_on}"
    if age >= max_age_days:
        return True, f"champion is {age} days old (max {max_age_days})"
    return False, f"champion version {champion[t.VERSION]} is {age} days old; reused"


def drift_alert_before(spark: SparkSession, warehouse: str, run_date: dt.date) -> dt.date | None:
    """The date of the latest monitored run before D when it set a drift alert (``metrics`` row
    ``drift_alert`` > 0); None when it did not, or nothing before D was monitored."""
    if not table_exists(spark, warehouse, t.METRICS):
        return None
    before = read_table(spark, warehouse, t.METRICS).where(F.col(t.RUN_DATE) < F.lit(run_date))
    latest = cast(Row, before.agg(F.max(t.RUN_DATE)).first())[0]  # a global aggregate: one row
    if latest is None:
        return None
    alert = before.where((F.col(t.RUN_DATE) == F.lit(latest)) & (F.col(t.NAME) == F.lit(DRIFT_ALERT)))
    return latest if alert.where(F.col(t.VALUE) > 0).limit(1).count() > 0 else None


def refresh_decision(spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams) -> tuple[bool, str]:
    """The refresh policy for D, from the registry's champion of D and the metrics table.

    A rerun of D whose training already finished on D trains nothing new, whatever its gate decided:
    the same rows give the same models, and a tie at the gate would replace D's promoted heavy model
    with a copy (new versions, new scores for D). ``train.max_champion_age_days=0`` still retrains."""
    champion = registry.champion(spark, warehouse, STAGE1_MODEL, as_of=run_date)
    if champion is None:
        newer = registry.newer_champion(registry.champion(spark, warehouse, STAGE1_MODEL), run_date)
        if newer is not None:
            # The gate would refuse whatever D trains (the heavy model's too): nothing to train for.
            return False, (f"the first champion ({newer}) was trained after {run_date}; the gate never replaces it "
                           "with a model trained on an earlier date, so nothing is trained and the date is not scored")
    drift_alert_on = drift_alert_before(spark, warehouse, run_date)
    retrain, why = needs_training(champion, run_date, params.max_champion_age_days, drift_alert_on)
    if retrain and params.max_champion_age_days > 0:
        done = registry.trained_on(spark, warehouse, STAGE1_MODEL, run_date)
        if done is not None:
            return False, (
                f"stage 1 was already trained on {run_date} (version {done[t.VERSION]}, {done[t.STAGE]}: "
                f"{done['reason']}); a rerun trains nothing new (train.max_champion_age_days=0 retrains)"
            )
    return retrain, why


def population_prevalence(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams
) -> tuple[float | None, str]:
    """The bot share calibration and threshold are set for, and where it came from.

    ``train.prevalence``: a number; ``auto`` (the monitor's latest stratified estimate before D
    whose relative standard error is at most ``train.prevalence_max_rse``, else
    ``train.prevalence_fallback``); or null (the labels' own share: no correction). A queue with
    few labels gives an estimate like 0.9 in [0.15, 1]: thresholds set for it would be wrong."""
    why = "no monitor estimate yet"
    if params.prevalence == PREVALENCE_AUTO and table_exists(spark, warehouse, t.METRICS):
        names = (PREVALENCE_METRIC, f"{PREVALENCE_METRIC}_se")
        rows = (
            read_table(spark, warehouse, t.METRICS)
            .where((F.col(t.RUN_DATE) < F.lit(run_date)) & F.col(t.NAME).isin(*names))
            .groupBy(t.RUN_DATE).pivot(t.NAME, list(names)).agg(F.first(t.VALUE))
            .where(F.col(PREVALENCE_METRIC).between(1e-6, 1 - 1e-6))
            .orderBy(F.col(t.RUN_DATE).desc())
            .collect()
        )
        # newest first: a few rows, one per monitored day; (day, estimate, relative standard error)
        found = [(r[t.RUN_DATE], float(r[names[0]]), math.nan if r[names[1]] is None else r[names[1]] / r[names[0]])
                 for r in rows]
        for day, estimate, rse in found:
            if rse <= params.prevalence_max_rse:
                return estimate, f"monitor estimate of {day}"
        if found:
            day, estimate, rse = found[0]
            why = (f"the monitor's latest estimate, {estimate:.4f} of {day}, has relative standard error "
                   f"{rse:.2f} > train.prevalence_max_rse")
    return conf_prevalence(params, why)


def conf_prevalence(params: TrainParams, why: str = "no monitor estimate yet") -> tuple[float | None, str]:
    """:func:`population_prevalence` without a monitor estimate: what conf alone sets, and where from."""
    setting = params.prevalence
    if setting is None:
        return None, "labels' own bot share (train.prevalence: null)"
    if setting != PREVALENCE_AUTO:
        return float(setting), "conf train.prevalence"
    return float(params.prevalence_fallback), f"conf train.prevalence_fallback ({why})"


def validation_weights(pdf: pd.DataFrame, prevalence: float | None) -> np.ndarray:
    """Label-source weights of validation rows, rescaled to the population's bot share."""
    w = pdf[t.WEIGHT].to_numpy(dtype=float) if t.WEIGHT in pdf else np.ones(len(pdf))
    if prevalence is None or len(pdf) == 0:
        return w
    return prior_shift_weights(pdf[t.LABEL].to_numpy(), prevalence, w)


def population_threshold(
    y: np.ndarray, score: np.ndarray, weight: np.ndarray, target_precision: float
) -> tuple[float | None, float]:
    """The operating threshold on reweighted validation rows and its estimated population precision."""
    if len(y) == 0 or len(np.unique(y)) < 2:
        return None, math.nan
    thr = operating_threshold(y, score, target_precision, sample_weight=weight)
    return thr, (math.nan if thr is None else precision_at(y, score, thr, sample_weight=weight))


def training_rows(spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams):
    """(train, valid, golden) DataFrames, point-in-time and split by time."""
    features = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) <= F.lit(run_date))
    labels = read_table(spark, warehouse, t.LABELS)
    resolved = resolve_labels(labels, params.label_weights, as_of=run_date + dt.timedelta(days=1))
    rows = point_in_time_join(resolved, features)
    rest, golden = split_golden(rows, params.golden_share, params.golden_salt)
    split = run_date - dt.timedelta(days=params.valid_days - 1)
    train, valid = time_split(rest, split, params.valid_days)
    return train, valid, golden


def _collect(df: DataFrame, cols: list[str], spark: SparkSession, warehouse: str) -> pd.DataFrame:
    extra = [t.ACCOUNT_ID, t.LABEL, t.WEIGHT, t.COUNTRY, "is_new_account"]
    pdf = cast(pd.DataFrame, df.select(*[c for c in extra if c in df.columns and c not in cols],
                                       *as_model_input(cols)).toPandas())
    if table_exists(spark, warehouse, t.TRUTH) and len(pdf):
        # Truth is for evaluation only (recall per family on simulated data), never for training.
        ids = spark.createDataFrame(pdf[[t.ACCOUNT_ID]])
        fam = cast(pd.DataFrame, read_table(spark, warehouse, t.TRUTH).join(ids, t.ACCOUNT_ID).toPandas())
        pdf = pdf.merge(fam, on=t.ACCOUNT_ID, how="left")
    # In account order: the bootstrap draws rows by position, so Spark's row order (partitions, AQE)
    # would change the intervals of a seeded run (the heavy stage's rows are sorted the same way).
    return pdf.sort_values(t.ACCOUNT_ID, kind="stable").reset_index(drop=True)


def _evaluate(pdf: pd.DataFrame, score: np.ndarray, threshold: float | None, params: TrainParams, prefix: str):
    if len(pdf) == 0 or pdf[t.LABEL].nunique() < 2:
        return {f"{prefix}n": float(len(pdf))}
    segments = {}
    if "is_new_account" in pdf:
        # a model input here (1.0/0.0/NaN), not a bool: map by value, not by True/False keys
        new = pdf["is_new_account"].astype("float64")
        segments["new_account"] = np.where(new == 1, "new", np.where(new == 0, "established", "unknown"))
    if t.COUNTRY in pdf:
        segments["country"] = pdf[t.COUNTRY].fillna("unknown").to_numpy()
    families = pdf[t.FAMILY].fillna("human").to_numpy() if t.FAMILY in pdf else None
    got = evaluate(
        pdf[t.LABEL].to_numpy(), score, threshold, target_precision=params.target_precision,
        segments=segments, families=families, n_bootstrap=params.n_bootstrap, seed=params.seed,
    )
    return {f"{prefix}{k}": float(v) for k, v in got.items()}


def golden_split(params: TrainParams) -> dict:
    """The golden split a model is trained with, kept in its ``meta.json``: :func:`unseen_by_champion` reads it."""
    return {"golden_share": params.golden_share, "golden_salt": params.golden_salt}


# Fewest rows of each class on which a champion of another golden split is compared alone.
MIN_UNSEEN_PER_CLASS = 10


def unseen_by_champion(champion: dict | None, golden: DataFrame, golden_pdf: pd.DataFrame,
                       params: TrainParams) -> np.ndarray:
    """Which of today's golden rows (``golden_pdf``, collected from ``golden``) the ``champion`` never
    trained on. All of them when it was trained with today's golden split (or recorded none); after a
    change of ``train.golden_salt`` or ``golden_share``, only those golden under its split too: the
    others were its training rows, and in-sample they would flatter it at the gate. Where those hold
    fewer than ``MIN_UNSEEN_PER_CLASS`` rows of either class, all of them again: a PR-AUC on one or two
    positives is noise that would decide the gate alone, while in-sample the champion can only make
    the gate stricter (and no comparison at all would let a worse challenger through)."""
    keep = np.ones(len(golden_pdf), dtype=bool)
    if champion is None or not len(golden_pdf):
        return keep
    try:
        meta = registry.read_artifact(champion["artifact_path"], "meta.json")
    except FileNotFoundError:
        return keep
    share, salt = meta.get("golden_share"), meta.get("golden_salt")
    if share is None or salt is None or (share, salt) == (params.golden_share, params.golden_salt):
        return keep
    ids = [r[0] for r in golden.where(golden_mask(t.ACCOUNT_ID, share, salt)).select(t.ACCOUNT_ID).distinct().collect()]
    unseen = golden_pdf[t.ACCOUNT_ID].isin(ids).to_numpy()
    per_class = golden_pdf[t.LABEL][unseen].value_counts()
    return unseen if len(per_class) == 2 and per_class.min() >= MIN_UNSEEN_PER_CLASS else keep


def champion_comparison(golden_pdf: pd.DataFrame, golden_score: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """Where the champion is compared on part of the golden set (:func:`unseen_by_champion`, which keeps
    a part only with enough rows of both classes): the number of those rows and the challenger's PR-AUC on them, the
    figure the gate compares."""
    if keep.all():
        return {}
    return {"champion_golden_n": float(keep.sum()),
            "golden_pr_auc_vs_champion": pr_auc(golden_pdf[t.LABEL].to_numpy()[keep], golden_score[keep])}


def champion_golden_pr_auc(spark, warehouse: str, champion: dict | None, golden_pdf: pd.DataFrame) -> float | None:
    """The champion re-scored on today's golden set, so both models face the same rows, and
    calibrated as it scores (like the challenger's): saturated scores tie for both or neither."""
    if champion is None or len(golden_pdf) == 0 or golden_pdf[t.LABEL].nunique() < 2:
        return None
    art = champion["artifact_path"]
    raw = registry.read_artifact(art, "model.json", binary=True)
    cols = registry.read_artifact(art, "features.json")["features"]
    for c in cols:
        if c not in golden_pdf:
            golden_pdf[c] = np.nan
    cal = registry.read_artifact(art, "calibration.json")
    score = PlattCalibration(cal["a"], cal["b"]).apply(predict_margin(raw, golden_pdf[cols]))
    return pr_auc(golden_pdf[t.LABEL].to_numpy(), score)


@dataclass
class TrainingContext:
    """What every model trained for one run date shares, built once (:func:`prepare_training`):
    the point-in-time rows and their split, the bot share the thresholds assume, and the canary
    (fitted on the same training rows) with its golden-set metrics, the gate's baseline."""

    train: DataFrame
    valid: DataFrame
    golden: DataFrame
    n_train: int
    n_train_positive: int
    prevalence: float | None
    prevalence_source: str
    canary_cols: list[str]
    canary: PipelineModel | None = None
    canary_metrics: dict = field(default_factory=dict)

    def release(self) -> None:
        for rows in (self.train, self.valid, self.golden):
            rows.unpersist()


def prepare_training(spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams) -> TrainingContext:
    """The rows, bot share and canary of D (the rows cached: every model reads each split several
    times, and each is a point-in-time join over every label and features partition).
    Raises :class:`NotEnoughLabelsError` when there are too few labelled rows to train on."""
    require_utc(spark)
    train, valid, golden = (rows.cache() for rows in training_rows(spark, warehouse, run_date, params))
    n_train = train.count()
    n_pos = train.where(F.col(t.LABEL) == 1).count()
    n_valid = valid.count()
    short = None
    if n_train < params.min_train_rows or min(n_pos, n_train - n_pos) < params.min_positives:
        short = (f"{n_train} training rows with {n_pos} bots and {n_train - n_pos} humans before {run_date}: "
                 f"need at least {params.min_train_rows} rows and {params.min_positives} of each class "
                 "(train.min_train_rows / train.min_positives)")
    elif n_valid < params.xgb.num_workers:
        # xgboost.spark fails obscurely on a worker without validation rows, and with none there is no
        # early stopping and no operating threshold.
        short = (f"{n_valid} labelled validation rows in the {params.valid_days} days up to {run_date}: need at "
                 f"least {params.xgb.num_workers} (one per XGBoost worker, train.xgb.num_workers) to stop early and "
                 "pick the threshold; wait for labels or widen train.valid_days")
    missing = [c for c in params.canary_features if c not in train.columns]
    problem: Exception | None = NotEnoughLabelsError(short) if short else None
    if problem is None and (missing or not params.canary_features):
        problem = ConfigError(
            f"train.canary_features names columns the features table lacks: {missing}; fix or drop those names "
            "(a dropped name would quietly weaken the canary every challenger must beat)" if missing else
            "train.canary_features is empty; list a few plain features: the promotion gate needs the canary's baseline"
        )
    if problem is not None:
        for rows in (train, valid, golden):
            rows.unpersist()
        raise problem
    prevalence, source = population_prevalence(spark, warehouse, run_date, params)
    ctx = TrainingContext(train, valid, golden, n_train, n_pos, prevalence, source, list(params.canary_features))
    ctx.canary = fit_canary(train, ctx.canary_cols, params.canary_reg_param)
    scored = canary_scores(ctx.canary, golden, ctx.canary_cols).select(t.ACCOUNT_ID, t.LABEL, "canary_score")
    ctx.canary_metrics = canary_golden_metrics(cast(pd.DataFrame, scored.toPandas()), params)
    return ctx


def canary_golden_metrics(scored: pd.DataFrame, params: TrainParams) -> dict[str, float]:
    """The canary's figures on the golden rows (``account_id``, ``label``, ``canary_score``), taken
    by account: the bootstrap draws rows by position, so Spark's row order would move the intervals.
    Its at-threshold figures are NaN: no threshold was picked for it on validation, and one picked
    on the golden rows themselves would meet the target precision by construction."""
    pdf = scored.sort_values(t.ACCOUNT_ID, ignore_index=True)
    return _evaluate(pdf, pdf["canary_score"].fillna(0).to_numpy(), math.nan, params, "canary_golden_")


def operating_point(
    valid_pdf: pd.DataFrame, valid_score: np.ndarray, golden_pdf: pd.DataFrame, golden_score: np.ndarray,
    ctx: TrainingContext, params: TrainParams,
) -> tuple[float | None, dict]:
    """A model's operating threshold at the population's bot share, and its validation, golden
    and canary metrics (every model of the run date is judged the same way)."""
    valid_y = valid_pdf[t.LABEL].to_numpy() if len(valid_pdf) else np.array([])
    threshold, population_precision = population_threshold(
        valid_y, valid_score, validation_weights(valid_pdf, ctx.prevalence), params.target_precision
    )
    metrics = {"prevalence_used": math.nan if ctx.prevalence is None else ctx.prevalence,
               "valid_population_precision": population_precision}
    # No threshold: the model actions nobody; evaluate's None would pick one on these rows.
    at = math.nan if threshold is None else threshold
    metrics.update(_evaluate(valid_pdf, valid_score, at, params, "valid_"))
    metrics.update(_evaluate(golden_pdf, golden_score, at, params, "golden_"))
    metrics.update(_population_metrics(golden_pdf, golden_score, threshold, ctx.prevalence, params, "golden_"))
    metrics.update(ctx.canary_metrics)
    return threshold, metrics


def _population_metrics(pdf: pd.DataFrame, score: np.ndarray, threshold: float | None, prevalence: float | None,
                        params: TrainParams, prefix: str) -> dict[str, float]:
    """The headline figures with the rows reweighted to the population's bot share: the labelled
    rows' own share is far higher (investigators pick suspects), which flatters precision and
    PR-AUC (``{prefix}population_*``; none without a prevalence)."""
    if prevalence is None or len(pdf) == 0 or pdf[t.LABEL].nunique() < 2:
        return {}
    y = pdf[t.LABEL].to_numpy()
    w = validation_weights(pdf, prevalence)
    precision = math.nan if threshold is None else precision_at(y, score, threshold, w)
    return {
        f"{prefix}population_pr_auc": pr_auc(y, score, w),
        f"{prefix}population_precision_at_threshold": precision,
        f"{prefix}population_recall_at_target_precision": recall_at_precision(y, score, params.target_precision, w),
    }


def train_stage1(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams, *,
    teacher: Callable[[DataFrame], DataFrame] | None = None, teacher_version: str | None = None,
    context: TrainingContext | None = None,
) -> TrainResult:
    """Train a challenger on labels up to D, evaluate it, register it and apply the promotion gate.

    With ``teacher`` (see :func:`botwatch.training_heavy.teacher_targets`) the booster is fitted
    on its soft ``distill_target`` (labels blended with the heavy model's scores); calibration,
    threshold and the gate still use the labels. ``context``: D's shared rows and canary (built
    here when not given, and released after).
    """
    ctx = context or prepare_training(spark, warehouse, run_date, params)
    train, valid, golden = ctx.train, ctx.valid, ctx.golden
    cols = feature_columns(train)
    if teacher is None:
        booster = fit_booster(train, valid, cols, params.xgb)
    else:
        distilled = (teacher(train), teacher(valid))  # cached by teacher_targets: released once fitted
        try:
            booster = fit_booster(*distilled, cols, params.xgb, label_col="distill_target", soft_targets=True)
        finally:
            for rows in distilled:
                rows.unpersist()
    raw = booster_bytes(booster)

    valid_pdf = _collect(valid, cols, spark, warehouse)
    golden_pdf = _collect(golden, cols, spark, warehouse)
    valid_margin = predict_margin(raw, valid_pdf[cols]) if len(valid_pdf) else np.array([])
    valid_y = valid_pdf[t.LABEL].to_numpy() if len(valid_pdf) else np.array([])
    calibration = (
        PlattCalibration.fit(valid_margin, valid_y, validation_weights(valid_pdf, ctx.prevalence))
        if len(valid_pdf) else PlattCalibration()
    )
    golden_score = calibration.apply(predict_margin(raw, golden_pdf[cols])) if len(golden_pdf) else np.array([])
    threshold, evaluated = operating_point(valid_pdf, calibration.apply(valid_margin), golden_pdf, golden_score,
                                           ctx, params)
    if context is None:
        ctx.release()

    metrics = {"n_train": float(ctx.n_train), "n_train_positive": float(ctx.n_train_positive),
               "distilled": float(teacher is not None), **evaluated}

    current = registry.champion(spark, warehouse, STAGE1_MODEL)
    keep = unseen_by_champion(current, golden, golden_pdf, params)
    champ_pr = champion_golden_pr_auc(spark, warehouse, current, golden_pdf[keep].copy())
    if champ_pr is not None:
        metrics["champion_golden_pr_auc"] = champ_pr
        metrics.update(champion_comparison(golden_pdf, golden_score, keep))

    version = registry.reserve_version(spark, warehouse, STAGE1_MODEL, run_date)
    directory = registry.artifact_dir(warehouse, STAGE1_MODEL, version)
    registry.write_artifact(directory, "model.json", raw)
    registry.write_artifact(directory, "features.json", {"features": cols})
    # The population's feature distribution at training time: the monitor's drift reference.
    registry.write_artifact(directory, REFERENCE_ARTIFACT, training_reference(spark, warehouse, run_date, cols))
    registry.write_artifact(directory, "calibration.json", {"method": "platt", "a": calibration.a, "b": calibration.b})
    registry.write_artifact(
        directory, "meta.json",
        {"threshold": threshold, "train_end": run_date, "valid_days": params.valid_days, "metrics": metrics,
         "canary_features": ctx.canary_cols, "target_precision": params.target_precision,
         "teacher": teacher_version, "prevalence": ctx.prevalence, "prevalence_source": ctx.prevalence_source,
         **golden_split(params)},
    )
    cast(PipelineModel, ctx.canary).write().overwrite().save(f"{directory}/canary")  # fitted in prepare

    decision = registry.promotion_decision(
        metrics.get("golden_pr_auc", math.nan),
        metrics.get("canary_golden_pr_auc", math.nan),
        champ_pr,
        params.promotion_tolerance,
        challenger_threshold=threshold, champion=current, run_date=run_date,
        challenger_vs_champion=metrics.get("golden_pr_auc_vs_champion"),
    )
    record = registry.ModelRecord(
        model_name=STAGE1_MODEL, version=version, stage=registry.CHALLENGER, run_date=run_date,
        metrics=metrics, artifact_path=directory, threshold=threshold,
        train_end=run_date,
    )
    decision = registry.register(spark, warehouse, record, decision, compared_with=current)
    return TrainResult(version, decision.promote, decision.reason, metrics, threshold)
