"""The two-stage cascade: the flag threshold and budget (against brute force), Spark inference of
the heavy model against in-process torch, int8 quantisation, decisions (shadow, holdout, golden),
the embedding cache, multi-date sequences, and the whole cascade on the simulated platform."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from delta.tables import DeltaTable
from helpers import CASCADE_TRAIN_SETTINGS, copy_warehouse, merges_losing
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import registry, steps, training, training_heavy
from botwatch import tables as t
from botwatch.cascade import (
    CASCADE_FILE,
    CascadeConfigError,
    budget_count,
    choose_flag_threshold,
    share_of,
    threshold_from_json,
    with_choice,
)
from botwatch.config import warehouse_path
from botwatch.delta_io import read_table, write_table
from botwatch.models import heavy as H
from botwatch.models.heavy_inputs import FINGERPRINT, fingerprint, heavy_inputs
from botwatch.models.sequences import gather_sequences, gather_sequences_at
from botwatch.schemas import EVENTS_SCHEMA
from botwatch.scoring.cascade import MissingFeaturesError, StaleStage1ScoresError, cap_to_budget
from botwatch.scoring.decisions import with_decisions
from botwatch.scoring.stage2 import (
    ENCODING,
    FROM_CACHE,
    HEAVY_MODEL,
    META_FILE,
    HeavyArtifact,
    InferenceSettings,
    artifact_inputs,
    heavy_champion,
    score_heavy,
    update_embedding_cache,
    with_cached_encodings,
)
from botwatch.training import TrainParams, train_stage1, training_rows
from botwatch.training_heavy import (
    DISTILL_TARGET,
    TEACHER_SCORE,
    CascadeParams,
    HeavyTrainResult,
    calibrate_flag_threshold,
    champion_golden_inputs,
    teacher_targets,
    train_cascade,
)

TAB = ["f1", "f2"]
NBR = ["nbr_f1", "nbr_count"]
TINY = H.HeavyConfig(
    max_len=16, event_embed_dim=4, dt_embed_dim=4, seq_hidden=8, tab_hidden=8, nbr_hidden=4, head_hidden=8,
    epochs=3, patience=2, batch_size=64, seed=3, device="cpu", ensemble=1,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- flag threshold


def _brute_force(s, acts, keep, budget):
    """Every distinct score (and +inf) as a candidate: the highest keeping `keep` of the actions
    within the budget; else the lowest within the budget."""
    cands = sorted(set(s.tolist()) | {math.inf})
    allowed = math.floor(budget * len(s) + 1e-9)
    within = [c for c in cands if (s >= c).sum() <= allowed]
    keeping = [c for c in within if acts.sum() == 0 or (s[acts] >= c).mean() >= keep]
    return max(keeping) if keeping else min(within)


@pytest.mark.parametrize("seed", range(12))
def test_flag_threshold_matches_brute_force_and_respects_budget(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    s = np.round(rng.random(n), 2)  # ties on purpose
    acts = rng.random(n) < s ** 3 * rng.uniform(0.2, 1.0)
    budget, keep = float(rng.uniform(0.02, 0.5)), float(rng.uniform(0.5, 1.0))
    got = choose_flag_threshold(s, acts, keep_share=keep, budget=budget)
    want = _brute_force(s, acts, keep, budget)
    assert got.threshold == want
    assert (s >= got.threshold).sum() <= math.floor(budget * n + 1e-9)
    assert got.flagged_share == pytest.approx((s >= want).mean())
    if acts.any():
        kept = (s[acts] >= want).mean()
        assert got.recall_kept == pytest.approx(kept)
        assert got.budget_binds == (kept < keep)
        assert got.recall_lost == pytest.approx(1 - kept)


def test_cascade_keeps_target_recall_of_heavy_on_everyone():
    # 10,000 accounts; the heavy model would action 300; stage 1 ranks them high but not perfectly.
    rng = np.random.default_rng(0)
    n = 10_000
    acts = np.zeros(n, bool)
    acts[:300] = True
    s = np.where(acts, rng.beta(8, 2, n), rng.beta(1, 12, n))
    choice = choose_flag_threshold(s, acts, keep_share=0.99, budget=0.10)
    assert not choice.budget_binds
    assert (s[acts] >= choice.threshold).mean() >= 0.99
    assert (s >= choice.threshold).mean() <= 0.10
    # The heavy model then runs on the flagged share only: far less compute than on everyone.
    assert choice.flagged_share < 0.2 * 1.0
    # A budget below what the target needs binds, and the loss is reported.
    tight = choose_flag_threshold(s, acts, keep_share=0.99, budget=0.02)
    assert tight.budget_binds and (s >= tight.threshold).mean() <= 0.02
    assert tight.recall_lost == pytest.approx(1 - (s[acts] >= tight.threshold).mean())
    assert tight.recall_lost > 0.01


@pytest.mark.parametrize("budget", [0.0, 1.0])
def test_flag_everyone_and_flag_nobody_survive_cascade_json(budget):
    # The heavy model would action nobody in the sample: the budget alone decides. Budget 1 flags
    # everyone (-inf), budget 0 nobody (+inf); cascade.json must keep which one.
    s = np.linspace(0.0, 1.0, 50)
    choice = choose_flag_threshold(s, np.zeros(50, bool), keep_share=0.99, budget=budget)
    stored = json.loads(json.dumps(choice.to_dict(), allow_nan=False))
    thr = threshold_from_json(stored["threshold"])
    assert thr == choice.threshold
    assert (s >= thr).mean() == choice.flagged_share == budget
    assert stored["recall_kept"] is None  # nan: no heavy actions to keep


def test_the_gate_scores_the_champion_on_inputs_built_its_own_way(spark, warehouse, tmp_path):
    day = dt.date(2026, 1, 20)
    std = H.Standardizer(TAB + NBR, np.zeros(4), np.ones(4))
    champion = HeavyArtifact.from_folder(
        H.TrainedHeavy(H.HeavyModel(len(TAB), len(NBR), TINY).eval(), std, TAB, NBR, TINY).save(tmp_path / "m"), 1)
    at = [dt.datetime(2026, 1, 20, h, tzinfo=dt.UTC) for h in range(8)]
    write_table(spark.createDataFrame([(1, ts, "post", "ip", "dev", day) for ts in at], EVENTS_SCHEMA), warehouse,
                t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(spark.createDataFrame([(1, 2, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))],
                                      f"{t.SRC} long, {t.DST} long, {t.CREATED_AT} timestamp"), warehouse, t.EDGES)
    golden_rows = spark.createDataFrame([(1, day, 1.0, 2.0, 1), (2, day, 3.0, 4.0, 0)],
                                        f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date, f1 double, f2 double, label int")
    write_table(golden_rows.drop(t.LABEL), warehouse, t.FEATURES, partition_by=[t.RUN_DATE])
    # Today's golden inputs: built with max_len 4 (a changed knob), so account 1 kept 4 of its 8 events.
    today = pd.DataFrame({t.ACCOUNT_ID: [2, 1], t.RUN_DATE: [day, day], t.LABEL: [0, 1],
                          t.SEQ_EVENT_TYPE: [None, [1] * 4]})
    same = champion_golden_inputs(spark, warehouse, golden_rows, today, champion, dataclasses.asdict(TINY), NBR)
    assert same is today  # built like the champion's: reused
    changed = {**dataclasses.asdict(TINY), "max_len": 4}
    got = champion_golden_inputs(spark, warehouse, golden_rows, today, champion, changed, NBR)
    assert list(got[t.ACCOUNT_ID]) == [2, 1]  # today's order, so the labels line up
    assert got[t.SEQ_EVENT_TYPE].iloc[0] is None and len(got[t.SEQ_EVENT_TYPE].iloc[1]) == 8  # max_len 16
    assert list(got["nbr_f1"]) == [1.0, 3.0] and list(got[t.NBR_COUNT]) == [1, 1]  # each the other's f1


def test_a_later_choice_never_changes_what_an_earlier_date_flags(spark, warehouse):
    from types import SimpleNamespace

    from botwatch.scoring.cascade import flag_threshold

    art = f"{warehouse}/models/stage1_xgb/1"
    registry.upsert(spark, warehouse, registry.ModelRecord("stage1_xgb", 1, registry.CHAMPION, dt.date(2026, 1, 1),
                                                           artifact_path=art))
    stored = None
    for heavy, day, thr in ((1, 1, 0.5), (1, 3, 0.6), (2, 5, 0.7), (2, 5, 0.8)):  # the last one reruns day 5
        stored = with_choice(stored, {"heavy_version": heavy, "chosen_on": dt.date(2026, 1, day), "threshold": thr})
        registry.write_artifact(art, CASCADE_FILE, stored)
    got = {(h, d): flag_threshold(spark, warehouse, SimpleNamespace(version=h), as_of=dt.date(2026, 1, d))[0]
           for h in (1, 2) for d in (1, 2, 3, 4, 6)}
    assert got == {(1, 1): 0.5, (1, 2): 0.5, (1, 3): 0.6, (1, 4): 0.6, (1, 6): 0.6,
                   (2, 1): None, (2, 2): None, (2, 3): None, (2, 4): None, (2, 6): 0.8}
    assert len(stored["choices"]) == 3
    # A file from before choices were kept holds one choice.
    registry.write_artifact(art, CASCADE_FILE, {"heavy_version": 2, "chosen_on": "2026-01-05", "threshold": "inf"})
    assert flag_threshold(spark, warehouse, SimpleNamespace(version=2), as_of=dt.date(2026, 1, 6))[0] == math.inf


def test_budget_and_keep_counts_take_the_share_as_written():
    """``floor(budget * n + 1e-9)`` in doubles let one account fewer through than the budget allows once n
    passed ~10^7 (stage 1's cap and the calibrated flag threshold both counted so)."""
    assert math.floor(0.57 * 38_130_100 + 1e-9) == 21_734_156  # of 21,734,157 allowed
    for share in (0.57, 0.1, 0.07, 0.29, 0.99, 1.0, 0.0):
        for n in (0, 1, 203, 38_130_100, 10**9 + 7):
            exact = Decimal(str(share)) * n
            assert budget_count(share, n) == int(exact.to_integral_value(ROUND_FLOOR))
            assert math.ceil(share_of(np.float64(share), n)) == int(exact.to_integral_value(ROUND_CEILING))


def test_flag_threshold_rejects_bad_knobs():
    with pytest.raises(CascadeConfigError, match="keep_share"):
        choose_flag_threshold(np.array([0.1]), np.array([True]), keep_share=0.0, budget=0.1)
    with pytest.raises(CascadeConfigError, match="budget"):
        choose_flag_threshold(np.array([0.1]), np.array([True]), keep_share=0.9, budget=1.5)


def test_cap_to_budget_never_exceeds_budget(spark):
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(203), 1)  # many ties
    df = spark.createDataFrame(
        [(int(i), float(v)) for i, v in enumerate(scores)], f"{t.ACCOUNT_ID} long, {t.STAGE1_SCORE} double"
    )
    for thr, budget in ((0.0, 0.1), (0.85, 0.1), (0.95, 0.5), (None, 0.07), (0.5, 0.0)):
        flag, info = cap_to_budget(df, thr, budget)
        got = {r[0] for r in df.where(flag).select(t.ACCOUNT_ID).collect()}
        allowed = math.floor(budget * len(scores) + 1e-9)
        assert len(got) == info["n_flagged"] <= allowed
        passing = set(np.flatnonzero(scores >= thr)) if thr is not None else None
        if passing is not None and len(passing) <= allowed:
            assert got == passing
        else:  # the top `allowed` by (score desc, account_id asc)
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            assert got == set(order[:allowed])


def test_the_budget_cut_is_the_kth_row_whatever_the_sketch_brackets(spark, monkeypatch):
    """The cut sorted every scored row on one task (orderBy + limit); a quantile sketch now brackets it and only
    the rows between its bounds are sorted. The same row either way: ties at every cut, null scores, and bounds
    a wrong sketch puts on the wrong side of the cut."""
    from botwatch.scoring.cascade import top_cut

    rng = np.random.default_rng(11)
    n = 3000
    ids, scores = rng.permutation(n), np.round(rng.random(n), 2)  # 101 distinct scores
    rows = list(zip(ids.tolist(), scores.tolist(), strict=True))
    df = spark.createDataFrame(rows + [(n, None), (n + 1, None)], f"{t.ACCOUNT_ID} long, {t.STAGE1_SCORE} double")
    order = sorted(rows, key=lambda r: (-r[1], r[0]))
    frame = type(df)  # Spark 4's classic DataFrame overrides pyspark.sql.DataFrame's methods
    sketches = {"Spark's": frame.approxQuantile,
                "below every cut": lambda self, col, probabilities, error: [0.0, 0.0],
                "above every cut": lambda self, col, probabilities, error: [1.0, 1.0]}
    for sketch in sketches.values():
        monkeypatch.setattr(frame, "approxQuantile", sketch)
        got = [top_cut(df, k, n) for k in (1, 700, 2999, n)]
        assert [(a, s) for s, a in got] == [order[k - 1] for k in (1, 700, 2999, n)]


# ---------------------------------------------------------------- decisions


def test_shadow_never_actions_holdout_reproducible_golden_never_actioned(spark):
    rng = np.random.default_rng(1)
    n = 4000
    df = spark.createDataFrame(
        [(i, float(s)) for i, s in enumerate(rng.random(n))], f"{t.ACCOUNT_ID} long, {t.SCORE} double"
    )
    day = dt.date(2026, 1, 18)
    kw = dict(threshold=0.5, review_band=0.1, exploration_share=0.05, golden_share=0.2, golden_salt="g")
    enforce = with_decisions(df, day, mode="enforce", **kw).toPandas().set_index(t.ACCOUNT_ID).sort_index()
    again = with_decisions(df, day, mode="enforce", **kw).toPandas().set_index(t.ACCOUNT_ID).sort_index()
    shadow = with_decisions(df, day, mode="shadow", **kw).toPandas().set_index(t.ACCOUNT_ID).sort_index()
    other_day = with_decisions(df, day + dt.timedelta(days=1), mode="enforce", **kw).toPandas()
    other_day = other_day.set_index(t.ACCOUNT_ID).sort_index()

    assert not shadow["actioned"].any()
    assert (shadow[t.DECISION] == enforce[t.DECISION]).all()  # shadow records the same decisions
    assert enforce["holdout"].equals(again["holdout"])  # reproducible
    assert not enforce["holdout"].equals(other_day["holdout"])  # a new draw each day
    would_act = enforce[t.DECISION] == "action"
    assert not (enforce["holdout"] & ~would_act).any()
    assert 0.02 < enforce.loc[would_act, "holdout"].mean() < 0.09  # ~5 % of ~2,000 would-be actions
    assert enforce["golden"].any() and not (enforce["golden"] & enforce["actioned"]).any()
    want = would_act & ~enforce["holdout"] & ~enforce["golden"]
    assert enforce["actioned"].equals(want)
    assert ((enforce[t.SCORE] >= 0.5) == would_act).all()


# ---------------------------------------------------------------- Spark inference


def _synthetic(n: int, seed: int) -> pd.DataFrame:
    """Bots act at night with regular gaps; humans by day with irregular ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        bot = rng.random() < 0.4
        length = int(rng.integers(0, 24))
        gaps = 6 + rng.integers(0, 2, length) if bot else rng.integers(0, 17, length)
        hours = rng.uniform(0, 5, length) if bot else rng.uniform(8, 23, length)
        angle = 2 * np.pi * hours / 24
        rows.append({
            t.ACCOUNT_ID: i,
            t.SEQ_EVENT_TYPE: rng.integers(1, len(t.EVENT_TYPES) + 1, length).astype(np.int32).tolist(),
            t.SEQ_DT_BUCKET: gaps.astype(np.int32).tolist(),
            t.SEQ_HOUR_SIN: np.sin(angle).tolist(),
            t.SEQ_HOUR_COS: np.cos(angle).tolist(),
            "f1": float(rng.normal(5, 2)) if rng.random() > 0.3 else float("nan"),
            "f2": float(rng.exponential(100.0)),
            "nbr_f1": float(rng.normal()) if rng.random() > 0.2 else None,
            "nbr_count": float(rng.integers(0, 5)),
            t.LABEL: int(bot),
            "weight": 1.0,
        })
    pdf = pd.DataFrame(rows)
    pdf.loc[pdf[t.SEQ_EVENT_TYPE].map(len) == 0, [t.SEQ_EVENT_TYPE, t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN,
                                                  t.SEQ_HOUR_COS]] = None  # no events: null arrays
    return pdf


INPUT_SCHEMA = T.StructType([
    T.StructField(t.ACCOUNT_ID, T.LongType()),
    T.StructField(t.SEQ_EVENT_TYPE, T.ArrayType(T.IntegerType())),
    T.StructField(t.SEQ_DT_BUCKET, T.ArrayType(T.IntegerType())),
    T.StructField(t.SEQ_HOUR_SIN, T.ArrayType(T.DoubleType())),
    T.StructField(t.SEQ_HOUR_COS, T.ArrayType(T.DoubleType())),
    *[T.StructField(c, T.DoubleType()) for c in (*TAB, *NBR)],
])


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """A tiny trained heavy model saved as a registry artifact, and scoring rows."""
    train, rows = _synthetic(400, 1), _synthetic(150, 2)
    model = H.train_heavy(train, None, TAB, NBR, config=TINY)
    folder = model.save(tmp_path_factory.mktemp("heavy") / "stage2_heavy" / "1")
    artifact = HeavyArtifact.from_record({"artifact_path": str(folder), t.VERSION: 1, "threshold": 0.5})
    return model, artifact, rows


def _frame(spark, pdf):
    return spark.createDataFrame(pdf[[f.name for f in INPUT_SCHEMA.fields]], INPUT_SCHEMA)


def _spark_scores(df, artifact, **settings):
    cfg = InferenceSettings(**{"device": "cpu", "batch_size": 32, "partitions": 3, **settings})
    return score_heavy(df, artifact, cfg).toPandas().set_index(t.ACCOUNT_ID).sort_index()


def test_spark_scores_equal_in_process_torch_and_quantised_stay_close(spark, heavy):
    model, artifact, rows = heavy
    df = _frame(spark, rows)
    want = pd.Series(model.predict(rows), index=rows[t.ACCOUNT_ID]).sort_index()
    got = _spark_scores(df, artifact, quantize_cpu=False)
    assert len(got) == len(rows) and not got[FROM_CACHE].any()
    np.testing.assert_allclose(got[t.STAGE2_SCORE].to_numpy(), want.to_numpy(), atol=1e-6)
    # Encodings returned by the workers are the encoder's output.
    np.testing.assert_allclose(np.stack(got[ENCODING].to_numpy()), model.encode_sequences(
        rows.set_index(t.ACCOUNT_ID).sort_index()), atol=1e-6)

    # int8 dynamic quantisation scales activations per batch, so it is compared with the float model
    # (batches in Spark differ from in-process ones).
    quantised = _spark_scores(df, artifact, quantize_cpu=True)[t.STAGE2_SCORE].to_numpy()
    diff = np.abs(quantised - want.to_numpy())
    assert diff.max() < 0.05 and diff.mean() < 0.01
    assert diff.max() > 0  # it did run the int8 model


def test_embedding_cache_reused_when_unchanged_refreshed_when_changed(spark, heavy, warehouse, monkeypatch):
    model, artifact, rows = heavy
    rows = rows.head(40).copy()
    cfg = InferenceSettings(device="cpu", quantize_cpu=False, batch_size=16, partitions=2)
    encoder = "stage2_heavy:1:fp32"
    day1, day2 = dt.date(2026, 1, 10), dt.date(2026, 1, 11)

    def run(pdf, day):
        inputs = _frame(spark, pdf).withColumn(FINGERPRINT, fingerprint(encoder))
        inputs = with_cached_encodings(spark, warehouse, inputs, encoder)
        scored = score_heavy(inputs, artifact, cfg, keep=(t.ACCOUNT_ID, FINGERPRINT), cached_encoder=encoder).cache()
        out = scored.toPandas().set_index(t.ACCOUNT_ID).sort_index()
        update_embedding_cache(spark, warehouse, scored, day)
        scored.unpersist()
        return out

    def cache():
        return read_table(spark, warehouse, t.EMBEDDING_CACHE).toPandas().set_index(t.ACCOUNT_ID).sort_index()

    first = run(rows, day1)
    assert not first[FROM_CACHE].any()
    stored = cache()
    assert len(stored) == len(rows) and (stored[t.RUN_DATE] == day1).all() and (stored["encoder"] == encoder).all()

    second = run(rows, day2)  # unchanged inputs: every encoding comes from the cache
    assert second[FROM_CACHE].all()
    np.testing.assert_allclose(second[t.STAGE2_SCORE], first[t.STAGE2_SCORE], atol=1e-7)
    assert (cache()[t.RUN_DATE] == day1).all()  # nothing rewritten

    # Proof the cached encoding is what scores: plant zeros under account 0's fingerprint.
    planted = read_table(spark, warehouse, t.EMBEDDING_CACHE).withColumn(
        ENCODING, F.when(F.col(t.ACCOUNT_ID) == 0, F.array_repeat(F.lit(0.0).cast("float"), TINY.seq_hidden))
        .otherwise(F.col(ENCODING)))
    write_table(planted.localCheckpoint(), warehouse, t.EMBEDDING_CACHE)
    third = run(rows, day2)
    row0 = rows[rows[t.ACCOUNT_ID] == 0]
    want0 = model.predict_from_encodings(np.zeros((1, TINY.seq_hidden), np.float32), row0)[0]
    assert third.loc[0, t.STAGE2_SCORE] == pytest.approx(want0, abs=1e-6)
    assert third.loc[0, t.STAGE2_SCORE] != pytest.approx(first.loc[0, t.STAGE2_SCORE], abs=1e-4)

    # A changed sequence (account 1 gets one more event) changes its fingerprint: re-encoded and refreshed.
    changed = rows.copy()
    i = changed.index[changed[t.ACCOUNT_ID] == 1][0]
    for col, extra in ((t.SEQ_EVENT_TYPE, 1), (t.SEQ_DT_BUCKET, 3), (t.SEQ_HOUR_SIN, 0.0), (t.SEQ_HOUR_COS, 1.0)):
        changed.at[i, col] = list(changed.at[i, col] or []) + [extra]
    day3 = dt.date(2026, 1, 12)
    # ... and its MERGE, beaten by another writer's commit once (a backfill's stage 2), is retried.
    attempts = merges_losing(monkeypatch, 1)
    fourth = run(changed, day3)
    assert len(attempts) == 2
    assert not fourth.loc[1, FROM_CACHE] and fourth.drop(index=1)[FROM_CACHE].all()
    want1 = model.predict(changed[changed[t.ACCOUNT_ID] == 1])[0]
    assert fourth.loc[1, t.STAGE2_SCORE] == pytest.approx(want1, abs=1e-6)
    after = cache()
    assert after.loc[1, FINGERPRINT] == fourth.loc[1, FINGERPRINT] != stored.loc[1, FINGERPRINT]
    assert after.loc[1, t.RUN_DATE] == day3 and (after.drop(index=1)[t.RUN_DATE] == day1).all()


# ---------------------------------------------------------------- inputs at many dates


def test_gather_sequences_at_equals_per_date_gather(spark):
    rng = np.random.default_rng(4)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for acct in range(1, 6):
        for _ in range(int(rng.integers(0, 30))):
            ts = base + dt.timedelta(seconds=int(rng.integers(0, 12 * 86400)))
            rows.append((acct, ts, t.EVENT_TYPES[int(rng.integers(0, 5))], "ip", "dev", ts.date()))
    events = spark.createDataFrame(rows, EVENTS_SCHEMA)
    dates = [dt.date(2026, 1, 4), dt.date(2026, 1, 9), dt.date(2026, 1, 12)]
    keys = spark.createDataFrame([(a, d) for a in range(1, 7) for d in dates if (a + d.day) % 3],
                                 f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date")
    got = {(r[t.ACCOUNT_ID], r[t.RUN_DATE]): r.asDict() for r in gather_sequences_at(events, keys, 7, 5).collect()}
    want = {}
    wanted = {(r[0], r[1]) for r in keys.collect()}
    for d in dates:
        for r in gather_sequences(events, d, 7, 5).collect():
            if (r[t.ACCOUNT_ID], d) in wanted:
                want[(r[t.ACCOUNT_ID], d)] = r.asDict()
    assert set(got) == set(want) and want
    for key, ref in want.items():
        for col, val in ref.items():
            assert got[key][col] == val, (key, col)


def test_heavy_inputs_read_only_the_event_days_their_dates_can_use(spark):
    day = dt.date(2026, 1, 20)
    at = [dt.datetime(2026, 1, 19, 8, tzinfo=dt.UTC), dt.datetime(2025, 11, 2, 8, tzinfo=dt.UTC)]
    events = spark.createDataFrame([(1, ts, "post", "ip", "dev", ts.date()) for ts in at], EVENTS_SCHEMA)
    # An old day that must never be read: reading it raises (the filter by the rows' dates alone
    # could only drop it after the scan and the join).
    old = F.col(t.EVENT_DATE) < F.lit(day - dt.timedelta(days=6))
    events = events.withColumn(t.EVENT_TYPE, F.when(old, F.raise_error(F.lit("an old partition was read")))
                               .otherwise(F.col(t.EVENT_TYPE)))
    edges = spark.createDataFrame([(1, 2, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))],
                                  f"{t.SRC} long, {t.DST} long, {t.CREATED_AT} timestamp")
    features = spark.createDataFrame([(1, day, 3.0), (2, day, 5.0)],
                                     f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date, x double")
    got = heavy_inputs(events, edges, features, features, ["x"], ["x"], max_len=4, lookback_days=7,
                       neighbor_k=3, neighbor_seed=0).orderBy(t.ACCOUNT_ID).collect()
    # Account 1's sequence is its one recent event; account 2 has none.
    assert [(r[t.ACCOUNT_ID], r[t.SEQ_EVENT_TYPE] and len(r[t.SEQ_EVENT_TYPE])) for r in got] == [(1, 1), (2, None)]


# ---------------------------------------------------------------- the whole cascade


@pytest.fixture(scope="module")
def cascade(spark, platform, tmp_path_factory):
    """The platform with the cascade trained at its last date. Its ~50 labelled training rows are
    too few for the heavy model to pass the gate reliably, so a refused heavy challenger is
    promoted by hand here (the gate itself is tested in test_training), then stage 1 is
    refreshed as its student and the flag threshold chosen for the pair."""
    pconf, dates = platform
    warehouse = copy_warehouse(warehouse_path(pconf), tmp_path_factory.mktemp("cascade") / "wh")
    cconf = pconf.with_overrides([f"warehouse={warehouse}", *CASCADE_TRAIN_SETTINGS])
    day = dates[-1]
    # Counted: the heavy model and stage 1 of one run date share one canary (TrainingContext).
    with mock.patch("botwatch.training.fit_canary", wraps=training.fit_canary) as canary_fit:
        summary = steps.train_step(spark, cconf, day)
    summary["canary_fits"] = canary_fit.call_count
    if not summary["heavy_promoted"]:
        registry.promote(spark, warehouse, "stage2_heavy", summary["heavy_version"], "promoted by the test")
    params = TrainParams.from_conf(cconf.section("train"))
    cparams, settings = CascadeParams.from_conf(cconf.section("cascade")), InferenceSettings.from_conf(
        cconf.section("cascade"))
    teacher = heavy_champion(spark, warehouse)
    targets = teacher_targets(spark, warehouse, teacher, cparams, settings)
    summary["distilled_rows"] = []  # the frames teacher_targets made (cached), to check they are released

    def recording(rows):
        summary["distilled_rows"].append(targets(rows))
        return summary["distilled_rows"][-1]

    student = train_stage1(spark, warehouse, day, params, teacher=recording, teacher_version=teacher.model_version)
    if not student.promoted:
        registry.promote(spark, warehouse, "stage1_xgb", student.version, "promoted by the test")
    flag = calibrate_flag_threshold(spark, warehouse, day, cparams, settings)
    return cconf, day, summary, targets, teacher, flag


def test_heavy_model_registered_with_family_metrics(spark, cascade):
    cconf, _, summary, *_ = cascade
    recs = registry.records(spark, warehouse_path(cconf), "stage2_heavy")
    assert [r[t.VERSION] for r in recs] == [summary["heavy_version"]]
    metrics = recs[0]["metrics"]
    assert {"golden_pr_auc", "canary_golden_pr_auc", "valid_pr_auc"} <= set(metrics)
    assert any(k.startswith("golden_family_") and k.endswith("_pr_auc") for k in metrics)
    assert summary["distilled_from"] is None  # no heavy champion existed when stage 1 trained first


def test_heavy_model_and_stage1_of_a_date_share_one_canary(spark, cascade):
    cconf, _, summary, *_ = cascade
    assert summary["canary_fits"] == 1
    # The distilled training and validation rows are released once stage 1 is fitted.
    assert len(summary["distilled_rows"]) == 2 and not any(f.is_cached for f in summary["distilled_rows"])
    wh = warehouse_path(cconf)
    heavy = registry.records(spark, wh, "stage2_heavy")[0]["metrics"]
    stage1 = next(r for r in registry.records(spark, wh, "stage1_xgb") if r[t.VERSION] == summary["version"])
    # Both gates compare against the same canary scores on the same golden rows.
    assert heavy["canary_golden_pr_auc"] == stage1["metrics"]["canary_golden_pr_auc"]
    assert heavy["golden_n"] == stage1["metrics"]["golden_n"] and heavy["n_train"] == stage1["metrics"]["n_train"]


def test_teacher_targets_blend_labels_with_in_process_heavy_scores(spark, cascade):
    cconf, day, _, targets, teacher, _ = cascade
    params = TrainParams.from_conf(cconf.section("train"))
    _, valid, _ = training_rows(spark, warehouse_path(cconf), day, params)
    got = targets(valid).toPandas()
    assert got[TEACHER_SCORE].notna().all()
    wl, wt = cconf["cascade.distill_label_weight"], cconf["cascade.distill_teacher_weight"]
    np.testing.assert_allclose(got[DISTILL_TARGET], (wl * got[t.LABEL] + wt * got[TEACHER_SCORE]) / (wl + wt))
    # The teacher's scores equal the heavy model's in-process scores of the same inputs, before the
    # calibration to the population's bot share: on the labels' scale, which they are blended with.
    model = teacher.load("cpu")
    assert model.calibration != (1.0, 0.0)
    inputs = artifact_inputs(spark, warehouse_path(cconf), valid.dropDuplicates([t.ACCOUNT_ID, t.RUN_DATE]),
                             teacher).toPandas()
    uncalibrated = dataclasses.replace(model, calibration=(1.0, 0.0))
    want = inputs.assign(s=uncalibrated.predict(inputs))[[t.ACCOUNT_ID, t.RUN_DATE, "s"]]
    both = got.merge(want, on=[t.ACCOUNT_ID, t.RUN_DATE])
    assert len(both) == len(got)
    np.testing.assert_allclose(both[TEACHER_SCORE], both["s"], atol=1e-6)
    # ... so they read like the labels: their mean is near the labelled rows' bot share, not the population's.
    assert abs(got[TEACHER_SCORE].mean() - got[t.LABEL].mean()) < 0.25 < got[t.LABEL].mean()
    stage1 = registry.champion(spark, warehouse_path(cconf), "stage1_xgb")
    assert stage1["metrics"]["distilled"] == 1.0


def test_teacher_scores_known_in_process_are_used_and_the_rest_scored_in_spark(spark, cascade):
    """A heavy model promoted in the same train step hands stage 1 the scores it computed in
    process: those rows keep them (here shifted by 0.25 to tell them apart), and rows it lacks are
    still scored through Spark, equal to the plain teacher's."""
    cconf, day, _, targets, teacher, _ = cascade
    params = TrainParams.from_conf(cconf.section("train"))
    _, valid, _ = training_rows(spark, warehouse_path(cconf), day, params)
    plain = targets(valid).toPandas().sort_values([t.ACCOUNT_ID, t.RUN_DATE]).reset_index(drop=True)
    shifted = plain[TEACHER_SCORE].iloc[::2] * 0.5 + 0.25
    known = plain.iloc[::2][[t.ACCOUNT_ID, t.RUN_DATE]].assign(**{TEACHER_SCORE: shifted})
    cparams, settings = CascadeParams.from_conf(cconf.section("cascade")), InferenceSettings.from_conf(
        cconf.section("cascade"))
    with mock.patch("botwatch.training_heavy.score_heavy", wraps=score_heavy) as spark_scoring:
        mixed = teacher_targets(spark, warehouse_path(cconf), teacher, cparams, settings, known)(valid).toPandas()
    assert spark_scoring.call_count == 1
    mixed = mixed.sort_values([t.ACCOUNT_ID, t.RUN_DATE]).reset_index(drop=True)
    assert len(mixed) == len(plain) > 2
    want = plain[TEACHER_SCORE].to_numpy().copy()
    want[::2] = shifted.to_numpy()
    np.testing.assert_allclose(mixed[TEACHER_SCORE], want, atol=1e-6)
    wl, wt = cconf["cascade.distill_label_weight"], cconf["cascade.distill_teacher_weight"]
    np.testing.assert_allclose(mixed[DISTILL_TARGET], (wl * mixed[t.LABEL] + wt * want) / (wl + wt), atol=1e-6)
    # Every row known: nothing is scored through Spark.
    every = plain[[t.ACCOUNT_ID, t.RUN_DATE, TEACHER_SCORE]]
    with mock.patch("botwatch.training_heavy.score_heavy", wraps=score_heavy) as spark_scoring:
        alone = teacher_targets(spark, warehouse_path(cconf), teacher, cparams, settings, every)(valid).toPandas()
    assert spark_scoring.call_count == 0
    alone = alone.sort_values([t.ACCOUNT_ID, t.RUN_DATE]).reset_index(drop=True)
    np.testing.assert_allclose(alone[TEACHER_SCORE], plain[TEACHER_SCORE], atol=1e-12)


def test_cascade_scores_flags_within_budget_and_reruns_identically(spark, cascade):
    cconf, day, _, _, _, flag = cascade
    warehouse = warehouse_path(cconf)
    assert flag["flag_threshold"] is not None and flag["flagged_share"] <= 0.10

    s1 = steps.score_stage1_step(spark, cconf, day)
    n = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(day)).count()
    first = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(day)).toPandas()
    assert len(first) == n and first["stage2_reached"].sum() == s1["n_flagged"] <= math.floor(0.10 * n)
    assert s1["n_flagged"] > 0
    s2 = steps.score_stage2_step(spark, cconf, day)
    after = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(day)).toPandas()
    assert {"account_id", "run_date", "stage1_score", "stage2_score", "score", "decision", "model_version",
            "stage2_reached", "reason_codes", "actioned", "holdout"} <= set(after.columns)
    assert len(after) == n
    reached = after["stage2_reached"]
    assert (reached == first.set_index(t.ACCOUNT_ID).loc[after[t.ACCOUNT_ID], "stage2_reached"].to_numpy()).all()
    assert after.loc[~reached, t.STAGE2_SCORE].isna().all() and after.loc[reached, t.STAGE2_SCORE].notna().all()
    np.testing.assert_allclose(after[t.SCORE], np.where(reached, after[t.STAGE2_SCORE], after[t.STAGE1_SCORE]))
    assert not (after["golden"] & after["actioned"]).any()
    assert s2["n_stage2"] == reached.sum() and s2["n_embedding_cache_hits"] == 0
    assert s2["worker_encoders"] == [s2["encoder"]]
    heavy = registry.champion(spark, warehouse, "stage2_heavy")
    assert after.loc[reached, t.MODEL_VERSION].str.endswith(f"+stage2_heavy:{heavy[t.VERSION]}").all()
    assert heavy["threshold"] is not None  # decided at it (a heavy model without one: the test below)
    acted = after.loc[reached, t.DECISION] == "action"
    assert (acted == (after.loc[reached, t.SCORE] >= heavy["threshold"])).all()

    again = steps.score_stage2_step(spark, cconf, day)  # rerun: same table, encodings from the cache
    rerun = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(day)).toPandas()
    a = after.sort_values(t.ACCOUNT_ID).reset_index(drop=True).drop(columns=["reason_codes"])
    b = rerun.sort_values(t.ACCOUNT_ID).reset_index(drop=True).drop(columns=["reason_codes"])
    pd.testing.assert_frame_equal(a, b)
    assert again["n_embedding_cache_hits"] == again["n_stage2"] == s2["n_stage2"]


def test_heavy_champion_without_threshold_leaves_decisions_to_stage_1(spark, cascade, tmp_path):
    # A heavy champion whose validation reached the target precision at no threshold cannot decide:
    # flagged accounts keep stage 1's decisions (and their stage-2 scores), never a blanket "none".
    cconf, day, _, _, _, _ = cascade
    warehouse = copy_warehouse(warehouse_path(cconf), tmp_path / "wh")
    conf = cconf.with_overrides([f"warehouse={warehouse}"])
    steps.score_stage1_step(spark, conf, day)
    registry_path = t.table_path(warehouse, t.MODEL_REGISTRY)
    DeltaTable.forPath(spark, registry_path).update(
        (F.col(t.MODEL_NAME) == "stage2_heavy") & (F.col(t.STAGE) == registry.CHAMPION),
        {"threshold": F.lit(None).cast("double")},
    )
    with pytest.warns(UserWarning, match="no operating threshold"):
        steps.score_stage2_step(spark, conf, day)
    after = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(day)).toPandas()
    stage1_threshold = registry.champion(spark, warehouse, "stage1_xgb")["threshold"]
    reached = after[after["stage2_reached"]]
    assert len(reached) > 0 and reached[t.STAGE2_SCORE].notna().all()
    np.testing.assert_allclose(reached[t.SCORE], reached[t.STAGE2_SCORE])
    s1 = reached[t.STAGE1_SCORE]
    want = np.where(s1 >= stage1_threshold, "action",
                    np.where(s1 >= stage1_threshold - cconf["scoring.review_band"], "review", "none"))
    assert (reached[t.DECISION].to_numpy() == want).all()
    assert (reached[t.DECISION] != "none").any()  # stage 1 acts on or reviews some of the flagged accounts


def test_scoring_refuses_missing_features_and_stale_or_missing_stage_1_scores(spark, cascade, tmp_path):
    # Stage 2 decides the accounts it does not see with the stage-1 champion's threshold: scores written by
    # another stage-1 model (train promoted one since), or none at all, must stop it, not publish nothing.
    cconf, day, _, _, _, _ = cascade
    warehouse = copy_warehouse(warehouse_path(cconf), tmp_path / "wh")
    conf = cconf.with_overrides([f"warehouse={warehouse}"])
    steps.score_stage1_step(spark, conf, day)
    champion = registry.champion(spark, warehouse, "stage1_xgb")[t.VERSION]
    scores = DeltaTable.forPath(spark, t.table_path(warehouse, t.SCORES))
    scores.update(F.col(t.RUN_DATE) == F.lit(day), {t.MODEL_VERSION: F.lit("stage1_xgb:0")})
    with pytest.raises(StaleStage1ScoresError, match=f"written by stage1_xgb:0, not by that date's stage-1 "
                                                     f"champion stage1_xgb:{champion}: rerun stage 1 first"):
        steps.score_stage2_step(spark, conf, day)
    scores.delete(F.col(t.RUN_DATE) == F.lit(day))
    with pytest.raises(StaleStage1ScoresError, match="written not at all"):
        steps.score_stage2_step(spark, conf, day)
    steps.score_stage1_step(spark, conf, day)
    first = steps.score_stage2_step(spark, conf, day)
    assert first["n_stage2"] > 0
    # D's features rebuilt without a flagged account since stage 1 ran: a rerun of stage 2 leaves it stage 1's
    # (it was decided at the heavy threshold on its stage-1 score, under the heavy model's name).
    steps.score_stage1_step(spark, conf, day)
    of_day = F.col(t.RUN_DATE) == F.lit(day)
    columns = [t.ACCOUNT_ID, t.SCORE, t.STAGE2_SCORE, t.DECISION, t.MODEL_VERSION]
    gone = scores.toDF().where(of_day & F.col("stage2_reached")).orderBy(t.ACCOUNT_ID).select(*columns).first()
    DeltaTable.forPath(spark, t.table_path(warehouse, t.FEATURES)).delete(
        of_day & (F.col(t.ACCOUNT_ID) == gone[t.ACCOUNT_ID]))
    assert steps.score_stage2_step(spark, conf, day)["n_stage2"] == first["n_stage2"] - 1
    row = of_day & (F.col(t.ACCOUNT_ID) == gone[t.ACCOUNT_ID])
    assert scores.toDF().where(row).select(*columns).first() == gone
    steps.score_stage2_step(spark, conf, day)  # a rerun of stage 2 alone reads the "+stage2_heavy:M" it wrote
    assert scores.toDF().where(row).select(*columns).first() == gone
    assert gone[t.STAGE2_SCORE] is None and "+" not in gone[t.MODEL_VERSION]
    # Stage 1 on a date without features stops, and leaves that date's scores as they were.
    DeltaTable.forPath(spark, t.table_path(warehouse, t.FEATURES)).delete(F.col(t.RUN_DATE) == F.lit(day))
    before = scores.toDF().where(F.col(t.RUN_DATE) == F.lit(day)).count()
    with pytest.raises(MissingFeaturesError, match=f"features has no partition {day}: build it first "
                                                   f"\\(`botwatch features --date {day}`\\)"):
        steps.score_stage1_step(spark, conf, day)
    assert before > 0 and scores.toDF().where(F.col(t.RUN_DATE) == F.lit(day)).count() == before


def test_stage_2_reads_the_events_of_the_day_validate_checked(spark, cascade, tmp_path):
    """Events of D landing after validate (a late load) reached stage 2's event sequences unchecked. It reads D's
    events as validate left them (as the activity and features steps do) and keys its run-log row on that
    version: the same inputs, so the same scores and every encoding from the cache."""
    from botwatch import nightly

    cconf, day, _, _, _, _ = cascade
    warehouse = copy_warehouse(warehouse_path(cconf), tmp_path / "wh")
    conf = cconf.with_overrides([f"warehouse={warehouse}"])
    checked = nightly.table_version(spark, warehouse, t.EVENTS)
    validated = nightly.log_row(day, "validate", nightly.STATUS_OK, {}, {"events_version": checked}, "test",
                                dt.datetime.now(dt.UTC))
    nightly.write_log(spark, warehouse, day, {"validate": validated})
    steps.score_stage1_step(spark, conf, day)
    first = steps.score_stage2_step(spark, conf, day)
    assert first["n_stage2"] > 0 and nightly.READ_VERSIONS not in first

    def stage2_scores() -> dict:
        of_day = (F.col(t.RUN_DATE) == F.lit(day)) & F.col("stage2_reached")
        return {r[0]: r[1] for r in read_table(spark, warehouse, t.SCORES).where(of_day).select(
            t.ACCOUNT_ID, t.STAGE2_SCORE).collect()}

    before = stage2_scores()
    # The late load: each flagged account's events of D once more, as logins.
    events = read_table(spark, warehouse, t.EVENTS)
    late = events.where((F.col(t.EVENT_DATE) == F.lit(day)) & F.col(t.ACCOUNT_ID).isin(*before)).withColumn(
        t.EVENT_TYPE, F.lit("login"))
    assert late.count() > 0
    write_table(late, warehouse, t.EVENTS, mode="append")

    again = steps.score_stage2_step(spark, conf, day)
    assert again[nightly.READ_VERSIONS] == {t.EVENTS: checked}
    assert again["n_embedding_cache_hits"] == again["n_stage2"] == first["n_stage2"]
    assert stage2_scores() == before
    # Read as they are now, the late events change the sequences: the check above could fail.
    nightly.write_log(spark, warehouse, day, {})
    latest = steps.score_stage2_step(spark, conf, day)
    assert nightly.READ_VERSIONS not in latest and latest["n_embedding_cache_hits"] < latest["n_stage2"]


def test_a_rerun_of_an_earlier_date_never_learns_from_a_later_heavy_champion(spark, cascade, monkeypatch):
    """Retraining a date before the heavy champion's: stage 1 is distilled from the heavy champion of that
    date (none here), never from one whose training rows hold labels observed after it; and no flag
    threshold is chosen for champions that did not exist then. The run's own date keeps its teacher."""
    cconf, day, _, _, teacher, _ = cascade
    warehouse = warehouse_path(cconf)
    earlier = day - dt.timedelta(days=1)
    teachers: dict = {}
    calibrated: list = []

    def stage1(spark_, warehouse_, run_date, params, teacher=None, teacher_version=None, context=None):
        teachers[run_date] = teacher_version
        return "stage 1's result"

    def calibrate(spark_, warehouse_, run_date, params, settings):
        calibrated.append(run_date)
        return {}

    refused = HeavyTrainResult(version=99, promoted=False, reason="stub", metrics={}, threshold=None)
    monkeypatch.setattr(training_heavy, "prepare_training", lambda *a, **k: mock.Mock())
    monkeypatch.setattr(training_heavy, "train_heavy_stage", lambda *a, **k: refused)
    monkeypatch.setattr(training_heavy, "train_stage1", stage1)
    monkeypatch.setattr(training_heavy, "calibrate_flag_threshold", calibrate)
    params = TrainParams.from_conf(cconf.section("train"))
    for run_date in (earlier, day):
        train_cascade(spark, warehouse, run_date, params, cconf.section("heavy"), cconf.section("cascade"))
    assert teachers == {earlier: None, day: teacher.model_version}
    assert calibrated == [earlier, day]
    # The real threshold choice for the earlier date: no heavy champion then, so nothing is chosen or recorded.
    cparams, settings = CascadeParams.from_conf(cconf.section("cascade")), InferenceSettings.from_conf(
        cconf.section("cascade"))
    monkeypatch.undo()
    assert calibrate_flag_threshold(spark, warehouse, earlier, cparams, settings) == {
        "flag_threshold": None, "note": "no heavy champion: stage 2 is off"}


def test_a_rerun_after_the_heavy_model_was_trained_on_d_does_not_train_it_again(spark, cascade, monkeypatch):
    """A train step that failed after the heavy model of D was decided (in stage 1, or choosing the threshold)
    is rerun: the heavy model is not trained again (a copy could replace D's promoted one at a tie), stage 1
    learns from D's heavy champion and the threshold is chosen. ``max_champion_age_days=0`` retrains it."""
    cconf, day, summary, _, teacher, _ = cascade
    warehouse = warehouse_path(cconf)
    heavy_trained: list = []
    teachers: list = []
    calibrated: list = []
    monkeypatch.setattr(training_heavy, "prepare_training", lambda *a, **k: mock.Mock())
    monkeypatch.setattr(training_heavy, "train_heavy_stage", lambda *a, **k: heavy_trained.append(a[2]) or
                        HeavyTrainResult(version=99, promoted=False, reason="stub", metrics={}, threshold=None))
    monkeypatch.setattr(training_heavy, "train_stage1", lambda *a, teacher_version=None, **k: teachers.append(
        teacher_version) or "stage 1's result")
    monkeypatch.setattr(training_heavy, "calibrate_flag_threshold", lambda s, w, d, *a: calibrated.append(d) or {})
    params = TrainParams.from_conf(cconf.section("train"))
    heavy, cascade_section = cconf.section("heavy"), cconf.section("cascade")

    _, out = train_cascade(spark, warehouse, day, params, heavy, cascade_section)
    assert heavy_trained == []
    assert out["heavy_version"] == summary["heavy_version"] and out["heavy_promoted"] is True
    assert out["heavy_reason"].startswith(f"already trained on {day}")
    assert teachers == [teacher.model_version] and calibrated == [day]

    train_cascade(spark, warehouse, day, dataclasses.replace(params, max_champion_age_days=0), heavy, cascade_section)
    assert heavy_trained == [day]


def test_a_night_that_trains_nothing_chooses_a_missing_flag_threshold(spark, cascade, monkeypatch):
    """A training that promoted a model and stopped before choosing the flag threshold left the champions
    without one: the next train step, which retrains nothing, chooses it; with one there it does nothing."""
    cconf, day, *_ = cascade
    calibrated: list = []
    monkeypatch.setattr(training_heavy, "calibrate_flag_threshold",
                        lambda s, w, d, *a: calibrated.append(d) or {"flag_threshold": 0.5})
    kept = steps.train_step(spark, cconf, day)
    assert kept["trained"] is False and calibrated == [] and "recalibrated" not in kept
    # The operator raises the budget (as the binding-budget warning says) or the share kept: the stored
    # choice was made for other knobs, so it is chosen again rather than flagging at the old budget for a week.
    budget = cconf.section("cascade")["budget"]
    for knob, value in (("budget", min(1.0, budget * 3)), ("keep_share", 0.5)):
        raised = steps.train_step(spark, cconf.with_overrides([f"cascade.{knob}={value}"]), day)
        assert raised["trained"] is False and calibrated == [day], knob
        assert knob in raised["recalibrated"], raised["recalibrated"]
        calibrated.clear()
    monkeypatch.setattr(training_heavy, "stored_choices", lambda path: None)  # cascade.json never written
    again = steps.train_step(spark, cconf, day)
    assert again["trained"] is False and calibrated == [day]
    assert again["flag_threshold"] == 0.5 and again["recalibrated"]


def test_no_heavy_champion_retrains_unless_the_heavy_model_of_d_was_refused(spark, cascade, monkeypatch):
    """The refresh policy's "no champion" holds for the heavy model too (stage 2 is off without one): the
    night after a refused heavy challenger retrains although stage 1's champion is fresh; a rerun of the
    date whose heavy challenger was refused does not."""
    cconf, day, *_ = cascade
    warehouse = warehouse_path(cconf)
    params = TrainParams.from_conf(cconf.section("train"))
    next_day = day + dt.timedelta(days=1)
    assert training_heavy.cascade_refresh_decision(spark, warehouse, next_day, params)[0] is False
    monkeypatch.setattr(training_heavy, "heavy_champion_status", lambda *a, **k: (None, None))
    assert training_heavy.cascade_refresh_decision(spark, warehouse, next_day, params) == (
        True, "no heavy champion yet: stage 2 is off until one is promoted")
    retrain, why = training_heavy.cascade_refresh_decision(spark, warehouse, day, params)
    assert retrain is False and "no heavy champion, and the heavy model of" in why


def test_a_heavy_champion_this_code_cannot_load_is_no_champion_and_is_replaced(spark, cascade, tmp_path,
                                                                               monkeypatch):
    """A release that changes the heavy model's format or event types: the champion could not be loaded, and
    the gate loaded it to compare, so the train step failed every night, the model that would replace it
    included. It now counts as no champion (stage 2 off, warned; the refresh policy retrains), and the next
    heavy model goes through the gate without a comparison with it, its reason saying so."""
    cconf, day, *_ = cascade
    warehouse = copy_warehouse(warehouse_path(cconf), tmp_path / "wh")
    old = registry.champion(spark, warehouse, HEAVY_MODEL)
    folder = Path(registry.artifact_dir(warehouse, HEAVY_MODEL, 99))
    shutil.copytree(old["artifact_path"], folder)
    meta = json.loads((folder / META_FILE).read_text())
    meta["event_types"] = meta["event_types"][:-1]  # trained before a release added an event type
    (folder / META_FILE).write_text(json.dumps(meta))
    registry.upsert(spark, warehouse, registry.ModelRecord(HEAVY_MODEL, 99, registry.CHALLENGER, day,
                                                           artifact_path=str(folder), threshold=old["threshold"]))
    registry.promote(spark, warehouse, HEAVY_MODEL, 99, "promoted by the test")
    with pytest.warns(UserWarning, match=r"heavy champion stage2_heavy:99 \(.*\) cannot be loaded by this code: "
                                         r"trained on event types"):
        assert heavy_champion(spark, warehouse) is None
    params = TrainParams.from_conf(cconf.section("train"))
    # The reason names the champion the registry shows, not "no heavy champion yet".
    assert training_heavy.cascade_refresh_decision(spark, warehouse, day + dt.timedelta(days=1), params) == (
        True, "the heavy champion (stage2_heavy:99) cannot be loaded by this code (trained on event types "
        f"{meta['event_types']}, this code has {list(t.EVENT_TYPES)}): stage 2 is off until one trained by this "
        "code is promoted")
    with pytest.raises(H.HeavyArtifactError, match=r"^stage2_heavy:99 \(.*/99\): trained on event types"):
        HeavyArtifact.from_record(registry.champion(spark, warehouse, HEAVY_MODEL)).load("cpu")
    result = training_heavy.train_heavy_stage(spark, warehouse, day, params, cconf.section("heavy"))
    assert ("(the champion, stage2_heavy:99, was not compared: this code cannot load it: trained on event types"
            in result.reason)
    assert "champion_golden_pr_auc" not in result.metrics
    assert registry.records(spark, warehouse, HEAVY_MODEL)[-1]["reason"] == result.reason
    # A model that reached no threshold is not refused for the unloadable champion's threshold either: it
    # meets the rest of the gate (here the canary, which the model above did not beat either).
    assert not result.promoted and registry.champion(spark, warehouse, HEAVY_MODEL)[t.VERSION] == 99
    evaluate = training_heavy.operating_point
    monkeypatch.setattr(training_heavy, "operating_point", lambda *a, **k: (None, evaluate(*a, **k)[1]))
    again = training_heavy.train_heavy_stage(spark, warehouse, day, params, cconf.section("heavy"))
    assert again.threshold is None and again.reason.startswith("golden PR-AUC") and "does not beat the canary" in \
        again.reason and "was not compared: this code cannot load it" in again.reason, again.reason
