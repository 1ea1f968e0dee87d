"""The monitor step for run date D: drift, the review queue, prevalence and the run report.

:func:`monitor` writes the ``drift``, ``metrics`` and ``review_queue`` partitions of D (each
replaced whole, so reruns never duplicate) and ``<warehouse>/reports/<D>.html``. Over the soft
thresholds (conf ``monitoring``) it sets the ``metrics`` row ``drift_alert`` = 1 for D, which
makes the next run retrain (:func:`drift_alert_before`, read by the refresh policy); over the
hard ones it raises :class:`DriftHardAlert` *after* writing everything, so the Airflow task fails
loudly while the tables and the report say why.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from typing import cast

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import registry
from botwatch import tables as t
from botwatch.delta_io import commit_metadata, read_table, table_exists, write_table
from botwatch.monitoring.drift import (
    FEATURE,
    REFERENCE_ARTIFACT,
    drift_statistics,
    reference_profile,
    training_reference,
)
from botwatch.monitoring.prevalence import stratified_estimate, stratified_ratio
from botwatch.monitoring.review import STRATIFIED, STRATUM, STRATUM_SIZE, has_score, review_queue
from botwatch.params import MonitorParams
from botwatch.schemas import require_columns

# The alert and its reader live with the refresh policy that acts on them.
from botwatch.training import DRIFT_ALERT, drift_alert_before  # noqa: F401  (re-exported)

DRIFT_HARD_ALERT = "drift_hard_alert"
STAGE1_MODEL = "stage1_xgb"
HEAVY_MODEL = "stage2_heavy"  # botwatch.scoring.worker.HEAVY_MODEL (not imported: it pulls in torch)

METRICS_SCHEMA = T.StructType(
    [T.StructField(t.RUN_DATE, T.DateType(), False), T.StructField(t.NAME, T.StringType(), False),
     T.StructField(t.VALUE, T.DoubleType(), True)]
)
DRIFT_SCHEMA = T.StructType(
    [T.StructField(t.RUN_DATE, T.DateType(), False), T.StructField(t.NAME, T.StringType(), False),
     T.StructField(t.VALUE, T.DoubleType(), True), T.StructField(FEATURE, T.StringType(), True)]
)


class DriftHardAlert(RuntimeError):
    """Drift beyond the hard thresholds: the inputs or the model are broken. The tables and
    the report of the run are written; read the report, fix the inputs or retrain, or raise
    ``monitoring.psi_hard`` / ``monitoring.flagged_ratio_hard`` if the shift is real and accepted."""


class NothingToMonitorError(LookupError):
    """No scores for the run date: run the score step for that date first."""


def flagged(df: DataFrame) -> F.Column:
    """Flagged by the cascade: a decision to act or review, or sent to stage 2."""
    out = F.col(t.DECISION).isin("action", "review")
    if "stage2_reached" in df.columns:
        out = out | F.coalesce(F.col("stage2_reached"), F.lit(False))
    return out


def report_path(warehouse: str, run_date: dt.date) -> str:
    return f"{warehouse.rstrip('/')}/reports/{run_date.isoformat()}.html"


def model_versions(scores_d: DataFrame) -> list[str]:
    """The distinct ``model_version`` values of D's scores (a few: stage 1's, and stage 1's + the heavy model's)."""
    return [r[0] for r in scores_d.select(t.MODEL_VERSION).distinct().collect() if r[0]]


def _model_record(spark: SparkSession, warehouse: str, versions: list[str], run_date: dt.date) -> dict | None:
    """The registry record of the stage-1 model that scored D (``versions``: :func:`model_versions`), else the
    champion as of D (a backfill of an old date never takes a later model's threshold and reference)."""
    found = [int(m.group(1)) for v in versions if (m := re.search(rf"{STAGE1_MODEL}:(\d+)", v))]
    records = registry.records(spark, warehouse, STAGE1_MODEL)
    for rec in records:
        if found and rec[t.VERSION] == max(found):
            return rec
    return registry.champion(spark, warehouse, STAGE1_MODEL, as_of=run_date)


def decision_thresholds(
    spark: SparkSession, warehouse: str, versions: list[str], stage1_threshold: float | None
) -> Column:
    """Each score row's operating threshold, as a column: the heavy model's for the rows it decided
    (``model_version`` ends ``+stage2_heavy:M``), else stage 1's; null where that model has none.
    ``versions``: :func:`model_versions` of the scores."""
    heavy = sorted({int(m.group(1)) for v in versions if (m := re.search(rf"\+{HEAVY_MODEL}:(\d+)$", v))})
    threshold = F.lit(stage1_threshold).cast("double")
    if heavy:
        found = {r[t.VERSION]: r.get("threshold") for r in registry.records(spark, warehouse, HEAVY_MODEL)}
        for v in heavy:
            # A heavy model with no threshold left the decision to stage 1 (on stage 1's score): no band.
            threshold = F.when(F.col(t.MODEL_VERSION).endswith(f"+{HEAVY_MODEL}:{v}"),
                               F.lit(found.get(v)).cast("double")).otherwise(threshold)
    return threshold


def _reference(spark: SparkSession, warehouse: str, record: dict | None) -> tuple[dict | None, str]:
    if record is None:
        return None, "no model in the registry"
    art = record["artifact_path"]
    try:
        return registry.read_artifact(art, REFERENCE_ARTIFACT), f"model version {record[t.VERSION]}"
    except FileNotFoundError:
        pass
    # Models trained before profiles were saved: profile their training date's features now.
    train_date = record.get("train_end") or record.get(t.RUN_DATE)
    features = read_table(spark, warehouse, t.FEATURES)
    if train_date is None or features.where(F.col(t.RUN_DATE) == F.lit(train_date)).limit(1).count() == 0:
        return None, f"model version {record[t.VERSION]} has no {REFERENCE_ARTIFACT} and its training features are gone"
    cols = registry.read_artifact(art, "features.json")["features"]
    return training_reference(spark, warehouse, train_date, cols), f"model version {record[t.VERSION]} (rebuilt)"


def _pandas(df: DataFrame) -> pd.DataFrame:
    return cast(pd.DataFrame, df.toPandas())


def _latest_then_human() -> Column:
    """The order picking an account's label: the latest ``labeled_at``, an exact tie to 0 (human) as in
    :func:`botwatch.labels.winning_labels` (``max_by`` alone keeps whichever tied row it reads first)."""
    return F.struct(F.col(t.LABELED_AT), (-F.col(t.LABEL)).alias("_human_first"))


def _past_decisions(spark: SparkSession, warehouse: str, scores: DataFrame, run_date: dt.date,
                    params: MonitorParams) -> pd.DataFrame:
    """Labels that arrived up to D, each paired with the latest decision made *before* it was
    observed (within the lookback), plus the account's segments on that day."""
    cols = ["account_id", "run_date", "score", "decision", "label", "country", "is_new_account"]
    if not table_exists(spark, warehouse, t.LABELS):
        return pd.DataFrame(columns=cols)
    start = run_date - dt.timedelta(days=params.label_lookback_days)
    labels = (
        read_table(spark, warehouse, t.LABELS)
        .where(F.col(t.SOURCE).isin(*params.label_sources))
        .withColumn("label_date", F.to_date(t.LABELED_AT))
        .where(F.col("label_date").between(F.lit(start), F.lit(run_date)))
        .groupBy(t.ACCOUNT_ID)
        .agg(F.max_by(F.struct(t.LABEL, "label_date"), _latest_then_human()).alias("l"))
        .select(t.ACCOUNT_ID, F.col("l.label").alias(t.LABEL), F.col("l.label_date").alias("label_date"))
    )
    past = scores.where(F.col(t.RUN_DATE).between(F.lit(start), F.lit(run_date))).select(
        t.ACCOUNT_ID, t.RUN_DATE, t.SCORE, t.DECISION
    )
    latest = Window.partitionBy(t.ACCOUNT_ID).orderBy(F.col(t.RUN_DATE).desc())
    pairs = (
        past.join(labels, t.ACCOUNT_ID)
        .where(F.col(t.RUN_DATE) < F.col("label_date"))
        .withColumn("_r", F.row_number().over(latest))
        .where("_r = 1")
        .drop("_r", "label_date")
    )
    features = read_table(spark, warehouse, t.FEATURES)
    segs = [c for c in (t.COUNTRY, "is_new_account") if c in features.columns]
    pairs = pairs.join(features.select(t.ACCOUNT_ID, t.RUN_DATE, *segs), [t.ACCOUNT_ID, t.RUN_DATE], "left")
    pdf = _pandas(pairs)
    for c in cols:
        if c not in pdf:
            pdf[c] = None
    return pdf[cols]


def design_strata(queue_strata: pd.DataFrame, n_scored: int) -> pd.DataFrame | None:
    """The strata (rows with ``reason``, ``N``) of one day's review queue that its estimate sums over, or None
    when a stratum of the scored accounts went unsampled. Every part is a stratum when their sizes add up to
    the scored accounts (disjoint pools); a queue written before the pools were disjoint (its other parts
    drawn from what its stratified sample left, so also counted in its score buckets) counts its stratified
    part alone."""
    strat = queue_strata[queue_strata[t.REASON] == STRATIFIED]
    if len(strat) == len(queue_strata) or queue_strata["N"].sum() == n_scored:
        return queue_strata if queue_strata["N"].sum() >= n_scored else None
    return strat if strat["N"].sum() >= n_scored else None


def _prevalence_history(spark: SparkSession, warehouse: str, run_date: dt.date, params: MonitorParams) -> dict:
    """The estimate from the latest review queue (within the lookback) with a label in every stratum
    (the score buckets of its stratified part, and its exploration and uncertain parts, each drawn
    from its own pool); labels observed up to the end of D.

    Only answers to the queue count: labels of ``review_label_sources`` observed after the queue's
    date (the queue of D is written once D has ended). An earlier label, or an appeal (only wrongly
    actioned humans appeal), is there because of what the account is, so within a stratum the
    labelled accounts would not be a random sample of the drawn ones (two appeals, 0, would make a
    stratum of 90 % bots read 0)."""
    if not (table_exists(spark, warehouse, t.REVIEW_QUEUE) and table_exists(spark, warehouse, t.LABELS)):
        return {}
    start = run_date - dt.timedelta(days=params.label_lookback_days)
    queue = read_table(spark, warehouse, t.REVIEW_QUEUE).where(
        F.col(t.RUN_DATE).between(F.lit(start), F.lit(run_date))
    ).select(t.ACCOUNT_ID, t.RUN_DATE, t.REASON, STRATUM, STRATUM_SIZE)
    label_day = F.to_date(t.LABELED_AT)
    labels = read_table(spark, warehouse, t.LABELS).where(
        F.col(t.SOURCE).isin(*params.review_label_sources) & label_day.between(F.lit(start), F.lit(run_date))
    ).select(F.col(t.ACCOUNT_ID).alias("_labelled"), label_day.alias("_label_day"), t.LABEL, t.LABELED_AT)
    answered = (
        queue.join(labels, (F.col("_labelled") == F.col(t.ACCOUNT_ID)) & (F.col("_label_day") > F.col(t.RUN_DATE)),
                   "left")
        .groupBy(t.ACCOUNT_ID, t.RUN_DATE, t.REASON, STRATUM, STRATUM_SIZE)
        .agg(F.max_by(t.LABEL, _latest_then_human()).alias(t.LABEL))
    )
    scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE).between(F.lit(start), F.lit(run_date)))
    decisions = scores.select(t.ACCOUNT_ID, t.RUN_DATE, t.DECISION)
    action = F.col(t.DECISION) == "action"
    bot = F.col(t.LABEL) == 1
    rows = _pandas(
        answered.join(decisions, [t.ACCOUNT_ID, t.RUN_DATE], "left")
        .groupBy(t.RUN_DATE, t.REASON, STRATUM)
        .agg(F.max(STRATUM_SIZE).alias("N"), F.count(t.LABEL).alias("n"), F.sum(F.col(t.LABEL).cast("long")).alias("y"),
             F.count(F.when(F.col(t.LABEL).isNotNull() & action, 1)).alias("acted"),
             F.count(F.when(bot & action, 1)).alias("bots_acted"))
    )
    # A stratum the allocation gave no sample (a budget below the number of strata) has no queue row:
    # its accounts would silently drop out of the estimate. Such a day is left out.
    counted = F.count(F.when(has_score(F.col(t.SCORE)), 1)).alias("n")  # the accounts the queue drew from
    scored = {r[t.RUN_DATE]: r["n"] for r in scores.groupBy(t.RUN_DATE).agg(counted).collect()}
    for day in sorted(rows[t.RUN_DATE].unique(), reverse=True) if len(rows) else []:
        g = design_strata(rows[rows[t.RUN_DATE] == day], scored.get(day, 0))
        if g is None:
            continue
        est = stratified_estimate(g["N"], g["n"], g["y"].fillna(0))
        if not math.isnan(est["estimate"]):
            # The same sample's estimate of the population's precision and recall of D-day actions.
            sampled = {"sampled_precision": stratified_ratio(g["N"], g["n"], g["bots_acted"], g["acted"]),
                       "sampled_recall": stratified_ratio(g["N"], g["n"], g["bots_acted"], g["y"].fillna(0)),
                       "sampled_n_actioned": float(g["acted"].sum())}
            return {**est, "queue_age_days": float((run_date - day).days), **sampled}
    return {"n": float(rows["n"].sum()) if len(rows) else 0.0}


def _model_parts(versions) -> frozenset[str]:
    """The models among ``model_version`` values (``stage1_xgb:N`` and ``stage2_heavy:M`` of
    ``stage1_xgb:N+stage2_heavy:M``); the values themselves when none is a stage-1 one (hand-made scores)."""
    parts = {p for v in versions if v for p in str(v).split("+")}
    if not any(p.startswith(f"{STAGE1_MODEL}:") for p in parts):
        return frozenset(str(v) for v in versions if v)
    return frozenset(parts)


def _days_by_model(spark: SparkSession, warehouse: str, scores: DataFrame, versions: list[str], start: dt.date,
                   run_date: dt.date) -> tuple[list[dt.date], dict[dt.date, str], dict[dt.date, float]]:
    """The days from ``start`` to the day before D scored by the same models as D (``versions``: D's
    :func:`model_versions`), the others with the models that scored them, and every day's flagged rate
    (one pass over those days' scores). The heavy model counts: its champion and flag threshold decide
    which accounts are flagged, and it rescores them. A day where nobody reached stage 2 names no heavy
    model in ``model_version``: its heavy champion as of that day (the registry's) stands in."""
    rows = (scores.where(F.col(t.RUN_DATE).between(F.lit(start), F.lit(run_date - dt.timedelta(days=1))))
            .groupBy(t.RUN_DATE).agg(F.collect_set(t.MODEL_VERSION).alias("versions"),
                                     F.avg(flagged(scores).cast("double")).alias("rate")).collect())
    heavy = registry.records(spark, warehouse, HEAVY_MODEL)

    def models(day_versions, day: dt.date) -> frozenset[str]:
        parts = _model_parts(day_versions)
        champion = registry.champion_among(heavy, as_of=day)
        if champion is None or any(p.startswith(f"{HEAVY_MODEL}:") for p in parts):
            return parts
        return parts | {f"{HEAVY_MODEL}:{champion[t.VERSION]}"}

    want = models(versions, run_date)
    by_day = {r[t.RUN_DATE]: models(r["versions"], r[t.RUN_DATE]) for r in rows}
    same = sorted(d for d, m in by_day.items() if m == want)
    other = {d: ", ".join(sorted(m)) for d, m in by_day.items() if m != want}
    return same, other, {r[t.RUN_DATE]: float(r["rate"]) for r in rows}


def _score_histograms(scores: DataFrame, run_date: dt.date, days: int, bins: int = 50) -> pd.DataFrame:
    """Share of accounts per score bin on D and over the ``days`` before it (Spark, binned)."""
    start = run_date - dt.timedelta(days=days)
    window = scores.where(F.col(t.RUN_DATE).between(F.lit(start), F.lit(run_date)) & has_score(F.col(t.SCORE)))
    b = F.least(F.floor(F.col(t.SCORE) * bins), F.lit(bins - 1)).cast("int")
    return _pandas(
        window.select((F.col(t.RUN_DATE) == F.lit(run_date)).alias("current"), b.alias("bin"))
        .groupBy("current", "bin")
        .count()
    )


def monitor(spark: SparkSession, warehouse: str, run_date: dt.date, params: MonitorParams) -> dict:
    """Drift, review queue, prevalence and the report for D (see the module doc)."""
    from botwatch.monitoring.report import write_report

    scores = read_table(spark, warehouse, t.SCORES)
    require_columns(scores, (t.ACCOUNT_ID, t.RUN_DATE, t.SCORE, t.DECISION, t.MODEL_VERSION), "monitor(scores)")
    scores_d = scores.where(F.col(t.RUN_DATE) == F.lit(run_date)).cache()
    funnel_row = scores_d.agg(
        F.count(F.lit(1)).alias("accounts"),
        F.sum(flagged(scores_d).cast("long")).alias("flagged"),
        F.sum((F.coalesce(F.col("stage2_reached"), F.lit(False)) if "stage2_reached" in scores_d.columns
               else F.lit(False)).cast("long")).alias("stage2"),
        F.sum((F.col(t.DECISION) == "action").cast("long")).alias("action"),
        F.sum((F.coalesce(F.col("actioned"), F.lit(False)) if "actioned" in scores_d.columns
               else F.lit(False)).cast("long")).alias("actioned"),
    ).first()
    assert funnel_row is not None  # a global aggregate always has one row
    funnel = {k: int(funnel_row[k] or 0) for k in ("accounts", "flagged", "stage2", "action", "actioned")}
    if funnel["accounts"] == 0:
        scores_d.unpersist()
        raise NothingToMonitorError(
            f"no scores for {run_date} in {warehouse}/scores: run `botwatch score --date {run_date}` first"
        )
    versions = model_versions(scores_d)
    record = _model_record(spark, warehouse, versions, run_date)
    threshold = record.get("threshold") if record else None
    metrics: dict[str, float] = {f"n_{k}": float(v) for k, v in funnel.items()}
    drift_rows: list[tuple] = []
    notes: list[str] = []

    # 1. feature drift against the model's training reference
    profile, ref_note = _reference(spark, warehouse, record)
    feature_stats = pd.DataFrame(columns=[FEATURE, "psi", "ks", "ks_upper", "missing_share"])
    if profile is not None:
        features_d = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(run_date))
        feature_stats = _pandas(drift_statistics(features_d, profile)).sort_values(FEATURE)
        for r in feature_stats.itertuples():
            for name in ("psi", "ks", "ks_upper", "missing_share"):
                drift_rows.append((name, _f(getattr(r, name)), r.feature))
        notes.append(f"feature reference: {ref_note}, {profile.get('n_rows', 0)} accounts on {profile.get('run_date')}")
    else:
        notes.append(f"no feature drift: {ref_note}")
    max_psi = float(feature_stats["psi"].max()) if len(feature_stats) else math.nan
    over_soft = feature_stats[feature_stats["psi"] >= params.psi_soft][FEATURE].tolist() if len(feature_stats) else []
    over_hard = feature_stats[feature_stats["psi"] >= params.psi_hard][FEATURE].tolist() if len(feature_stats) else []
    metrics.update(max_feature_psi=max_psi, n_features_psi_over_soft=float(len(over_soft)))

    # 2. score distribution against the previous days' scores, of the models that scored D (stage 1 and
    # the heavy one): across a change of champion the shift is the new model's, not drift, and as drift
    # it would alert, retrain the next night, and alert again while the reference days still held the
    # old model's scores.
    ref_start = run_date - dt.timedelta(days=params.score_reference_days)
    trail_start = run_date - dt.timedelta(days=params.trailing_days)
    same_model, other_model, rates = _days_by_model(spark, warehouse, scores, versions, min(ref_start, trail_start),
                                                    run_date)
    if other_model:
        notes.append(f"{len(other_model)} of the days before {run_date} were scored by other models "
                     f"({'; '.join(sorted(set(other_model.values())))}): left out of the score shift and "
                     "flagged-rate references")
    ref_days = [d for d in same_model if d >= ref_start]
    ref_scores = scores.where(F.col(t.RUN_DATE).isin(ref_days))
    score_psi = math.nan
    if ref_days and ref_scores.limit(1).count():
        sprof = reference_profile(ref_scores, [t.SCORE])
        s = drift_statistics(scores_d, sprof).first()
        if s is not None:
            score_psi = _nan(s["psi"])
            drift_rows += [("score_psi", _f(score_psi), t.SCORE), ("score_ks", _f(s["ks"]), t.SCORE),
                           ("score_ks_upper", _f(s["ks_upper"]), t.SCORE)]
    metrics["score_psi"] = score_psi

    # 3. flagged rate against the trailing days of the same models (a new champion's rate, stage 1's or
    # the heavy one's, against the old one's counts only towards the hard alert: a model flagging 10x as
    # many needs a look)
    rate = funnel["flagged"] / funnel["accounts"]
    daily = [r for d, r in rates.items() if d >= trail_start]
    same = [r for d, r in rates.items() if d >= trail_start and d in same_model]
    trailing = sum(same) / len(same) if same else math.nan
    ratio = flagged_rate_ratio(rate, trailing)
    metrics.update(flagged_rate=rate, flagged_rate_trailing=trailing, flagged_rate_ratio=ratio,
                   flagged_rate_trailing_days=float(len(same)))
    drift_rows.append(("flagged_rate_ratio", ratio, None))
    ratio_new_model = math.nan
    if not same and daily:
        ratio_new_model = flagged_rate_ratio(rate, sum(daily) / len(daily))
        metrics["flagged_rate_ratio_new_model"] = ratio_new_model

    # 4. precision and recall of past decisions as labels arrive
    pairs = _past_decisions(spark, warehouse, scores, run_date, params)
    metrics.update(_past_metrics(pairs))

    # 5. review queue
    queue = review_queue(
        scores_d, run_date, threshold=decision_thresholds(spark, warehouse, versions, threshold),
        budget=params.review_budget, shares=params.review_shares,
        uncertain_band=params.uncertain_band, strata_edges=params.strata_edges,
        min_per_stratum=params.min_per_stratum, salt=params.sampling_salt,
    )
    with commit_metadata(spark, step="monitor", run_date=run_date.isoformat()):
        write_table(queue, warehouse, t.REVIEW_QUEUE, partition_by=[t.RUN_DATE],
                    replace_where=f"{t.RUN_DATE} = '{run_date.isoformat()}'")
    for reason, n in read_table(spark, warehouse, t.REVIEW_QUEUE).where(
        F.col(t.RUN_DATE) == F.lit(run_date)
    ).groupBy(t.REASON).count().collect():
        metrics[f"review_queue_{reason}"] = float(n)

    # 6. prevalence from the labelled stratified samples
    prev = _prevalence_history(spark, warehouse, run_date, params)
    for k in ("estimate", "low", "high", "se", "srs_se", "design_effect", "n", "queue_age_days"):
        if k in prev:
            metrics[f"prevalence_{k}" if k != "estimate" else "prevalence"] = float(prev[k])
    metrics.update({k: v for k, v in prev.items() if k.startswith("sampled_")})

    # 7. alerts
    ratio_soft = _outside(ratio, params.flagged_ratio_soft)
    ratio_hard = _outside(ratio, params.flagged_ratio_hard) or _outside(ratio_new_model, params.flagged_ratio_hard)
    soft = bool(over_soft) or (not math.isnan(score_psi) and score_psi >= params.psi_soft) or ratio_soft
    hard = bool(over_hard) or (not math.isnan(score_psi) and score_psi >= params.psi_hard) or ratio_hard
    metrics[DRIFT_ALERT] = 1.0 if soft or hard else 0.0
    metrics[DRIFT_HARD_ALERT] = 1.0 if hard else 0.0

    metric_df = spark.createDataFrame([(run_date, k, _f(v)) for k, v in sorted(metrics.items())], METRICS_SCHEMA)
    drift_df = spark.createDataFrame([(run_date, n, _f(v), f) for n, v, f in drift_rows], DRIFT_SCHEMA)
    with commit_metadata(spark, step="monitor", run_date=run_date.isoformat()):
        for df, table in ((metric_df, t.METRICS), (drift_df, t.DRIFT)):
            write_table(df, warehouse, table, partition_by=[t.RUN_DATE],
                        replace_where=f"{t.RUN_DATE} = '{run_date.isoformat()}'")

    # 8. the report
    hist = _score_histograms(scores, run_date, params.score_reference_days)
    path = write_report(
        spark, warehouse, run_date, report_path(warehouse, run_date), params=params, pairs=pairs,
        hist=hist, funnel=funnel, metrics=metrics, notes=notes,
        alerts={"soft": soft, "hard": hard, "features_over_soft": over_soft, "features_over_hard": over_hard},
    )
    scores_d.unpersist()
    summary = {"report": path, "drift_alert": soft or hard, "max_feature_psi": max_psi, "score_psi": score_psi,
               "flagged_rate": rate,
               "review_queue": int(sum(v for k, v in metrics.items() if k.startswith("review_queue_"))),
               "prevalence": metrics.get("prevalence")}
    if hard:
        causes = [f"features {over_hard} with PSI >= {params.psi_hard}" if over_hard else "",
                  f"score PSI {score_psi:.3f}" if not math.isnan(score_psi) and score_psi >= params.psi_hard else "",
                  (f"flagged rate {ratio:.2f}x the trailing mean" if not math.isnan(ratio) else
                   f"flagged rate {ratio_new_model:.2f}x the trailing mean of the model before (a new model)")
                  if ratio_hard else ""]
        raise DriftHardAlert(
            f"hard drift alert for {run_date}: {'; '.join(c for c in causes if c)}. The drift and metrics tables "
            f"and the report {path} are written. If the inputs of {run_date} are broken, fix them and rerun the "
            f"date (`botwatch run --date {run_date}`: the steps whose inputs changed run again). If the shift is "
            f"real, retrain and rescore it (`botwatch run --date {run_date} --set train.max_champion_age_days=0`: a "
            "plain run keeps a fresh champion, as D's own alert only reaches the next date's run; the new model's "
            "drift reference is then D's own features, so retraining on broken inputs would hide them), or accept "
            "it by raising monitoring.psi_hard / monitoring.flagged_ratio_hard."
        )
    return summary


def flagged_rate_ratio(rate: float, trailing: float) -> float:
    """D's flagged rate over the trailing mean; NaN without trailing days. From a trailing rate of 0 it
    is inf (1 when D flags none either), so a jump from flagging nobody alerts as a drop to 0 does."""
    if math.isnan(trailing):
        return math.nan
    if trailing == 0:
        return math.inf if rate > 0 else 1.0
    return rate / trailing


def _outside(ratio: float, limit: float) -> bool:
    """Whether a rate ratio is at least ``limit`` times (or at most 1/``limit``) the usual."""
    return not math.isnan(ratio) and (ratio >= limit or ratio <= 1 / limit)


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _f(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _past_metrics(pairs: pd.DataFrame) -> dict[str, float]:
    """Precision / recall / FPR of past ``action`` decisions on the labels that arrived."""
    out = {"past_n_labelled": float(len(pairs))}
    if not len(pairs):
        return out
    y = pairs["label"].astype(int)
    act = pairs["decision"] == "action"
    tp, fp = float((act & (y == 1)).sum()), float((act & (y == 0)).sum())
    fn, tn = float((~act & (y == 1)).sum()), float((~act & (y == 0)).sum())
    out.update(
        past_n_positive=float(y.sum()),
        past_precision=tp / (tp + fp) if tp + fp else math.nan,
        past_recall=tp / (tp + fn) if tp + fn else math.nan,
        past_fpr=fp / (fp + tn) if fp + tn else math.nan,
    )
    return out
