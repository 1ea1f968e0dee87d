"""The two scoring steps of the cascade for run date D, each rewriting the ``scores`` partition D.

* :func:`score_stage1_and_flag`: the stage-1 champion scores every account; ``stage2_reached``
  marks the accounts at or above the flag threshold stored with the champion (``cascade.json``),
  capped at the budget share of today's accounts. Without a heavy champion nobody is flagged.
* :func:`score_stage2`: the heavy champion scores the flagged accounts (inputs gathered in
  Spark, inference with ``mapInPandas``, embedding cache); ``score`` becomes the stage-2 score
  where reached, and decisions are redrawn with the threshold of the model behind each score.

Both replace the whole partition (``replaceWhere``), so reruns give the same table.
"""
from __future__ import annotations

import datetime as dt
import warnings
from typing import cast

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from botwatch import registry
from botwatch import tables as t
from botwatch.cascade import budget_count, choice_for, stored_choices, threshold_from_json
from botwatch.delta_io import commit_metadata, read_table, write_table
from botwatch.models.heavy_inputs import FINGERPRINT, fingerprint
from botwatch.scoring.decisions import with_decisions
from botwatch.scoring.stage1 import features_for, load_champion, score_stage1
from botwatch.scoring.stage2 import (
    ENCODER,
    FROM_CACHE,
    HeavyArtifact,
    InferenceSettings,
    artifact_inputs,
    encoder_key,
    heavy_champion,
    resolved_device,
    score_heavy,
    update_embedding_cache,
    with_cached_encodings,
)
from botwatch.training import STAGE1_MODEL

STAGE2_REACHED = "stage2_reached"
SCORE_COLUMNS = (
    t.ACCOUNT_ID, t.RUN_DATE, t.STAGE1_SCORE, t.STAGE2_SCORE, t.SCORE, t.DECISION, t.MODEL_VERSION,
    STAGE2_REACHED, "reason_codes", "actioned", "holdout", "golden",
)
DECISION_COLUMNS = (t.DECISION, "holdout", "golden", "actioned")


def _decide(df: DataFrame, run_date: dt.date, threshold: float | None, params: dict) -> DataFrame:
    return with_decisions(
        df.drop(*[c for c in DECISION_COLUMNS if c in df.columns]), run_date, threshold=threshold,
        review_band=params["review_band"], mode=params["mode"], exploration_share=params["exploration_share"],
        golden_share=params["golden_share"], golden_salt=params["golden_salt"],
    )


def _write(spark: SparkSession, warehouse: str, scored: DataFrame, run_date: dt.date, step: str) -> None:
    with commit_metadata(spark, step=step, run_date=run_date.isoformat()):
        write_table(
            scored.select(*SCORE_COLUMNS), warehouse, t.SCORES, partition_by=[t.RUN_DATE],
            replace_where=f"{t.RUN_DATE} = '{run_date.isoformat()}'",
        )


def flag_threshold(
    spark: SparkSession, warehouse: str, heavy: HeavyArtifact, as_of: dt.date | None = None
) -> tuple[float | None, str]:
    """The stage-1 champion's (of ``as_of``) flag threshold for this heavy champion, and where it came from."""
    champ = registry.champion(spark, warehouse, STAGE1_MODEL, as_of=as_of)
    stored = stored_choices(cast(dict, champ)["artifact_path"])  # a heavy champion implies a stage-1 one
    info = choice_for(stored, heavy.version, as_of)
    if info is None:
        return None, "no flag threshold chosen for this pair of champions; flagging the budget share"
    return threshold_from_json(info.get("threshold")), f"cascade.json (chosen on {info.get('chosen_on')})"


# Rank error (share of the scored rows) of the quantile sketch that brackets the budget's cut: only the
# rows between its bounds (about 4x this share, plus ties at the bounds) are sorted.
CUT_SKETCH_ERROR = 1e-3


def cap_to_budget(scored: DataFrame, threshold: float | None, budget: float) -> tuple[Column, dict]:
    """The flag column: ``stage1_score >= threshold``, but never more than ``floor(budget * n)``
    accounts — when more pass, the top ones by (score, account_id) are kept."""
    score = F.col(t.STAGE1_SCORE)
    counts = scored.agg(F.count(F.lit(1)).alias("n"), F.count(score).alias("scored"),
                        F.count(F.when(score >= F.lit(threshold), True)).alias("passing")).first()
    n, n_scored = cast(Row, counts)["n"], cast(Row, counts)["scored"]
    allowed = budget_count(budget, n)
    passing = cast(Row, counts)["passing"] if threshold is not None else None
    if passing is not None and passing <= allowed:
        return score >= F.lit(threshold), {"n_flagged": passing, "budget_capped": False}
    keep = min(allowed, n_scored)  # a null score is never flagged
    if keep == 0:
        return F.lit(False), {"n_flagged": 0, "budget_capped": passing is not None and passing > 0}
    s, a = top_cut(scored, keep, n_scored)
    flag = (score > F.lit(s)) | ((score == F.lit(s)) & (F.col(t.ACCOUNT_ID) <= F.lit(a)))
    return flag, {"n_flagged": keep, "budget_capped": passing is not None}


def top_cut(scored: DataFrame, k: int, n_scored: int) -> tuple[float, int]:
    """``(stage1_score, account_id)`` of the ``k``-th row by score descending, then account_id ascending
    (1 <= k <= ``n_scored``, the rows with a score). ``orderBy(...).limit(k)`` sent every row to one task; a
    quantile sketch brackets the k-th score instead, and only the rows between its bounds are sorted. Exact
    either way: when a count shows a bound on the wrong side, that bound is dropped."""
    score, acc = F.col(t.STAGE1_SCORE), F.col(t.ACCOUNT_ID)
    p, e = 1.0 - k / n_scored, CUT_SKETCH_ERROR
    lo, hi = scored.approxQuantile(t.STAGE1_SCORE, [max(0.0, p - 2 * e), min(1.0, p + 2 * e)], e)
    bounds = cast(Row, scored.agg(F.count(F.when(score > F.lit(hi), True)).alias("above"),
                                  F.count(F.when(score >= F.lit(lo), True)).alias("from_lo")).first())
    above, band = 0, score.isNotNull()
    if bounds["above"] < k:  # else the cut lies above hi: no upper bound
        above, band = bounds["above"], band & (score <= F.lit(hi))
    if bounds["from_lo"] >= k:
        band &= score >= F.lit(lo)
    last = (scored.where(band).select(score, acc).orderBy(score.desc(), acc.asc()).limit(k - above)
            .orderBy(score.asc(), acc.desc()).first())
    return cast(Row, last)[t.STAGE1_SCORE], cast(Row, last)[t.ACCOUNT_ID]


class MissingFeaturesError(LookupError):
    """D's ``features`` partition has no rows: there is nothing to score; build the features first."""


def score_stage1_and_flag(spark: SparkSession, warehouse: str, run_date: dt.date, params: dict) -> dict:
    """Stage 1 on every account of D with decisions from its threshold and the stage-2 flag."""
    # The champions of D, not the newest: a rerun of an old date scores as that night did.
    # First, so that a step without a champion yet waits rather than fails.
    model = load_champion(spark, warehouse, as_of=run_date)
    features = features_for(spark, warehouse, run_date)
    if not features.take(1):  # else D's scores would be overwritten with nothing and logged as done
        raise MissingFeaturesError(
            f"features has no partition {run_date}: build it first (`botwatch features --date {run_date}`)")
    scored = score_stage1(features, model, params.get("reason_codes", 3))
    scored = scored.select(t.ACCOUNT_ID, t.RUN_DATE, t.STAGE1_SCORE, "reason_codes").cache()
    heavy = heavy_champion(spark, warehouse, as_of=run_date)
    summary: dict = {"model_version": model.version, "threshold": model.threshold}
    if heavy is None:
        flag, info = F.lit(False), {"n_flagged": 0, "flag": "no heavy champion: nobody reaches stage 2"}
    else:
        thr, source = flag_threshold(spark, warehouse, heavy, as_of=run_date)
        if thr is None:
            warnings.warn(f"stage 1: {source}", stacklevel=2)
        flag, info = cap_to_budget(scored, thr, params["budget"])
        info.update({"flag_threshold": thr, "flag_source": source})
    summary.update(info)
    out = (
        scored.withColumn(STAGE2_REACHED, flag)
        .withColumn(t.STAGE2_SCORE, F.lit(None).cast("double"))
        .withColumn(t.SCORE, F.col(t.STAGE1_SCORE))
        .withColumn(t.MODEL_VERSION, F.lit(f"{STAGE1_MODEL}:{model.version}"))
        .transform(lambda df: _decide(df, run_date, model.threshold, params))
    ).cache()
    counts = {r[t.DECISION]: r["n"] for r in out.groupBy(t.DECISION).agg(F.count("*").alias("n")).collect()}
    _write(spark, warehouse, out, run_date, "score_stage1")
    out.unpersist()
    scored.unpersist()
    return {**summary, **{f"n_{k}": v for k, v in counts.items()}}


class StaleStage1ScoresError(RuntimeError):
    """D's ``scores`` partition is missing or was not written by D's stage-1 champion."""


def _check_stage1_scores(scores: DataFrame, run_date: dt.date, want: str) -> None:
    # Stage 2 decides the unflagged accounts with the champion's threshold, so the flags and scores
    # it reads must be that champion's (train may have promoted another since score_stage1 ran).
    found = sorted(r[0] for r in scores.select(F.split(t.MODEL_VERSION, r"\+")[0]).distinct().collect())
    if found != [want]:
        what = f"by {', '.join(map(str, found))}" if found else "not at all"
        raise StaleStage1ScoresError(
            f"scores of {run_date} were written {what}, not by that date's stage-1 champion {want}: rerun "
            f"stage 1 first (`botwatch score --date {run_date}`, or jobs/score_stage1.py then jobs/score_stage2.py)")


def score_stage2(spark: SparkSession, warehouse: str, run_date: dt.date, params: dict, cascade_section: dict,
                 validated: tuple[dt.date, int] | None = None) -> dict:
    """Stage 2 on D's flagged accounts, then final scores and decisions for the whole partition.
    ``validated``: (D, the version of ``events`` whose rows of D validate checked) to read D's events (the
    sequences) as of it (:func:`botwatch.features.activity.events_table`); None: the latest."""
    heavy = heavy_champion(spark, warehouse, as_of=run_date)
    if heavy is None:
        return {"stage2": "skipped: no heavy champion (train one with `botwatch train`)", "n_stage2": 0}
    settings = InferenceSettings.from_conf(cascade_section)
    scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(run_date))
    stage1_champion = load_champion(spark, warehouse, as_of=run_date)
    _check_stage1_scores(scores, run_date, f"{STAGE1_MODEL}:{stage1_champion.version}")
    scores = scores.cache()
    flagged = scores.where(F.col(STAGE2_REACHED))
    n_flagged = flagged.count()
    if n_flagged == 0:
        scores.unpersist()
        return {"stage2": "no account flagged by stage 1", "n_stage2": 0}
    encoder = encoder_key(heavy, settings)
    rows = features_for(spark, warehouse, run_date).join(flagged.select(t.ACCOUNT_ID), t.ACCOUNT_ID, "left_semi")
    inputs = artifact_inputs(spark, warehouse, rows, heavy, validated)
    inputs = inputs.withColumn(FINGERPRINT, fingerprint(encoder))
    if settings.embedding_cache:
        inputs = with_cached_encodings(spark, warehouse, inputs, encoder)
    stage2 = score_heavy(inputs, heavy, settings, keep=(t.ACCOUNT_ID, FINGERPRINT), cached_encoder=encoder).cache()
    n_cached = stage2.where(F.col(FROM_CACHE)).count()
    n_scored = stage2.count()
    # Where the workers' encoders differ from the driver's guess (a CUDA fallback, other hardware).
    worker_encoders = sorted(r[0] for r in stage2.select(ENCODER).distinct().collect())

    stage1_threshold = stage1_champion.threshold
    joined = (
        scores.drop(t.STAGE2_SCORE)
        .join(stage2.select(t.ACCOUNT_ID, t.STAGE2_SCORE), t.ACCOUNT_ID, "left")
        .withColumn(t.SCORE, F.coalesce(F.col(t.STAGE2_SCORE), F.col(t.STAGE1_SCORE)))
        # Stage 1's own version (stage1_xgb:N): a rerun of stage 2 reads the "+stage2_heavy:M" it wrote.
        .withColumn(t.MODEL_VERSION, F.split(t.MODEL_VERSION, r"\+")[0])
    )
    # A flagged account the heavy model did not score (no features row of D: that partition rebuilt
    # without it since stage 1 ran) keeps stage 1's score, decision and model version.
    scored = F.col(STAGE2_REACHED) & F.col(t.STAGE2_SCORE).isNotNull()
    reached = joined.where(scored).withColumn(  # stage1_xgb:N+stage2_heavy:M
        t.MODEL_VERSION, F.concat(F.col(t.MODEL_VERSION), F.lit(f"+{heavy.model_version}")))
    if heavy.threshold is not None:
        reached = _decide(reached, run_date, heavy.threshold, params)
    else:
        # No operating point for the heavy champion (none reached the target precision on validation):
        # its score is kept, the decision stays stage 1's (else the likeliest bots would all get "none").
        warnings.warn(f"stage 2: {heavy.model_version} has no operating threshold; flagged accounts keep "
                      "stage 1's decisions", stacklevel=2)
        reached = _decide(reached.withColumn(t.SCORE, F.col(t.STAGE1_SCORE)), run_date, stage1_threshold,
                          params).withColumn(t.SCORE, F.coalesce(F.col(t.STAGE2_SCORE), F.col(t.STAGE1_SCORE)))
    rest = _decide(joined.where(~scored), run_date, stage1_threshold, params)
    final = reached.unionByName(rest).select(*SCORE_COLUMNS).cache()
    counts = {r[t.DECISION]: r["n"] for r in final.groupBy(t.DECISION).agg(F.count("*").alias("n")).collect()}
    _write(spark, warehouse, final, run_date, "score_stage2")
    if settings.embedding_cache:
        update_embedding_cache(spark, warehouse, stage2, run_date)
    for df in (final, stage2, scores):
        df.unpersist()
    return {
        "stage2_model_version": heavy.version, "n_stage2": n_scored, "n_flagged": n_flagged,
        "n_embedding_cache_hits": n_cached, "device": resolved_device(settings), "encoder": encoder,
        "worker_encoders": worker_encoders,
        **{f"n_{k}_final": v for k, v in counts.items()},
    }
