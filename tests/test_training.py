"""Training and evaluation on a small simulated platform: the gate, thresholds, determinism,
and the XGBoost stage against the canary. Metrics are recomputed here with scikit-learn."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading

import numpy as np
import pandas as pd
import pytest
from helpers import copy_warehouse
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.special import expit
from sklearn.metrics import average_precision_score, precision_score

from botwatch import registry, steps, training
from botwatch import tables as t
from botwatch.config import ConfigError, warehouse_path
from botwatch.delta_io import read_table, write_table
from botwatch.models.stage1 import PlattCalibration, as_model_input, predict_margin
from botwatch.monitoring.run import METRICS_SCHEMA
from botwatch.training import (
    STAGE1_MODEL,
    NotEnoughLabelsError,
    TrainParams,
    population_prevalence,
    prepare_training,
    refresh_decision,
    train_stage1,
    training_rows,
)


@pytest.fixture(scope="module")
def trained(spark, platform, tmp_path_factory):
    """A copy of the platform with one trained stage-1 model, and its result."""
    pconf, dates = platform
    warehouse = copy_warehouse(warehouse_path(pconf), tmp_path_factory.mktemp("trained") / "wh")
    tconf = pconf.with_overrides([f"warehouse={warehouse}"])
    run_date = dates[-1]
    result = train_stage1(spark, warehouse, run_date, TrainParams.from_conf(tconf.section("train")))
    return tconf, run_date, result


def test_xgboost_beats_canary_on_golden_set(trained):
    _, _, result = trained
    assert result.promoted, result.reason
    assert result.metrics["golden_pr_auc"] > result.metrics["canary_golden_pr_auc"]


def _artifacts(spark, warehouse, version):
    rec = next(r for r in registry.records(spark, warehouse, STAGE1_MODEL) if r[t.VERSION] == version)
    art = rec["artifact_path"]
    cal = registry.read_artifact(art, "calibration.json")
    return (
        registry.read_artifact(art, "model.json", binary=True),
        registry.read_artifact(art, "features.json")["features"],
        PlattCalibration(cal["a"], cal["b"]),
        rec,
    )


def test_training_waits_without_validation_labels(spark, monkeypatch):
    # 60 labelled training rows, but the validation window holds none: a clear wait, not an XGBoost crash.
    schema = f"{t.ACCOUNT_ID} long, {t.LABEL} int, {t.WEIGHT} double, n_events_7d double"
    train = spark.createDataFrame([(i, int(i % 4 == 0), 1.0, float(i)) for i in range(60)], schema)
    empty = spark.createDataFrame([], schema)
    monkeypatch.setattr(training, "training_rows", lambda *_: (train, empty, empty))
    with pytest.raises(NotEnoughLabelsError, match="0 labelled validation rows .* train.valid_days"):
        prepare_training(spark, "/nonexistent", dt.date(2026, 3, 10), TrainParams(label_weights={"investigator": 1.0}))
    # 60 rows with 58 bots: train.min_positives (5) holds for humans as well as bots.
    lopsided = spark.createDataFrame([(i, int(i >= 2), 1.0, float(i)) for i in range(60)], schema)
    monkeypatch.setattr(training, "training_rows", lambda *_: (lopsided, lopsided, empty))
    with pytest.raises(NotEnoughLabelsError, match="60 training rows with 58 bots and 2 humans"):
        prepare_training(spark, "/nonexistent", dt.date(2026, 3, 10), TrainParams(label_weights={"investigator": 1.0}))


def test_a_misnamed_canary_feature_stops_training_instead_of_weakening_the_gate(spark, monkeypatch):
    schema = f"{t.ACCOUNT_ID} long, {t.LABEL} int, {t.WEIGHT} double, n_events_7d double"
    rows = spark.createDataFrame([(i, int(i % 4 == 0), 1.0, float(i)) for i in range(60)], schema)
    monkeypatch.setattr(training, "training_rows", lambda *_: (rows, rows, rows))
    for names, match in ((["n_events_7d", "n_events_7dd"], r"lacks: \['n_events_7dd'\]; fix or drop"),
                         ([], "canary_features is empty")):
        with pytest.raises(ConfigError, match=match):
            prepare_training(spark, "/nonexistent", dt.date(2026, 3, 10),
                             TrainParams(label_weights={"investigator": 1.0}, canary_features=names))
    for bad in (0.0, 1.0, "often", None):
        with pytest.raises(ConfigError, match="train.prevalence_fallback must be"):
            TrainParams(label_weights={}, prevalence_fallback=bad)
    with pytest.raises(ConfigError, match="train.prevalence_max_rse must be"):
        TrainParams(label_weights={}, prevalence_max_rse=0)


@pytest.mark.parametrize(("knob", "bad", "rule", "xgboost_refuses"), [
    ("subsample", 1.5, "in (0, 1]", True), ("colsample_bytree", 1.5, "in (0, 1]", True),
    ("max_depth", -1, ">= 0", True), ("min_child_weight", -1.0, ">= 0", True), ("reg_lambda", -0.5, ">= 0", True),
    ("learning_rate", -0.1, "> 0", True),
    # Accepted by XGBoost, but no rows sampled, no learning, no rounds or no worker trains nothing.
    ("subsample", 0.0, "in (0, 1]", False), ("learning_rate", 0.0, "> 0", False),
    ("n_estimators", 0, "at least 1", False), ("early_stopping_rounds", 0, "at least 1", False),
    ("num_workers", 0, "at least 1", False),
])
def test_xgboost_knobs_that_cannot_train_are_conf_errors(knob, bad, rule, xgboost_refuses):
    """Refused where the conf is read (at every command's start), not by XGBoost after a night's features."""
    import re

    import xgboost as xgb

    from botwatch.models.stage1 import XGBParams

    says = re.escape(f"train.xgb.{knob} must be {rule}, got {bad}")
    with pytest.raises(ConfigError, match=says):
        XGBParams(**{knob: bad})
    with pytest.raises(ConfigError, match=says):
        TrainParams.from_conf({"label_weights": {}, "xgb": {knob: bad}})
    rows = xgb.DMatrix(np.array([[0.0], [1.0], [2.0], [3.0]]), label=[0, 1, 0, 1])
    if xgboost_refuses:  # the reference: XGBoost's own bounds
        with pytest.raises(xgb.core.XGBoostError, match=f"Parameter {knob}"):
            xgb.train({knob: bad}, rows, 2)
    XGBParams(**{knob: 1})  # the bounds' own side


@pytest.mark.parametrize("n", [2, 3, 5])
def test_partition_keys_put_rows_on_the_chosen_partition(spark, n):
    from botwatch.models.stage1 import partition_keys

    keys = partition_keys(spark, n)
    rows = spark.createDataFrame([(k, p) for p, k in enumerate(keys)], "k int, p int").repartition(n, "k")
    assert sorted(map(tuple, rows.select("p", F.spark_partition_id()).collect())) == [(p, p) for p in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_every_xgboost_worker_gets_validation_rows(spark, seed):
    """As many validation rows as workers: dealt one each. At random two shared a worker for some
    seeds, and xgboost.spark failed there (KeyError 'values' on the worker without any)."""
    from botwatch.models.stage1 import XGBParams, fit_booster

    rng = np.random.default_rng(seed)
    rows = [(i, int(i % 3 == 0), 1.0, float(rng.normal() + 2 * (i % 3 == 0))) for i in range(62)]
    schema = f"{t.ACCOUNT_ID} long, {t.LABEL} int, {t.WEIGHT} double, x double"
    train, valid = spark.createDataFrame(rows[:60], schema), spark.createDataFrame(rows[60:], schema)
    booster = fit_booster(train, valid, ["x"], XGBParams(n_estimators=5, num_workers=2, seed=seed))
    assert booster.num_boosted_rounds() >= 1


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (16, 0), (16, 1)])
def test_every_xgboost_worker_gets_training_rows(spark, n, seed):
    """n + 4 training rows for n workers: each worker gets training and validation rows, every row
    once. Dealt at random (``floor(rand * n)``), 20 rows missed some of 16 workers nearly always
    (xgboost.spark then fails on that worker); too few rows for the workers is a named error."""
    from botwatch.models.stage1 import _WORKER, VALIDATION_FLAG, TooFewTrainingRowsError, deal_to_workers

    schema = f"{t.ACCOUNT_ID} long, {t.LABEL} int, {t.WEIGHT} double, x double"
    rows = [(i, i % 2, 1.0, float(i % 5)) for i in range(2 * n + 4)]
    train, valid = spark.createDataFrame(rows[:n + 4], schema), spark.createDataFrame(rows[n + 4:], schema)
    dealt = deal_to_workers(train, valid, n, seed).toPandas()
    assert sorted(dealt[t.ACCOUNT_ID]) == list(range(2 * n + 4))
    for is_valid in (False, True):
        assert set(dealt.loc[dealt[VALIDATION_FLAG] == is_valid, _WORKER]) == set(range(n))
    with pytest.raises(TooFewTrainingRowsError, match=f"{n + 4} distinct training rows for {n + 5} XGBoost workers"):
        deal_to_workers(train, valid, n + 5, seed)


def test_gate_never_swaps_a_champion_that_can_act_for_one_that_cannot():
    gate = registry.promotion_decision
    day = dt.date(2026, 3, 10)
    acting = {t.VERSION: 1, t.RUN_DATE: day, "threshold": 0.6}  # the champion's registry record
    # Better on the golden set, but no validation threshold reached the target precision.
    refused = gate(0.9, 0.5, 0.8, 0.01, challenger_threshold=None, champion=acting, run_date=day)
    assert not refused.promote and "no operating threshold" in refused.reason
    assert gate(0.9, 0.5, 0.8, 0.01, challenger_threshold=0.7, champion=acting, run_date=day).promote
    # With no champion that acts (or none at all), a model without a threshold may still be promoted.
    assert gate(0.9, 0.5, None, 0.01, challenger_threshold=None, champion=None, run_date=day).promote
    assert gate(0.9, 0.5, 0.8, 0.01, challenger_threshold=None, champion={**acting, "threshold": None}).promote
    assert not gate(0.7, 0.5, 0.8, 0.01, challenger_threshold=0.7, champion=acting, run_date=day).promote  # worse
    # Against a champion of another golden split: its PR-AUC is on the rows it never trained on, and so is ours.
    worse = gate(0.9, 0.5, 0.8, 0.01, challenger_threshold=0.7, champion=acting, challenger_vs_champion=0.7)
    assert not worse.promote and "never trained on" in worse.reason
    assert gate(0.7, 0.5, 0.8, 0.01, challenger_threshold=0.7, champion=acting, challenger_vs_champion=0.8).promote
    # A small golden set the canary separates perfectly: a perfect challenger is not worse, it passes.
    assert gate(1.0, 1.0, None, 0.01, challenger_threshold=0.9).promote
    tied = gate(0.8, 0.8, None, 0.01, challenger_threshold=0.9)
    assert not tied.promote and "does not beat the canary" in tied.reason


def test_promotion_swaps_champions_in_one_commit(spark, tmp_path):
    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    for version, stage in ((1, registry.RETIRED), (2, registry.CHAMPION), (3, registry.CHALLENGER)):
        registry.upsert(spark, wh, registry.ModelRecord("m", version, stage, day, artifact_path="-", threshold=0.5))
    registry.upsert(spark, wh, registry.ModelRecord("other", 1, registry.CHAMPION, day, artifact_path="-"))
    path = t.table_path(wh, t.MODEL_REGISTRY)
    before = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()
    registry.promote(spark, wh, "m", 3, "passed the gate")
    assert spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count() == before + 1
    got = {(r["model_name"], r[t.VERSION]): (r[t.STAGE], r["reason"]) for r in registry.records(spark, wh)}
    assert got[("m", 3)] == (registry.CHAMPION, "passed the gate")
    assert got[("m", 2)] == (registry.RETIRED, "replaced by version 3")
    assert got[("m", 1)][0] == registry.RETIRED and got[("other", 1)][0] == registry.CHAMPION
    assert registry.champion(spark, wh, "m")[t.VERSION] == 3
    with pytest.raises(ValueError, match="no version 9"):
        registry.promote(spark, wh, "m", 9, "a typo")
    assert registry.champion(spark, wh, "m")[t.VERSION] == 3


def test_a_promotion_never_replaces_a_champion_it_was_not_compared_with(spark, tmp_path, monkeypatch):
    from delta.exceptions import ConcurrentAppendException, ConcurrentDeleteReadException
    from delta.tables import DeltaTable

    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    record = lambda v: registry.ModelRecord("m", v, registry.CHALLENGER, day, artifact_path=f"a{v}")  # noqa: E731
    passed = registry.PromotionDecision(True, "passed the gate")
    registry.upsert(spark, wh, dataclasses.replace(record(1), stage=registry.CHAMPION))
    v1 = registry.champion(spark, wh, "m")

    def stages() -> dict:
        return {r[t.VERSION]: (r[t.STAGE], r["reason"]) for r in registry.records(spark, wh, "m")}

    # Two runs gated their challengers against v1; v2 is promoted first, so v3 (never compared with v2)
    # is not: it stays a challenger with the reason recorded.
    assert registry.register(spark, wh, record(2), passed, compared_with=v1) == passed
    late = registry.register(spark, wh, record(3), passed, compared_with=v1)
    assert not late.promote and "version 2 is the champion since" in late.reason and "rerun the training" in late.reason
    assert stages() == {1: (registry.RETIRED, "replaced by version 2"), 2: (registry.CHAMPION, "passed the gate"),
                        3: (registry.CHALLENGER, late.reason)}
    refused = registry.PromotionDecision(False, "worse than the champion")
    assert registry.register(spark, wh, record(4), refused, compared_with=v1) == refused
    assert stages()[4] == (registry.CHALLENGER, "worse than the champion")

    # A promotion whose commit loses to another run's is retried after reading the champion again:
    # the winner here recorded another model, so the promotion goes through.
    real_update, lost = DeltaTable.update, []

    def losing_update(self, *args, **kwargs):
        if not lost:
            lost.append("other model recorded")
            registry.upsert(spark, wh, registry.ModelRecord("other", 1, registry.CHAMPION, day))
            raise ConcurrentAppendException("injected: another run committed first")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "update", losing_update)
    v2 = registry.champion(spark, wh, "m")
    assert registry.register(spark, wh, record(5), passed, compared_with=v2) == passed
    assert lost and registry.champion(spark, wh, "m")[t.VERSION] == 5
    # ... and when the winner promoted another version (a rollback by hand), it is left champion.
    lost.clear()

    def rollback_first(self, *args, **kwargs):
        if not lost:
            lost.append("rollback")
            registry.promote(spark, wh, "m", 2, "rolled back by hand")  # the real update: lost is set
            raise ConcurrentDeleteReadException("injected: another run committed first")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "update", rollback_first)
    v5 = registry.champion(spark, wh, "m")
    assert not registry.register(spark, wh, record(6), passed, compared_with=v5).promote
    assert stages()[2] == (registry.CHAMPION, "rolled back by hand") and stages()[6][0] == registry.CHALLENGER
    assert stages()[5] == (registry.RETIRED, "replaced by version 2")

    # A promotion that keeps losing leaves the gate pass pending, which does not count as D's finished
    # training: the rerun the error asks for trains again instead of skipping to "already trained on D".
    def update_always_losing(self, *args, **kwargs):
        raise ConcurrentAppendException("injected")

    monkeypatch.setattr(DeltaTable, "update", update_always_losing)
    with pytest.raises(registry.RegistryConflictError, match="promoting version 8 of 'm'.*rerun the training"):
        registry.register(spark, wh, record(8), passed, compared_with=registry.champion(spark, wh, "m"))
    assert stages()[8] == (registry.CHALLENGER, registry.PROMOTION_PENDING)
    assert registry.trained_on(spark, wh, "m", day)[t.VERSION] == 5  # the latest decided one, not 8

    # Recording a version is retried the same way; a registry that keeps losing says what to do.
    calls = []

    def always_losing(*_args, **_kwargs):
        calls.append(1)
        raise ConcurrentAppendException("injected")

    monkeypatch.setattr(registry, "_merge_record", always_losing)
    with pytest.raises(registry.RegistryConflictError, match="recording version 7 of 'm'.*rerun the training"):
        registry.upsert(spark, wh, record(7), attempts=3)
    assert len(calls) == 3 and 7 not in stages()


def test_a_promotion_committed_while_the_champion_is_read_is_seen(spark, tmp_path, monkeypatch):
    """Run B reads the registry (v1 champion); run A's promotion of v3 commits before B's update starts.
    Delta sees no conflict (B's update reads the newer snapshot), so B would retire v3 for a model only
    ever compared with v1: B reads again instead, and refuses."""
    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    for version, stage in ((1, registry.CHAMPION), (2, registry.CHALLENGER), (3, registry.CHALLENGER)):
        registry.upsert(spark, wh, registry.ModelRecord("m", version, stage, day, artifact_path=f"a{version}"))
    real_records, raced = registry.records, []

    def records_then_a_promotion(*args, **kwargs):
        rows = real_records(*args, **kwargs)
        if not raced:
            raced.append(True)
            assert registry.promote(spark, wh, "m", 3, "run A", expected_champion=1)
        return rows  # what B read: v1 still the champion

    monkeypatch.setattr(registry, "records", records_then_a_promotion)
    assert registry.promote(spark, wh, "m", 2, "run B", expected_champion=1) is False
    monkeypatch.undo()
    assert {r[t.VERSION]: r[t.STAGE] for r in registry.records(spark, wh, "m")} == {
        1: registry.RETIRED, 2: registry.CHALLENGER, 3: registry.CHAMPION}


def test_reserved_versions_are_never_shared(spark, tmp_path, monkeypatch):
    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)

    def reserve_at_once(n: int) -> list[int]:
        found: list[int] = []
        runs = [threading.Thread(target=lambda: found.append(registry.reserve_version(spark, wh, "m", day)))
                for _ in range(n)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        return sorted(found)

    # Runs registering at the same moment each get their own number, the first ones creating the table.
    assert reserve_at_once(2) == [1, 2]
    registry.upsert(spark, wh, registry.ModelRecord("m", 1, registry.CHAMPION, day, artifact_path="a1"))
    assert reserve_at_once(2) == [3, 4]
    # A run that read the versions before v3 was registered tries 3 again: it gets 5, and v1..v4 stay.
    stale = iter([3, 5])
    monkeypatch.setattr(registry, "next_version", lambda *_: next(stale))
    assert registry.reserve_version(spark, wh, "m", day) == 5
    got = {r[t.VERSION]: (r[t.STAGE], r["artifact_path"]) for r in registry.records(spark, wh, "m")}
    assert got == {1: (registry.CHAMPION, "a1"), **{v: (registry.CHALLENGER, "") for v in (2, 3, 4, 5)}}
    monkeypatch.setattr(registry, "next_version", lambda *_: 1)
    with pytest.raises(registry.RegistryConflictError, match="rerun the training"):
        registry.reserve_version(spark, wh, "m", day, attempts=2)


def test_champion_as_of_a_date_is_the_one_promoted_by_then(spark, tmp_path):
    wh, d = str(tmp_path / "wh"), dt.date(2026, 1, 1)
    history = [(1, 4, registry.RETIRED), (2, 7, registry.RETIRED), (3, 9, registry.CHALLENGER),
               (4, 11, registry.CHAMPION), (5, 11, registry.CHALLENGER)]  # (version, trained on day, stage)
    for version, day, stage in history:
        registry.upsert(spark, wh, registry.ModelRecord("m", version, stage, d + dt.timedelta(days=day),
                                                        artifact_path="-"))
    as_of = {day: registry.champion(spark, wh, "m", as_of=d + dt.timedelta(days=day)) for day in range(2, 14)}
    # Never a challenger (v3, v5), never a model trained after the date.
    want = {2: None, 3: None, 4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 2, 11: 4, 12: 4, 13: 4}
    assert {day: r and r[t.VERSION] for day, r in as_of.items()} == want
    assert registry.champion(spark, wh, "m")[t.VERSION] == 4
    # A rerun of an earlier date never replaces the newer champion, however good its model.
    current = registry.champion(spark, wh, "m")
    assert registry.newer_champion(current, d + dt.timedelta(days=11)) is None
    newer = registry.newer_champion(current, d + dt.timedelta(days=8))
    assert newer == "version 4, trained on 2026-01-12"
    refused = registry.promotion_decision(0.99, 0.5, 0.5, 0.01, challenger_threshold=0.5, champion=current,
                                          run_date=d + dt.timedelta(days=8))
    assert not refused.promote and "trained after this run's date" in refused.reason
    # A rollback by hand (v1 promoted again) serves every date from v1's training on.
    registry.promote(spark, wh, "m", 1, "rollback")
    got = {day: registry.champion(spark, wh, "m", as_of=d + dt.timedelta(days=day)) for day in (3, 4, 8, 13)}
    assert {day: r and r[t.VERSION] for day, r in got.items()} == {3: None, 4: 1, 8: 1, 13: 1}
    # And keeps serving them after a later promotion: the versions it rolled back (v4, v2) never score again.
    registry.upsert(spark, wh, registry.ModelRecord("m", 6, registry.CHALLENGER, d + dt.timedelta(days=15),
                                                    artifact_path="-"))
    registry.promote(spark, wh, "m", 6, "passed the gate")
    got = {day: registry.champion(spark, wh, "m", as_of=d + dt.timedelta(days=day)) for day in (3, 4, 8, 13, 15)}
    assert {day: r and r[t.VERSION] for day, r in got.items()} == {3: None, 4: 1, 8: 1, 13: 1, 15: 6}


def test_a_registry_from_before_promotion_times_takes_them_and_orders_rollbacks_by_them(spark, tmp_path):
    """A registry written before ``promoted_at`` existed gets the column at its first promotion; its
    old versions count as promoted first, in training order."""
    wh, d = str(tmp_path / "wh"), dt.date(2026, 1, 1)
    old_schema = T.StructType([f for f in registry.REGISTRY_SCHEMA.fields if f.name != registry.PROMOTED_AT])
    old_rows = [registry.ModelRecord("m", v, stage, d + dt.timedelta(days=day), artifact_path="-").row()[:-1]
                for v, day, stage in [(1, 1, registry.RETIRED), (2, 3, registry.RETIRED), (3, 5, registry.CHAMPION)]]
    write_table(spark.createDataFrame(old_rows, old_schema), wh, t.MODEL_REGISTRY, mode="overwrite")
    assert registry.champion(spark, wh, "m", as_of=d + dt.timedelta(days=4))[t.VERSION] == 2
    registry.promote(spark, wh, "m", 2, "rollback")  # v3 was bad
    registry.upsert(spark, wh, registry.ModelRecord("m", 4, registry.CHALLENGER, d + dt.timedelta(days=8),
                                                    artifact_path="-"))
    registry.promote(spark, wh, "m", 4, "passed the gate")
    got = {day: registry.champion(spark, wh, "m", as_of=d + dt.timedelta(days=day)) for day in (1, 2, 3, 5, 7, 8)}
    assert {day: r and r[t.VERSION] for day, r in got.items()} == {1: 1, 2: 1, 3: 2, 5: 2, 7: 2, 8: 4}
    promoted = {r[t.VERSION]: r[registry.PROMOTED_AT] for r in registry.records(spark, wh, "m")}
    # v3, champion when the column came, got a time just before v2's at the rollback that retired it.
    assert promoted[1] is None and promoted[3] < promoted[2] < promoted[4]
    # A rollback made before the column existed (v3 rolled back to v1) holds after the next promotion too:
    # the champion it retires was promoted after every other version.
    rolled_back = str(tmp_path / "rolled_back")
    old_rows = [registry.ModelRecord("m", v, stage, d + dt.timedelta(days=day), artifact_path="-").row()[:-1]
                for v, day, stage in [(1, 1, registry.CHAMPION), (2, 3, registry.RETIRED), (3, 5, registry.RETIRED)]]
    write_table(spark.createDataFrame(old_rows, old_schema), rolled_back, t.MODEL_REGISTRY, mode="overwrite")
    registry.upsert(spark, rolled_back, registry.ModelRecord("m", 4, registry.CHALLENGER, d + dt.timedelta(days=8),
                                                             artifact_path="-"))
    registry.promote(spark, rolled_back, "m", 4, "passed the gate")
    got = {day: registry.champion(spark, rolled_back, "m", as_of=d + dt.timedelta(days=day)) for day in (2, 4, 6, 8)}
    assert {day: r and r[t.VERSION] for day, r in got.items()} == {2: 1, 4: 1, 6: 1, 8: 4}


def test_a_date_before_the_first_champion_trains_nothing_and_says_why_it_is_not_scored(spark, conf, tmp_path):
    """Backfilling history older than the first champion: a model trained on such a date is always
    refused by the gate, so the train step trains nothing (it trained the whole cascade each time),
    and scoring says the date cannot be scored instead of advising to train."""
    from botwatch.scoring.stage1 import load_champion

    wh, d = str(tmp_path / "wh"), dt.date(2026, 1, 1)
    registry.upsert(spark, wh, registry.ModelRecord(STAGE1_MODEL, 1, registry.CHAMPION, d + dt.timedelta(days=10),
                                                    artifact_path="-"))
    params = TrainParams.from_conf(conf.section("train"))
    retrain, why = refresh_decision(spark, wh, d + dt.timedelta(days=3), params)
    assert not retrain and "the first champion (version 1, trained on 2026-01-11) was trained after 2026-01-04" in why
    assert refresh_decision(spark, wh, d + dt.timedelta(days=11), params)[0] is False  # a fresh champion
    with pytest.raises(registry.NoChampionError, match=r"trained after it.*this date is not scored"):
        load_champion(spark, wh, as_of=d + dt.timedelta(days=3))
    # The cascade's policy too: without a heavy champion it retrains, but not for an earlier date.
    from botwatch.training_heavy import cascade_refresh_decision

    retrain, why = cascade_refresh_decision(spark, wh, d + dt.timedelta(days=3), params)
    assert not retrain and "the stage1_xgb champion (version 1, trained on 2026-01-11) was trained after" in why
    assert cascade_refresh_decision(spark, wh, d + dt.timedelta(days=11), params) == (
        True, "no heavy champion yet: stage 2 is off until one is promoted")


def test_golden_figures_are_also_given_at_the_populations_bot_share(conf):
    """Golden labels are 60 % bots, the population 3 %: precision and PR-AUC at the labels' share
    flatter the model. The ``golden_population_*`` figures reweight bots and humans to 3 %, checked
    against scikit-learn with the class weights computed here."""
    from types import SimpleNamespace

    rng = np.random.default_rng(7)
    params = dataclasses.replace(TrainParams.from_conf(conf.section("train")), n_bootstrap=20)

    def rows(n_bot, n_human):
        y = np.r_[np.ones(n_bot), np.zeros(n_human)].astype(int)
        return pd.DataFrame({t.ACCOUNT_ID: np.arange(len(y)), t.LABEL: y}), expit(rng.normal(size=len(y)) + 3.2 * y - 1)

    (valid, sv), (golden, sg) = rows(3000, 2000), rows(3000, 2000)
    ctx = SimpleNamespace(prevalence=0.03, canary_metrics={})
    threshold, got = training.operating_point(valid, sv, golden, sg, ctx, params)
    y = golden[t.LABEL].to_numpy()
    w = np.where(y == 1, 0.03 / y.mean(), 0.97 / (1 - y.mean()))
    assert got["golden_population_precision_at_threshold"] == pytest.approx(
        precision_score(y, sg >= threshold, sample_weight=w), abs=1e-12)
    assert got["golden_population_pr_auc"] == pytest.approx(average_precision_score(y, sg, sample_weight=w), abs=1e-9)
    # ... far below the figures at the labels' share
    assert got["golden_precision_at_threshold"] - got["golden_population_precision_at_threshold"] > 0.03
    assert got["golden_pr_auc"] - got["golden_population_pr_auc"] > 0.05
    assert 0 < got["golden_population_recall_at_target_precision"] < got["golden_recall_at_target_precision"]
    # Validation scores that tell nobody apart reach the target precision nowhere: no threshold, the model
    # actions nobody, and no figure at a threshold is reported (evaluate would pick one on the golden rows).
    flat, _ = rows(300, 200)
    none, got_none = training.operating_point(flat, np.full(len(flat), 0.5), golden, sg, ctx, params)
    assert none is None
    for prefix in ("valid_", "golden_"):
        for name in ("threshold", "precision_at_threshold", "recall_at_threshold", "fpr_at_threshold", "f1"):
            assert math.isnan(got_none[f"{prefix}{name}"]), prefix + name
    assert math.isnan(got_none["golden_population_precision_at_threshold"])
    assert got_none["golden_pr_auc"] == got["golden_pr_auc"]  # the ranking figures are the model's still
    ctx.prevalence = None  # no population share known: no such figures
    assert not any("population_" in k for k in training.operating_point(valid, sv, golden, sg, ctx, params)[1]
                   if k.startswith("golden_"))


def test_the_canarys_golden_intervals_do_not_depend_on_row_order(conf):
    params = dataclasses.replace(TrainParams.from_conf(conf.section("train")), n_bootstrap=50)
    rng = np.random.default_rng(11)
    y = (rng.random(200) < 0.4).astype(int)
    pdf = pd.DataFrame({t.ACCOUNT_ID: np.arange(200), t.LABEL: y, "canary_score": expit(rng.normal(size=200) + y)})
    got = training.canary_golden_metrics(pdf, params)
    assert got == training.canary_golden_metrics(pdf.sample(frac=1.0, random_state=3), params)
    assert got["canary_golden_pr_auc"] == pytest.approx(average_precision_score(y, pdf["canary_score"]), abs=1e-12)
    assert got["canary_golden_pr_auc_low"] < got["canary_golden_pr_auc"] < got["canary_golden_pr_auc_high"]
    # No operating threshold was picked for the canary on validation: none is picked on the golden rows
    # themselves either (its precision there would meet the target by construction).
    for name in ("threshold", "precision_at_threshold", "recall_at_threshold", "fpr_at_threshold", "f1"):
        assert math.isnan(got[f"canary_golden_{name}"]), name


def test_model_inputs_are_doubles_with_nan_for_missing(spark):
    """Ints, longs, floats and booleans become doubles; nulls become NaN (XGBoost's missing); names
    that need quoting keep their name."""
    rows = [(1, 7, 0.5, True, 2.0), (None, None, None, None, None), (3, -2, float("nan"), False, -1.5)]
    df = spark.createDataFrame(rows, "a int, b long, c float, d boolean, `odd name` double")
    got = df.select(*as_model_input(df.columns))
    assert [(f.name, f.dataType.simpleString()) for f in got.schema.fields] == [
        (c, "double") for c in ("a", "b", "c", "d", "odd name")]
    want = pd.DataFrame(rows, columns=df.columns).astype("float64")  # pandas: None -> NaN, True -> 1.0
    pd.testing.assert_frame_equal(got.toPandas(), want)


def test_infinite_or_huge_features_are_scored_as_missing(spark):
    """An ingested inf (a producer's division by zero) or a double beyond float32: XGBoost refused the
    whole scoring task ("Input data contains 'inf' or a value too large"). Such a value is missing."""
    import xgboost as xgb

    from botwatch.models.stage1 import booster_bytes, score_frame

    rng = np.random.default_rng(0)
    x = rng.random((200, 2))
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, (x[:, 0] > 0.5) * 1.0), 5)
    rows = [(1, float("nan"), 0.4), (2, float("inf"), 0.4), (3, 1e39, 0.4), (4, -float("inf"), 0.4), (5, 0.9, 0.4),
            (6, 3.0e38, 0.4)]
    df = spark.createDataFrame(rows, "account_id long, f0 double, f1 double")
    inputs = df.select(*as_model_input(["f0", "f1"])).toPandas()
    assert inputs["f0"].isna().tolist() == [True, True, True, True, False, False]
    got = {r["account_id"]: r["stage1_score"] for r in score_frame(
        df, booster_bytes(booster), ["f0", "f1"], PlattCalibration(), reason_codes=0).collect()}
    want = booster.predict(xgb.DMatrix(np.array([[np.nan, 0.4], [0.9, 0.4], [3.0e38, 0.4]])))
    assert got[1] == got[2] == got[3] == got[4] == pytest.approx(float(want[0]), abs=1e-6)
    assert got[5] == pytest.approx(float(want[1]), abs=1e-6) and got[6] == pytest.approx(float(want[2]), abs=1e-6)


def test_evaluation_rows_and_their_bootstrap_do_not_depend_on_sparks_row_order(spark, tmp_path):
    """The bootstrap draws rows by position: the same rows in another partition order gave other
    intervals for a seeded run. Collected rows come in account order."""
    rng = np.random.default_rng(4)
    n = 300
    pdf = pd.DataFrame({t.ACCOUNT_ID: np.arange(n), t.LABEL: rng.integers(0, 2, n), "f": rng.normal(size=n)})
    pdf[t.WEIGHT] = 1.0
    df = spark.createDataFrame(pdf)
    wh = str(tmp_path)
    forward = training._collect(df.orderBy(t.ACCOUNT_ID), ["f"], spark, wh)
    backward = training._collect(df.orderBy(F.desc(t.ACCOUNT_ID)).repartition(3), ["f"], spark, wh)
    pd.testing.assert_frame_equal(forward, backward)
    assert forward[t.ACCOUNT_ID].tolist() == list(range(n))


def test_calibrated_scores_are_computed_in_double_precision():
    # XGBoost's margins are float32; a float32 sigmoid rounds 2.5 * 8 + 0.5 and 2.5 * 10 + 0.5 both to exactly
    # 1.0, ties that lower PR-AUC and blur the threshold choice.
    margin = np.array([6.0, 7.0, 8.0, 10.0], dtype=np.float32)
    score = PlattCalibration(2.5, 0.5).apply(margin)
    assert score.dtype == np.float64 and np.all(np.diff(score) > 0) and score.max() < 1.0
    np.testing.assert_allclose(score, expit(2.5 * margin.astype(np.float64) + 0.5), rtol=1e-12)


def test_threshold_meets_target_precision_on_validation(spark, trained):
    tconf, run_date, result = trained
    warehouse = warehouse_path(tconf)
    params = TrainParams.from_conf(tconf.section("train"))
    raw, cols, cal, rec = _artifacts(spark, warehouse, result.version)
    _, valid, golden = training_rows(spark, warehouse, run_date, params)
    pdf = valid.select(t.LABEL, t.WEIGHT, *as_model_input(cols)).toPandas()
    margin = predict_margin(raw, pdf[cols])
    assert margin.dtype == np.float64  # as the scoring job's (mapInPandas) margins
    score = cal.apply(margin)
    assert rec["threshold"] == pytest.approx(result.threshold)
    flagged = score >= result.threshold
    assert flagged.any()
    # Precision at the population's bot share: no monitor has run here, so the conf fallback.
    meta = registry.read_artifact(rec["artifact_path"], "meta.json")
    assert meta["prevalence"] == params.prevalence_fallback and "fallback" in meta["prevalence_source"]
    y, w = pdf[t.LABEL].to_numpy(), pdf[t.WEIGHT].to_numpy()
    share = w[y == 1].sum() / w.sum()
    pi = params.prevalence_fallback
    population_w = np.where(y == 1, w * pi / share, w * (1 - pi) / (1 - share))
    assert precision_score(y, flagged, sample_weight=population_w) >= params.target_precision
    assert result.metrics["valid_population_precision"] == pytest.approx(
        precision_score(y, flagged, sample_weight=population_w))
    # The golden metric equals scikit-learn's on independently scored golden rows.
    gdf = golden.select(t.LABEL, *as_model_input(cols)).toPandas()
    gscore = cal.apply(predict_margin(raw, gdf[cols]))
    assert result.metrics["golden_pr_auc"] == pytest.approx(average_precision_score(gdf[t.LABEL], gscore))
    # False positive rates per account age: the boolean feature reaches evaluation as 1.0/0.0.
    humans = gdf[t.LABEL] == 0
    for value, name in ((1.0, "new"), (0.0, "established")):
        seg = humans & (gdf["is_new_account"] == value)
        assert seg.sum() > 0
        assert result.metrics[f"golden_fpr_segment_new_account_{name}"] == pytest.approx(
            (gscore[seg.to_numpy()] >= result.threshold).mean())


def test_the_gate_scores_the_champion_calibrated_as_it_scores(spark, trained, tmp_path):
    """A steep calibration saturates scores at 1.0. The champion's golden PR-AUC counts those ties
    as its scoring does (and as the challenger's is counted), so an identical model never loses."""
    tconf, run_date, result = trained
    warehouse = warehouse_path(tconf)
    raw, cols, _, _ = _artifacts(spark, warehouse, result.version)
    _, _, golden = training_rows(spark, warehouse, run_date, TrainParams.from_conf(tconf.section("train")))
    gdf = golden.select(t.LABEL, *as_model_input(cols)).toPandas()
    margin = predict_margin(raw, gdf[cols])
    # steep enough that the highest-scored human ties at 1.0 with every bot above it
    a = 40.0
    b = a - a * margin[gdf[t.LABEL].to_numpy() == 0].max()
    steep = str(tmp_path / "steep")
    registry.write_artifact(steep, "model.json", raw)
    registry.write_artifact(steep, "features.json", {"features": cols})
    registry.write_artifact(steep, "calibration.json", {"method": "platt", "a": a, "b": b})
    score = expit(a * margin + b)
    want = average_precision_score(gdf[t.LABEL], score)
    assert (score == 1.0).sum() > 1 and want != pytest.approx(average_precision_score(gdf[t.LABEL], margin))
    got = training.champion_golden_pr_auc(spark, warehouse, {"artifact_path": steep}, gdf)
    assert got == pytest.approx(want)



def test_after_a_new_golden_salt_the_champion_is_compared_only_on_rows_it_never_trained_on(
        spark, trained, tmp_path, monkeypatch):
    """``train.golden_salt`` changed: most of the new golden accounts were the champion's training rows.
    Scored on them it would look better than it is; the gate compares both models on the new golden
    rows that were golden under the champion's salt too (figures recomputed with scikit-learn). The
    fixture's small golden set keeps two of each class there: the minimum is lowered to that."""
    monkeypatch.setattr(training, "MIN_UNSEEN_PER_CLASS", 2)
    tconf, run_date, first = trained
    warehouse = copy_warehouse(warehouse_path(tconf), tmp_path / "wh")
    old = TrainParams.from_conf(tconf.section("train"))
    new = dataclasses.replace(old, golden_salt="golden-v2")
    result = train_stage1(spark, warehouse, run_date, new)

    old_train, _, old_golden = training_rows(spark, warehouse, run_date, old)
    unseen_ids = {r[0] for r in old_golden.select(t.ACCOUNT_ID).collect()}
    assert unseen_ids.isdisjoint(r[0] for r in old_train.select(t.ACCOUNT_ID).distinct().collect())
    _, _, golden = training_rows(spark, warehouse, run_date, new)
    for version, key in ((first.version, "champion_golden_pr_auc"), (result.version, "golden_pr_auc_vs_champion")):
        raw, cols, cal, _ = _artifacts(spark, warehouse, version)
        gdf = golden.select(t.ACCOUNT_ID, t.LABEL, *as_model_input(cols)).toPandas()
        unseen = gdf[gdf[t.ACCOUNT_ID].isin(unseen_ids)]
        assert 0 < len(unseen) < len(gdf)
        assert unseen[t.LABEL].value_counts().min() >= training.MIN_UNSEEN_PER_CLASS
        assert result.metrics["champion_golden_n"] == len(unseen)
        want = average_precision_score(unseen[t.LABEL], cal.apply(predict_margin(raw, unseen[cols])))
        assert result.metrics[key] == pytest.approx(want), key
    meta = registry.read_artifact(_artifacts(spark, warehouse, result.version)[3]["artifact_path"], "meta.json")
    assert (meta["golden_share"], meta["golden_salt"]) == (new.golden_share, "golden-v2")



def test_rows_unseen_by_a_champion_of_another_golden_split(spark, tmp_path):
    """Golden under the champion's split too, or every row where that leaves one class (no comparison
    at all would let a worse challenger through)."""
    from botwatch.labels import split_golden

    rows = pd.DataFrame({t.ACCOUNT_ID: np.arange(400, dtype="int64"), t.LABEL: np.arange(400) % 2,
                         t.SOURCE: "investigator"})
    golden = spark.createDataFrame(rows)
    params = TrainParams(label_weights={"investigator": 1.0}, golden_share=0.2, golden_salt="new")

    def unseen(share, salt, y=rows):
        art = str(tmp_path / f"{share}-{salt}")
        registry.write_artifact(art, "meta.json", {"golden_share": share, "golden_salt": salt})
        return training.unseen_by_champion({"artifact_path": art}, golden, y, params).tolist()

    assert unseen(0.2, "new") == [True] * 400
    assert training.unseen_by_champion({"artifact_path": str(tmp_path / "none")}, golden, rows, params).all()
    _, old_golden = split_golden(golden, 0.3, "old")
    want = set(old_golden.toPandas()[t.ACCOUNT_ID])
    assert 0 < len(want) < 400 and unseen(0.3, "old") == [i in want for i in range(400)]
    assert unseen(1e-6, "old") == [True] * 400  # none golden under the champion's split
    humans_there = rows.assign(**{t.LABEL: [int(i not in want) for i in range(400)]})
    assert unseen(0.3, "old", humans_there) == [True] * 400  # one class there
    # Too few of one class there: a PR-AUC on a handful of bots would decide the gate alone.
    few = sorted(want)[: training.MIN_UNSEEN_PER_CLASS - 1]
    few_bots = rows.assign(**{t.LABEL: [int(i in few or i not in want) for i in range(400)]})
    assert unseen(0.3, "old", few_bots) == [True] * 400
    enough = sorted(want)[: training.MIN_UNSEEN_PER_CLASS]
    enough_bots = rows.assign(**{t.LABEL: [int(i in enough or i not in want) for i in range(400)]})
    assert unseen(0.3, "old", enough_bots) == [i in want for i in range(400)]


def test_prevalence_auto_takes_the_monitors_latest_estimate_before_the_run_date(spark, tmp_path):
    """The newest estimate before D that is precise enough: standard error at most
    ``prevalence_max_rse`` of the estimate (a queue with few labels gives e.g. 0.915 in [0.15, 1])."""
    params = TrainParams(label_weights={"investigator": 1.0}, prevalence_fallback=0.04)
    warehouse, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    assert population_prevalence(spark, warehouse, day, params)[0] == 0.04  # no metrics table yet
    d = [day - dt.timedelta(days=k) for k in range(5)]
    rows = [(d[4], "prevalence", 0.05), (d[4], "prevalence_se", 0.01),
            (d[3], "prevalence", 0.06),  # no standard error: not trusted
            (d[2], "prevalence", 0.08), (d[2], "prevalence_se", 0.02), (d[2], "drift_alert", 1.0),
            (d[1], "prevalence", 0.915), (d[1], "prevalence_se", 0.39), (d[1], "prevalence_low", 0.149),
            (d[0], "prevalence", 0.5), (d[0], "prevalence_se", 0.01)]  # D's own: written later
    write_table(spark.createDataFrame(rows, METRICS_SCHEMA), warehouse, t.METRICS, partition_by=[t.RUN_DATE])
    value, source = population_prevalence(spark, warehouse, day, params)
    assert value == 0.08 and str(d[2]) in source
    value, source = population_prevalence(spark, warehouse, day, dataclasses.replace(params, prevalence_max_rse=0.2))
    assert value == 0.05 and str(d[4]) in source  # 0.02 / 0.08 = 0.25 is too wide now
    value, source = population_prevalence(spark, warehouse, day, dataclasses.replace(params, prevalence_max_rse=0.1))
    assert value == 0.04 and "fallback" in source and str(d[1]) in source and "0.43" in source
    assert population_prevalence(spark, warehouse, day, dataclasses.replace(params, prevalence=0.2))[0] == 0.2
    assert population_prevalence(spark, warehouse, day, dataclasses.replace(params, prevalence=None))[0] is None


def test_same_seed_gives_same_metrics(spark, platform, trained, tmp_path):
    pconf, dates = platform
    _, _, first = trained
    warehouse = copy_warehouse(warehouse_path(pconf), tmp_path / "wh")
    again = train_stage1(spark, warehouse, dates[-1], TrainParams.from_conf(pconf.section("train")))
    assert again.metrics == pytest.approx(first.metrics, nan_ok=True)


def score_both(spark, conf, run_date) -> dict:
    """Both scoring stages, as ``botwatch score`` runs them."""
    return {**steps.STEPS["score_stage1"](spark, conf, run_date), **steps.STEPS["score_stage2"](spark, conf, run_date)}


def test_shuffled_labels_are_refused_and_champion_keeps_scoring(spark, trained, tmp_path):
    tconf, run_date, first = trained
    warehouse = copy_warehouse(warehouse_path(tconf), tmp_path / "wh")
    sconf = tconf.with_overrides([f"warehouse={warehouse}"])
    labels = read_table(spark, warehouse, t.LABELS).toPandas()
    labels[t.LABEL] = np.random.default_rng(0).permutation(labels[t.LABEL].to_numpy())
    write_table(spark.createDataFrame(labels, read_table(spark, warehouse, t.LABELS).schema), warehouse, t.LABELS)

    result = train_stage1(spark, warehouse, run_date, TrainParams.from_conf(sconf.section("train")))
    assert not result.promoted
    champ = registry.champion(spark, warehouse, STAGE1_MODEL)
    assert champ[t.VERSION] == first.version
    refused = next(r for r in registry.records(spark, warehouse, STAGE1_MODEL) if r[t.VERSION] == result.version)
    assert refused[t.STAGE] == registry.CHALLENGER and refused["reason"] == result.reason

    summary = score_both(spark, sconf, run_date)
    assert summary["model_version"] == first.version
    scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(run_date))
    assert scores.select(t.MODEL_VERSION).distinct().collect()[0][0] == f"{STAGE1_MODEL}:{first.version}"


def test_scores_cover_every_account_with_consistent_decisions(spark, trained):
    tconf, run_date, result = trained
    warehouse = warehouse_path(tconf)
    score_both(spark, tconf, run_date)
    score_both(spark, tconf, run_date)  # rerun: replaces the partition, never duplicates
    scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(run_date)).toPandas()
    features = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(run_date))
    assert len(scores) == features.count() == scores[t.ACCOUNT_ID].nunique()
    thr = result.threshold
    assert ((scores[t.SCORE] >= thr) == (scores[t.DECISION] == "action")).all()
    assert not (scores["golden"] & scores["actioned"]).any()
    assert all(len(rc) == 3 for rc in scores["reason_codes"])


def test_refresh_policy_reuses_a_fresh_champion_and_retrains_when_old_or_drifted(spark, trained, tmp_path):
    tconf, run_date, first = trained
    warehouse = copy_warehouse(warehouse_path(tconf), tmp_path / "wh")
    # Stage 1's policy (with the cascade on, no heavy champion would retrain too: test_cascade checks that).
    rconf = tconf.with_overrides([f"warehouse={warehouse}", "cascade.enabled=false"])
    params = TrainParams.from_conf(rconf.section("train"))
    next_day = run_date + dt.timedelta(days=1)

    skipped = steps.train_step(spark, rconf, next_day)
    assert skipped["trained"] is False and f"version {first.version}" in skipped["reason"]
    assert [r[t.VERSION] for r in registry.records(spark, warehouse, STAGE1_MODEL)] == [first.version]

    old = run_date + dt.timedelta(days=params.max_champion_age_days)
    assert refresh_decision(spark, warehouse, old, params) == (
        True, f"champion is {params.max_champion_age_days} days old (max {params.max_champion_age_days})"
    )
    # A drift alert set by the monitor on D-1 (and only one set before D) makes D retrain.
    alerts = spark.createDataFrame(
        [(run_date, "drift_alert", 1.0), (next_day, "drift_alert", 1.0)],
        f"{t.RUN_DATE} date, {t.NAME} string, {t.VALUE} double",
    )
    write_table(alerts, warehouse, t.METRICS, partition_by=[t.RUN_DATE])
    assert refresh_decision(spark, warehouse, run_date, params)[0] is False
    assert refresh_decision(spark, warehouse, next_day, params) == (
        True, f"drift alert set by the monitored run of {run_date}")
    assert refresh_decision(spark, warehouse, next_day + dt.timedelta(days=1), params)[0] is True

    # A rerun of a date whose training finished (here refused) trains nothing new; max age 0 still
    # retrains, and so do a date whose training failed half-way or lost the promotion race.
    failed, raced = old + dt.timedelta(days=1), old + dt.timedelta(days=2)
    for day, version, reason in [(old, 90, "trails the champion on the golden set"),
                                 (failed, 91, registry.PLACEHOLDER_REASON),
                                 (raced, 92, f"passed the gate, but another run promoted; {registry.LOST_RACE}")]:
        registry.upsert(spark, warehouse, registry.ModelRecord(
            STAGE1_MODEL, version, registry.CHALLENGER, day, metrics={"golden_pr_auc": 0.5}, reason=reason))
    retrain, why = refresh_decision(spark, warehouse, old, params)
    assert retrain is False and why.startswith(f"stage 1 was already trained on {old} (version 90, challenger")
    assert refresh_decision(spark, warehouse, old, dataclasses.replace(params, max_champion_age_days=0))[0] is True
    assert refresh_decision(spark, warehouse, failed, params)[0] is True
    assert refresh_decision(spark, warehouse, raced, params)[0] is True
    skipped = steps.train_step(spark, rconf, old)
    assert skipped["trained"] is False and "already trained on" in skipped["reason"]


def test_the_canary_takes_nan_and_inf_as_missing(spark):
    """A NaN feature value (an attribute file's NaN) is missing to the canary, as null is; Spark ML's
    VectorAssembler would otherwise stop the train step with "Encountered NaN". An inf (a producer's
    division by zero) is missing too, as to stage 1 and the heavy model: the scaler would learn an
    infinite mean and score every account NaN."""
    from botwatch.models.canary import canary_scores, fit_canary

    rows = [(float(i % 2), 1.0, float("nan") if i % 7 == 0 else None if i % 5 == 0 else float(i % 2) + i / 100)
            for i in range(60)]
    rows += [(1.0, 1.0, float("inf")), (0.0, 1.0, -float("inf"))]  # accounts 60 and 61
    df = spark.createDataFrame([(i, *r) for i, r in enumerate(rows)],
                               "account_id long, label double, weight double, followers double")
    got = canary_scores(fit_canary(df, ["followers"]), df, ["followers"]).toPandas().set_index("account_id")
    assert got["canary_score"].notna().all() and np.isfinite(got["canary_score"]).all()
    # Row 7's NaN and row 5's null are the same input to it: missing.
    assert got.loc[7, "canary_score"] == pytest.approx(got.loc[5, "canary_score"], abs=1e-12)
    assert got.loc[7, "canary_score"] != pytest.approx(got.loc[3, "canary_score"], abs=1e-6)
    for inf_row in (60, 61):
        assert got.loc[inf_row, "canary_score"] == pytest.approx(got.loc[5, "canary_score"], abs=1e-12)
