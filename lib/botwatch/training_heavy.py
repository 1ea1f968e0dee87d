"""Training the cascade for run date D: the heavy stage-2 model, stage 1 as its student, and the
flag threshold between them.

* :func:`train_heavy_stage` builds the heavy inputs in Spark for the same point-in-time rows,
  time split and golden set as stage 1 (:func:`botwatch.training.training_rows`), trains the
  torch model with early stopping on validation, evaluates it on the golden set (every bot
  family on simulated data) and registers ``stage2_heavy`` behind the same promotion gate.
* :func:`teacher_targets` scores training rows with the heavy champion and blends its score
  with the label into the soft target stage 1 is refreshed on.
* :func:`calibrate_flag_threshold` picks the stage-1 score that sends accounts to stage 2
  (:mod:`botwatch.cascade`) and stores it with the stage-1 champion (``cascade.json``).
* :func:`train_cascade` runs the three in order; ``train_step`` calls it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from botwatch import registry
from botwatch import tables as t
from botwatch.cascade import choice_for, choose_flag_threshold, record_choice, stored_choices
from botwatch.delta_io import read_table, table_exists
from botwatch.evaluation.metrics import pr_auc, recall_at_precision
from botwatch.models.heavy_inputs import heavy_inputs, neighbor_columns
from botwatch.models.stage1 import PlattCalibration, feature_columns
from botwatch.params import CascadeParams, HeavyConfig
from botwatch.scoring.stage2 import (
    HEAVY_MODEL,
    META_FILE,
    STATE_FILE,
    HeavyArtifact,
    InferenceSettings,
    artifact_inputs,
    built_like,
    heavy_champion,
    heavy_champion_record,
    heavy_champion_status,
    score_heavy,
)
from botwatch.training import (
    STAGE1_MODEL,
    TrainingContext,
    TrainParams,
    TrainResult,
    champion_comparison,
    golden_split,
    operating_point,
    prepare_training,
    refresh_decision,
    train_stage1,
    unseen_by_champion,
    validation_weights,
)

if TYPE_CHECKING:
    from botwatch.models.heavy import TrainedHeavy

TEACHER_SCORE = "teacher_score"
DISTILL_TARGET = "distill_target"
HUMAN = t.FAMILIES[0]
LOGIT_CLIP = 40.0  # |logit| the calibration is fitted on: a probability of exactly 0 or 1 is +-inf


def inputs_for(spark: SparkSession, warehouse: str, rows: DataFrame, tabular_cols: Sequence[str],
               heavy_section: dict) -> DataFrame:
    """Heavy inputs (tabular, sequence, neighbour means) for ``rows`` at their own feature dates."""
    cfg = HeavyConfig.from_mapping(heavy_section)
    return heavy_inputs(
        read_table(spark, warehouse, t.EVENTS), read_table(spark, warehouse, t.EDGES),
        read_table(spark, warehouse, t.FEATURES), rows, tabular_cols, heavy_section["neighbor_features"],
        max_len=cfg.max_len, lookback_days=cfg.lookback_days, neighbor_k=cfg.neighbor_k,
        neighbor_seed=cfg.neighbor_seed,
    )


def collect_splits(
    spark: SparkSession, warehouse: str, splits: dict[str, DataFrame], cols: Sequence[str],
    extra: Sequence[str], heavy_section: dict,
) -> dict[str, pd.DataFrame]:
    """Heavy inputs of every split, gathered in one Spark pass (one scan of events and edges,
    not one per split) and split again in pandas; same keys and order as ``splits``."""
    split_col = "_split"
    parts = [
        rows.select(*[c for c in (t.ACCOUNT_ID, t.RUN_DATE, *extra) if c in rows.columns and c not in cols], *cols)
        .withColumn(split_col, F.lit(name))
        for name, rows in splits.items()
    ]
    tagged = functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), parts)
    # Sorted: the same rows in the same order whatever Spark's partitioning (seeded training).
    pdf = cast(pd.DataFrame, inputs_for(spark, warehouse, tagged, cols, heavy_section).toPandas()).sort_values(
        [t.ACCOUNT_ID, t.RUN_DATE], kind="stable")
    return {name: pdf[pdf[split_col] == name].drop(columns=split_col).reset_index(drop=True) for name in splits}


def _with_truth(spark: SparkSession, warehouse: str, pdf: pd.DataFrame) -> pd.DataFrame:
    # Truth is for evaluation only (per-family metrics on simulated data), never for training.
    if not table_exists(spark, warehouse, t.TRUTH) or len(pdf) == 0:
        return pdf
    ids = spark.createDataFrame(pdf[[t.ACCOUNT_ID]].drop_duplicates())
    fam = read_table(spark, warehouse, t.TRUTH).join(ids, t.ACCOUNT_ID).select(t.ACCOUNT_ID, t.FAMILY).toPandas()
    return pdf.merge(fam, on=t.ACCOUNT_ID, how="left")


def family_metrics(families: np.ndarray, score: np.ndarray, target_precision: float, prefix: str = "") -> dict:
    """Per bot family: PR-AUC and recall at ``target_precision`` of that family against humans
    (truth families, simulated data). Families absent from ``families`` are left out."""
    fam = np.asarray(pd.Series(families).fillna(HUMAN).to_numpy(), dtype=object)
    s = np.asarray(score, dtype=np.float64)
    out: dict[str, float] = {}
    for family in t.BOT_FAMILIES:
        mask = (fam == family) | (fam == HUMAN)
        y = (fam[mask] == family).astype(int)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        out[f"{prefix}family_{family}_pr_auc"] = pr_auc(y, s[mask])
        out[f"{prefix}family_{family}_recall_at_p"] = recall_at_precision(y, s[mask], target_precision)
        out[f"{prefix}family_{family}_n"] = float(y.sum())
    return out


@dataclass
class HeavyTrainResult:
    version: int
    promoted: bool
    reason: str
    metrics: dict[str, float]
    threshold: float | None
    # The challenger's own scores of its training and validation rows (account_id, run_date,
    # teacher_score) when it is promoted: stage 1's soft targets without gathering its inputs again.
    scores: pd.DataFrame | None = None


def _save_artifacts(model, directory: str) -> None:
    # Save locally, then copy to the warehouse (botwatch.files: it may be an object store).
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        registry.write_artifact(directory, STATE_FILE, (Path(tmp) / STATE_FILE).read_bytes())
        registry.write_artifact(directory, META_FILE, (Path(tmp) / META_FILE).read_text())


def train_heavy_stage(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams, heavy_section: dict,
    context: TrainingContext | None = None,
) -> HeavyTrainResult:
    """Train, evaluate and register a heavy challenger for D; promote it through the gate.
    ``context``: D's shared rows and canary (built here when not given, and released after)."""
    from botwatch.models.heavy import train_heavy

    cfg = HeavyConfig.from_mapping(heavy_section)
    ctx = context or prepare_training(spark, warehouse, run_date, params)
    cols = feature_columns(ctx.train)
    nbr_cols = neighbor_columns(heavy_section["neighbor_features"])
    extra = [t.LABEL, t.WEIGHT, t.COUNTRY, "is_new_account"]

    train_pdf, valid_pdf, golden_pdf = collect_splits(
        spark, warehouse, {"train": ctx.train, "valid": ctx.valid, "golden": ctx.golden}, cols, extra, heavy_section
    ).values()
    if context is None:
        ctx.release()
    model = train_heavy(
        train_pdf, valid_pdf if len(valid_pdf) else None, cols, nbr_cols,
        label_col=t.LABEL, weight_col=t.WEIGHT, config=cfg,
    )
    valid_pdf, golden_pdf = _with_truth(spark, warehouse, valid_pdf), _with_truth(spark, warehouse, golden_pdf)
    raw_valid = model.predict(valid_pdf) if len(valid_pdf) else np.array([])
    model = calibrate_heavy(model, raw_valid, valid_pdf, ctx.prevalence)
    valid_score = model.calibrated(raw_valid)
    golden_score = model.predict(golden_pdf) if len(golden_pdf) else np.array([])
    threshold, evaluated = operating_point(valid_pdf, valid_score, golden_pdf, golden_score, ctx, params)
    metrics = {"n_train": float(len(train_pdf)), "n_train_positive": float(ctx.n_train_positive),
               "best_epoch": float(model.best_epoch), "epochs_run": float(model.epochs_run), **evaluated}
    if t.FAMILY in golden_pdf and len(golden_pdf):
        metrics.update(family_metrics(golden_pdf[t.FAMILY].to_numpy(), golden_score, params.target_precision,
                                      "golden_"))

    # The same gate as stage 1: beat the canary and do not trail the champion on the golden set.
    champion = registry.champion(spark, warehouse, HEAVY_MODEL)
    current = HeavyArtifact.from_record(champion) if champion else None
    # A champion this code cannot load (a release changed the format) is not compared: it must not block
    # the model that replaces it.
    unloadable = current.problem() if current is not None else None
    champ_pr = None
    keep = unseen_by_champion(champion, ctx.golden, golden_pdf, params)
    if current is not None and not unloadable and len(golden_pdf) and golden_pdf[t.LABEL][keep].nunique() == 2:
        old = current.load("cpu")
        unseen = golden_pdf[keep].reset_index(drop=True)
        champ_inputs = champion_golden_inputs(spark, warehouse, ctx.golden, unseen, current,
                                              dataclasses.asdict(cfg), nbr_cols)
        champ_pr = pr_auc(unseen[t.LABEL].to_numpy(), old.predict(_fill(champ_inputs, old.input_columns)))
        metrics["champion_golden_pr_auc"] = champ_pr
        metrics.update(champion_comparison(golden_pdf, golden_score, keep))

    version = registry.reserve_version(spark, warehouse, HEAVY_MODEL, run_date)
    directory = registry.artifact_dir(warehouse, HEAVY_MODEL, version)
    _save_artifacts(model, directory)
    registry.write_artifact(directory, "meta.json", {
        "threshold": threshold, "train_end": run_date, "valid_days": params.valid_days, "metrics": metrics,
        "target_precision": params.target_precision, "tabular_cols": cols, "neighbor_cols": nbr_cols,
        "prevalence": ctx.prevalence, "prevalence_source": ctx.prevalence_source, **golden_split(params),
    })
    decision = registry.promotion_decision(
        metrics.get("golden_pr_auc", math.nan), metrics.get("canary_golden_pr_auc", math.nan), champ_pr,
        params.promotion_tolerance, challenger_threshold=threshold, run_date=run_date,
        # An unloadable champion actions nobody: its threshold must not keep out a model without one.
        champion={**champion, "threshold": None} if unloadable and champion else champion,
        challenger_vs_champion=metrics.get("golden_pr_auc_vs_champion"),
    )
    if unloadable and current is not None:
        decision = dataclasses.replace(decision, reason=f"{decision.reason} (the champion, {current.model_version}, "
                                       f"was not compared: this code cannot load it: {unloadable})")
    decision = registry.register(spark, warehouse, registry.ModelRecord(
        model_name=HEAVY_MODEL, version=version, stage=registry.CHALLENGER, run_date=run_date, metrics=metrics,
        artifact_path=directory, threshold=threshold, train_end=run_date,
    ), decision, compared_with=champion)
    own_scores = None
    if decision.promote:
        # Only a champion teaches stage 1: a refused challenger's training rows are not scored. Its
        # scores before calibration: blended with labels, they must be on the labels' scale.
        keys = [t.ACCOUNT_ID, t.RUN_DATE]
        uncalibrated = dataclasses.replace(model, calibration=(1.0, 0.0))
        own_scores = pd.concat([train_pdf[keys].assign(**{TEACHER_SCORE: uncalibrated.predict(train_pdf)}),
                                valid_pdf[keys].assign(**{TEACHER_SCORE: raw_valid})], ignore_index=True)
    return HeavyTrainResult(version, decision.promote, decision.reason, metrics, threshold, own_scores)


def calibrate_heavy(
    model: TrainedHeavy, raw_valid: np.ndarray, valid_pdf: pd.DataFrame, prevalence: float | None
) -> TrainedHeavy:
    """``model`` with a Platt calibration fitted, as stage 1's, on validation rows reweighted to the
    population's bot share: the network learnt the labelled rows' bot share, and ``score`` takes stage 2's
    value for the accounts it scores, so both stages must read as the same probability. ``raw_valid``:
    the uncalibrated model's scores of ``valid_pdf`` (computed once by the caller, which needs them too)."""
    from botwatch.models.heavy import probability_logits

    if not len(valid_pdf):
        return model
    margin = np.clip(probability_logits(raw_valid), -LOGIT_CLIP, LOGIT_CLIP)
    fitted = PlattCalibration.fit(margin, valid_pdf[t.LABEL].to_numpy(), validation_weights(valid_pdf, prevalence))
    return dataclasses.replace(model, calibration=(fitted.a, fitted.b))


def champion_golden_inputs(
    spark: SparkSession, warehouse: str, golden_rows: DataFrame, golden_pdf: pd.DataFrame, champion: HeavyArtifact,
    config: dict, neighbor_cols: Sequence[str],
) -> pd.DataFrame:
    """The golden rows as the champion's inputs, in ``golden_pdf``'s order: today's (``golden_pdf``,
    built with ``config`` and ``neighbor_cols``) when the champion was trained on inputs built the
    same way, else rebuilt with its own settings. A changed ``heavy.*`` knob would otherwise score
    the champion on inputs it never saw, and the gate would compare against a handicapped champion."""
    if built_like(champion, config, neighbor_cols):
        return golden_pdf
    keys = [t.ACCOUNT_ID, t.RUN_DATE]
    rebuilt = cast(pd.DataFrame, artifact_inputs(spark, warehouse, golden_rows, champion).toPandas())
    return golden_pdf[keys].merge(rebuilt, on=keys, how="left")


def _fill(pdf: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """``pdf`` with columns an older model reads but today's rows lack, as missing."""
    missing = [c for c in cols if c not in pdf]
    return pdf.assign(**{c: np.nan for c in missing}) if missing else pdf


# ---------------------------------------------------------------- teacher -> student


def teacher_targets(
    spark: SparkSession, warehouse: str, teacher: HeavyArtifact, params: CascadeParams, settings: InferenceSettings,
    known_scores: pd.DataFrame | None = None,
) -> Callable[[DataFrame], DataFrame]:
    """A function adding ``teacher_score`` (the heavy champion's probability before its calibration to
    the population's bot share: on the labels' scale, which it is blended with) and ``distill_target``
    (``(wl * label + wt * teacher_score) / (wl + wt)``) to training rows. Calibrated, a teacher 90 % sure
    a labelled human is a bot read 0.11, and its disagreements with the labels all but vanished.

    ``known_scores`` (``account_id``, ``run_date``, ``teacher_score``): the teacher's uncalibrated
    scores of these rows computed in process when it was just trained on them; rows it lacks are
    scored through Spark as without it."""
    wl, wt = params.distill_label_weight, params.distill_teacher_weight
    if wl < 0 or wt < 0 or wl + wt <= 0:
        raise ValueError(f"cascade.distill_label_weight / distill_teacher_weight must be >= 0 with a positive sum, "
                         f"got {wl}, {wt}")

    key = [t.ACCOUNT_ID, t.RUN_DATE]
    calibration = json.loads(teacher.meta_json).get("calibration") or (1.0, 0.0)
    known = None
    if known_scores is not None and len(known_scores):
        known = F.broadcast(spark.createDataFrame(
            known_scores[key].assign(**{TEACHER_SCORE: known_scores[TEACHER_SCORE].astype(float)})
        ).dropDuplicates(key))

    def add(rows: DataFrame) -> DataFrame:
        keys = rows.dropDuplicates(key)
        parts = []
        if known is not None:
            parts.append(known.join(keys.select(*key), key, "left_semi"))
            keys = keys.join(known, key, "left_anti")
        if not parts or not keys.isEmpty():
            scored = score_heavy(artifact_inputs(spark, warehouse, keys, teacher), teacher, settings, keep=tuple(key))
            parts.append(scored.select(*key, uncalibrated_score(F.col(t.STAGE2_SCORE), calibration).alias(
                TEACHER_SCORE)))
        out = rows.join(functools.reduce(DataFrame.unionByName, parts), key, "left")
        blended = (F.lit(wl) * F.col(t.LABEL).cast("double") + F.lit(wt) * F.col(TEACHER_SCORE)) / F.lit(wl + wt)
        return out.withColumn(DISTILL_TARGET, F.coalesce(blended, F.col(t.LABEL).cast("double"))).cache()

    return add


def uncalibrated_score(score: Column, calibration: Sequence[float]) -> Column:
    """The probability a heavy model's Platt ``calibration`` (a, b) mapped to ``score``: the inverse of
    ``sigmoid(a * logit(p) + b)`` (``TrainedHeavy.calibrated``), 0 and 1 kept."""
    a, b = (float(v) for v in calibration)
    if (a, b) == (1.0, 0.0) or a <= 0:
        return score
    logit = F.log(score) - F.log1p(-score)
    raw = F.lit(1.0) / (F.lit(1.0) + F.exp(-(logit - F.lit(b)) / F.lit(a)))
    return F.when(score <= 0, F.lit(0.0)).when(score >= 1, F.lit(1.0)).otherwise(raw)


# ---------------------------------------------------------------- flag threshold


def calibration_sample(spark: SparkSession, warehouse: str, run_date: dt.date, n: int) -> DataFrame:
    """A hashed sample of about ``n`` accounts of D's features (all of them when fewer)."""
    features = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(run_date))
    total = features.count()
    if total <= n:
        return features
    share = n / total
    bucket = F.pmod(F.xxhash64(F.lit("cascade-calibration"), F.col(t.ACCOUNT_ID)), F.lit(1_000_000))
    return features.where(bucket < F.lit(round(share * 1_000_000)))


def calibrate_flag_threshold(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: CascadeParams, settings: InferenceSettings,
) -> dict:
    """Choose the flag threshold for the champions of D (those D's scoring uses: the current ones,
    unless D is a rerun of an earlier date) on D's accounts and add it to that stage-1 champion's
    ``cascade.json`` (with the heavy version and the date it was chosen for; earlier choices stay,
    for reruns of earlier dates)."""
    from botwatch.scoring.stage1 import load_champion, score_stage1

    heavy = heavy_champion(spark, warehouse, as_of=run_date)
    if heavy is None:
        return {"flag_threshold": None, "note": "no heavy champion: stage 2 is off"}
    stage1_rec = registry.champion(spark, warehouse, STAGE1_MODEL, as_of=run_date)
    if stage1_rec is None:
        return {"flag_threshold": None, "note": "no stage-1 champion"}
    stage1 = load_champion(spark, warehouse, as_of=run_date)
    sample = calibration_sample(spark, warehouse, run_date, params.calibration_accounts)
    s1 = score_stage1(sample, stage1, reason_codes=0).select(t.ACCOUNT_ID, t.STAGE1_SCORE)
    s2 = score_heavy(artifact_inputs(spark, warehouse, sample, heavy), heavy, settings)
    pdf = cast(pd.DataFrame, s1.join(s2.select(t.ACCOUNT_ID, t.STAGE2_SCORE), t.ACCOUNT_ID).toPandas())
    heavy_thr = heavy.threshold
    actions = (pdf[t.STAGE2_SCORE] >= heavy_thr).to_numpy() if heavy_thr is not None else np.zeros(len(pdf), bool)
    choice = choose_flag_threshold(pdf[t.STAGE1_SCORE].to_numpy(), actions, keep_share=params.keep_share,
                                   budget=params.budget)
    if choice.budget_binds:
        warnings.warn(
            f"cascade budget {params.budget:.0%} binds: stage 2 sees {choice.recall_kept:.1%} of what heavy-on-"
            f"everyone would action (recall lost {choice.recall_lost:.1%}); raise cascade.budget to recover it",
            stacklevel=2,
        )
    info = {
        **choice.to_dict(), "heavy_version": heavy.version, "heavy_threshold": heavy_thr,
        "stage1_version": stage1.version, "keep_share": params.keep_share, "budget": params.budget,
        "chosen_on": run_date,
    }
    record_choice(stage1_rec["artifact_path"], info)
    return {"flag_threshold": info["threshold"], "budget_binds": choice.budget_binds,
            "recall_lost": info["recall_lost"], "flagged_share": choice.flagged_share}


def flag_threshold_to_choose(spark: SparkSession, warehouse: str, run_date: dt.date,
                             params: CascadeParams) -> str | None:
    """Why D's champions (a heavy one and a stage-1 one) need their flag threshold chosen on a night that
    trains nothing; None when the one chosen on or before D stands. Either none was chosen (a training that
    promoted one and stopped before choosing it), or it was chosen for another ``cascade.budget`` or
    ``keep_share`` (the operator raised the budget, as the binding-budget warning says: the stored
    threshold would keep flagging at the old one until the next retrain)."""
    heavy = heavy_champion_record(spark, warehouse, run_date)
    stage1 = registry.champion(spark, warehouse, STAGE1_MODEL, as_of=run_date) if heavy is not None else None
    if heavy is None or stage1 is None:
        return None
    chosen = choice_for(stored_choices(stage1["artifact_path"]), int(heavy[t.VERSION]), run_date)
    if chosen is None:
        return "no flag threshold had been chosen for the champions of D"
    # Choices written before the knobs were kept with them stand.
    changed = [f"cascade.{knob} {chosen[knob]} -> {value}" for knob, value in
               (("budget", params.budget), ("keep_share", params.keep_share))
               if chosen.get(knob) is not None and not math.isclose(float(chosen[knob]), float(value))]
    return f"the flag threshold was chosen for other knobs: {', '.join(changed)}" if changed else None


def calibrate_if_needed(spark: SparkSession, warehouse: str, run_date: dt.date, cascade_section: dict) -> dict:
    """On a night that trains nothing: choose the flag threshold when D's champions need one
    (:func:`flag_threshold_to_choose`); ``{}`` when the one they have stands."""
    params = CascadeParams.from_conf(cascade_section)
    why = flag_threshold_to_choose(spark, warehouse, run_date, params)
    if why is None:
        return {}
    chosen = calibrate_flag_threshold(spark, warehouse, run_date, params, InferenceSettings.from_conf(cascade_section))
    return {**chosen, "recalibrated": why}


def cascade_refresh_decision(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams
) -> tuple[bool, str]:
    """:func:`~botwatch.training.refresh_decision`, plus: retrain when there is no heavy champion
    (stage 2 is off until one is promoted), unless the heavy model was already trained on D."""
    retrain, why = refresh_decision(spark, warehouse, run_date, params)
    if retrain:
        return retrain, why
    champion, unloadable = heavy_champion_status(spark, warehouse, run_date)
    if champion is not None and unloadable is None:
        return retrain, why
    # A date before the current heavy champion's (its gate would refuse D's model) or stage 1's (a
    # rerun of an earlier date: the first heavy champion must not come from older rows) trains none.
    for model in (HEAVY_MODEL, STAGE1_MODEL):
        newer = registry.newer_champion(registry.champion(spark, warehouse, model), run_date)
        if newer is not None:
            return False, f"{why}; the {model} champion ({newer}) was trained after {run_date}"
    done = _heavy_trained_on(spark, warehouse, run_date, params)
    if done is not None:
        return False, f"{why}; no heavy champion, and the heavy model of {run_date} was refused ({done['reason']})"
    if champion is not None:
        return True, (f"the heavy champion ({HEAVY_MODEL}:{champion[t.VERSION]}) cannot be loaded by this code "
                      f"({unloadable}): stage 2 is off until one trained by this code is promoted")
    return True, "no heavy champion yet: stage 2 is off until one is promoted"


def _heavy_trained_on(spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams) -> dict | None:
    """The heavy training of D that finished (``registry.trained_on``); None with
    ``train.max_champion_age_days=0``, which retrains whatever ran before."""
    if params.max_champion_age_days <= 0:
        return None
    return registry.trained_on(spark, warehouse, HEAVY_MODEL, run_date)


def _finished_heavy(record: dict) -> HeavyTrainResult:
    """The heavy training of D that finished before, as its result (its scores are not kept)."""
    return HeavyTrainResult(
        version=int(record[t.VERSION]), promoted=record[t.STAGE] != registry.CHALLENGER,
        reason=f"already trained on {record[t.RUN_DATE]}: {record['reason']}",
        metrics=dict(record.get("metrics") or {}), threshold=record.get("threshold"),
    )


# ---------------------------------------------------------------- the whole cascade


def train_cascade(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: TrainParams, heavy_section: dict,
    cascade_section: dict,
) -> tuple[TrainResult, dict]:
    """Heavy model, then stage 1 (distilled from the heavy champion when there is one), then the
    flag threshold. Returns stage 1's result and a summary of the heavy and cascade parts."""
    cparams = CascadeParams.from_conf(cascade_section)
    settings = InferenceSettings.from_conf(cascade_section)
    ctx = prepare_training(spark, warehouse, run_date, params)
    try:
        done = _heavy_trained_on(spark, warehouse, run_date, params)
        # A rerun after stage 1 or the threshold failed: the heavy model of D is not trained again (a
        # copy could replace D's promoted one at a tie: new versions, new scores, a dropped cache).
        heavy = (_finished_heavy(done) if done is not None
                 else train_heavy_stage(spark, warehouse, run_date, params, heavy_section, ctx))
        summary: dict = {
            "heavy_version": heavy.version, "heavy_promoted": heavy.promoted, "heavy_reason": heavy.reason,
            "heavy_golden_pr_auc": heavy.metrics.get("golden_pr_auc"),
        }
        # The teacher of D: a rerun of an earlier date never learns from a champion trained after it
        # (its training rows hold labels observed after D, and D's validation window).
        teacher = heavy_champion(spark, warehouse, as_of=run_date)
        # A champion trained just now scored its own training and validation rows in process.
        own = heavy.scores if heavy.promoted and teacher and teacher.version == heavy.version else None
        targets = teacher_targets(spark, warehouse, teacher, cparams, settings, own) if teacher else None
        summary["distilled_from"] = teacher.model_version if teacher else None
        summary["teacher_scores"] = None if teacher is None else "in process" if own is not None else "spark"
        result = train_stage1(spark, warehouse, run_date, params, teacher=targets,
                              teacher_version=teacher.model_version if teacher else None, context=ctx)
    finally:
        ctx.release()
    summary.update(calibrate_flag_threshold(spark, warehouse, run_date, cparams, settings))
    return result, summary


__all__ = [
    "CascadeParams", "HeavyTrainResult", "calibrate_flag_threshold", "calibrate_if_needed", "cascade_refresh_decision",
    "family_metrics", "flag_threshold_to_choose", "inputs_for", "teacher_targets", "train_cascade", "train_heavy_stage",
    "DISTILL_TARGET", "TEACHER_SCORE",
]
