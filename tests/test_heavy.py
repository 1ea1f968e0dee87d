"""Heavy model inputs and the torch model: sequences and neighbour means against pandas /
networkx references, learning a planted signal, determinism, save/load, quantisation and
missing inputs."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F
from sklearn.metrics import log_loss, roc_auc_score

from botwatch import tables as t
from botwatch.models import heavy as H
from botwatch.models.sequences import dt_bucket, gather_sequences, neighbor_mean, neighbor_mean_at
from botwatch.schemas import EDGES_SCHEMA, EVENTS_SCHEMA
from botwatch.scoring.worker import artifact_problem

UTC = dt.UTC
RUN_DATE = dt.date(2024, 3, 10)
TAB = ["f1", "f2"]
NBR = ["nbr_f1", "nbr_count"]
SMALL = H.HeavyConfig(
    max_len=24, event_embed_dim=4, dt_embed_dim=4, seq_hidden=16, tab_hidden=8, nbr_hidden=8, head_hidden=16,
    epochs=8, patience=3, batch_size=64, lr=3e-3, seed=11, device="cpu", ensemble=1,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Fast and bit-reproducible on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- Spark inputs


def _ts(day: int, h: int, m: int = 0, s: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, h, m, s, tzinfo=UTC)


def _events_rows():
    rows = []
    # Account 1: nine events in the window (more than L = 5), one before it, one after the run date.
    seconds = 0
    base = _ts(9, 22, 0, 0)
    for gap in (0, 7, 8, 15, 1, 0, 3600, 86400 // 2, 255):  # 2^k - 1 and 2^k gaps; two ties
        seconds += gap
        ts = base + dt.timedelta(seconds=seconds)
        rows.append((1, ts, t.EVENT_TYPES[len(rows) % len(t.EVENT_TYPES)]))
    rows.append((1, _ts(1, 12), "post"))   # 2024-02-12..03-10 is the 28-day window; 03-01 is inside
    rows.append((1, dt.datetime(2024, 2, 12, 0, 0, tzinfo=UTC), "like"))  # first day of the window
    rows.append((1, dt.datetime(2024, 2, 11, 23, 59, tzinfo=UTC), "like"))  # before the window
    rows.append((1, _ts(11, 0, 30), "post"))  # after the run date
    # Account 2: two events, one of a type outside the vocabulary.
    rows += [(2, _ts(10, 3, 45, 10), "dm"), (2, _ts(10, 23, 59, 59), "login")]
    # Account 3: events outside the window only.
    rows += [(3, _ts(11, 1), "post")]
    return rows


def _sequences_reference(rows, run_date, max_len, lookback_days):
    pdf = pd.DataFrame(rows, columns=[t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE])
    day = pdf[t.EVENT_TS].dt.date
    pdf = pdf[(day > run_date - dt.timedelta(days=lookback_days)) & (day <= run_date)]
    pdf = pdf.sort_values([t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE])
    out = {}
    for acct, g in pdf.groupby(t.ACCOUNT_ID):
        gaps = g[t.EVENT_TS].diff().dt.total_seconds().to_numpy()
        buckets = [0 if np.isnan(x) else min(31, math.floor(math.log2(x + 1))) for x in gaps]
        hours = (g[t.EVENT_TS].dt.hour + g[t.EVENT_TS].dt.minute / 60).to_numpy()
        types = [t.EVENT_TYPES.index(e) + 1 if e in t.EVENT_TYPES else len(t.EVENT_TYPES) + 1 for e in g[t.EVENT_TYPE]]
        out[acct] = {
            t.SEQ_EVENT_TYPE: types[-max_len:],
            t.SEQ_DT_BUCKET: buckets[-max_len:],
            t.SEQ_HOUR_SIN: np.sin(2 * np.pi * hours / 24)[-max_len:],
            t.SEQ_HOUR_COS: np.cos(2 * np.pi * hours / 24)[-max_len:],
            t.SEQ_LEN: min(len(g), max_len),
        }
    return out


def _events_df(spark, rows):
    full = [(a, ts, e, f"ip{a}", f"dev{a}", ts.date()) for a, ts, e in rows]
    return spark.createDataFrame(full, EVENTS_SCHEMA)


@pytest.mark.parametrize("max_len", [5, 50])
def test_gather_sequences_matches_pandas(spark, max_len):
    rows = _events_rows()
    got = {r[t.ACCOUNT_ID]: r.asDict() for r in gather_sequences(_events_df(spark, rows), RUN_DATE, max_len).collect()}
    want = _sequences_reference(rows, RUN_DATE, max_len, 28)
    assert set(got) == set(want) == {1, 2}
    for acct, ref in want.items():
        assert got[acct][t.SEQ_EVENT_TYPE] == ref[t.SEQ_EVENT_TYPE]
        assert got[acct][t.SEQ_DT_BUCKET] == ref[t.SEQ_DT_BUCKET]
        assert got[acct][t.SEQ_LEN] == ref[t.SEQ_LEN]
        np.testing.assert_allclose(got[acct][t.SEQ_HOUR_SIN], ref[t.SEQ_HOUR_SIN], atol=1e-12)
        np.testing.assert_allclose(got[acct][t.SEQ_HOUR_COS], ref[t.SEQ_HOUR_COS], atol=1e-12)
    assert got[1][t.SEQ_LEN] == min(max_len, 11)


def test_dt_bucket_exact_at_powers_of_two(spark):
    seconds = [0.0, 0.5, 1.0, 2.0, 3.0, 6.99, 7.0, 8.0, 1022.0, 1023.0, 2.0**40, -5.0]
    df = spark.createDataFrame([(s,) for s in seconds], "s double")
    got = [r[0] for r in df.select(dt_bucket(df["s"])).collect()]
    want = [0 if s < 0 else min(31, math.floor(math.log2(s + 1))) for s in seconds]
    assert got == want
    assert got == [0, 0, 1, 1, 2, 2, 3, 3, 9, 10, 31, 0]


def _graph_frames(spark, g: nx.Graph, features: dict[int, tuple]):
    run_end = dt.datetime.combine(RUN_DATE + dt.timedelta(days=1), dt.time(), UTC)
    edges = []
    for i, (a, b) in enumerate(sorted(g.edges())):
        edges.append((a, b, run_end - dt.timedelta(seconds=1 + i)))
        if i % 3 == 0:
            edges.append((b, a, None))  # reciprocal follow with unknown time: same undirected edge
    late = [(0, 99, run_end), (5, 98, run_end + dt.timedelta(days=3))]  # created after the run date
    self_loop = [(4, 4, run_end - dt.timedelta(days=1))]
    edges_df = spark.createDataFrame(edges + late + self_loop, EDGES_SCHEMA)
    tab = spark.createDataFrame([(k, *v) for k, v in features.items()], f"{t.ACCOUNT_ID} long, f1 double, f2 double")
    return edges_df, tab


def test_neighbor_mean_matches_pandas_when_k_covers_degree(spark):
    g = nx.gnm_random_graph(24, 50, seed=3)
    g.add_node(30)  # isolated account
    rng = np.random.default_rng(0)
    features = {n: (float(rng.normal()), float(rng.normal())) for n in g.nodes}
    features[98] = features[99] = (100.0, 100.0)  # only reachable through late edges
    for n in (1, 2, 3):
        features[n] = (float("nan"), None)
    edges_df, tab = _graph_frames(spark, g, features)
    k = max(d for _, d in g.degree()) + 1
    got = {r[t.ACCOUNT_ID]: r.asDict() for r in neighbor_mean(edges_df, tab, ["f1", "f2"], k, 7, RUN_DATE).collect()}
    ref = pd.DataFrame.from_dict(features, orient="index", columns=["f1", "f2"]).astype(float)
    assert set(got) == set(features)
    for n in features:
        nbrs = list(g.neighbors(n)) if n in g else []
        assert got[n][t.NBR_COUNT] == len(nbrs)
        for c in ("f1", "f2"):
            vals = ref.loc[nbrs, c].dropna()
            want = vals.mean() if len(vals) else None
            if want is None:
                assert got[n][f"nbr_{c}"] is None
            else:
                assert got[n][f"nbr_{c}"] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_neighbor_means_at_many_dates_in_one_pass_equal_date_by_date(spark):
    rng = np.random.default_rng(8)
    dates = [RUN_DATE - dt.timedelta(days=d) for d in (9, 4, 0)]
    start = dt.datetime.combine(dates[0], dt.time(), UTC) - dt.timedelta(days=3)
    edges = [(int(a), int(b), None if rng.random() < 0.1 else start + dt.timedelta(hours=int(rng.integers(0, 300))))
             for a, b in rng.integers(0, 30, size=(160, 2))]  # self loops and repeats included
    edges_df = spark.createDataFrame(edges, EDGES_SCHEMA)
    feats = [(a, d, float(rng.normal()) if rng.random() > 0.1 else float("nan"))
             for d in dates for a in range(32) if rng.random() > 0.1]  # 30 and 31 have no edges
    features = spark.createDataFrame(feats, f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date, f1 double")
    keys = spark.createDataFrame([(a, d) for d in dates for a in range(34) if rng.random() > 0.3],
                                 f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date")
    got = {(r[t.ACCOUNT_ID], r[t.RUN_DATE]): (r["nbr_f1"], r[t.NBR_COUNT])
           for r in neighbor_mean_at(edges_df, keys, features, ["f1"], 3, 7).collect()}
    want = {}
    wanted = {(r[0], r[1]) for r in keys.collect()}
    for d in dates:
        tab = features.where(F.col(t.RUN_DATE) == F.lit(d)).drop(t.RUN_DATE)
        for r in neighbor_mean(edges_df, tab, ["f1"], 3, 7, d).collect():
            if (r[t.ACCOUNT_ID], d) in wanted:
                want[(r[t.ACCOUNT_ID], d)] = (r["nbr_f1"], r[t.NBR_COUNT])
    assert got.keys() == want.keys() and len(want) > 40  # keys without a features row that date: none
    assert sum(c == 3 for _, c in want.values()) > 10 and sum(c == 0 for _, c in want.values()) > 0
    for key, (mean, count) in want.items():
        assert got[key][1] == count, key
        assert got[key][0] == pytest.approx(mean, rel=1e-12) if mean is not None else got[key][0] is None, key


def test_neighbor_mean_samples_at_most_k_deterministically(spark):
    g = nx.star_graph(12)  # hub 0 with 12 leaves
    g.add_edges_from([(1, 2), (2, 3), (3, 4), (1, 3), (1, 4)])
    # Feature 2^n: a sum of distinct neighbours' values names exactly which were sampled.
    features = {n: (float(2**n), 0.0) for n in g.nodes}
    edges_df, tab = _graph_frames(spark, g, features)
    k = 3

    def samples(seed):
        out = {}
        for r in neighbor_mean(edges_df, tab, ["f1"], k, seed, RUN_DATE).collect():
            total = round(r["nbr_f1"] * r[t.NBR_COUNT])
            out[r[t.ACCOUNT_ID]] = {n for n in g.nodes if total >> n & 1}
            assert r[t.NBR_COUNT] == len(out[r[t.ACCOUNT_ID]])
        return out

    first, again, other = samples(7), samples(7), samples(8)
    for n in g.nodes:
        assert len(first[n]) == min(k, g.degree(n))
        assert first[n] <= set(g.neighbors(n))
    assert first == again
    assert first != other  # a different seed draws different neighbours somewhere


# ---------------------------------------------------------------- model


def _synthetic(n: int, seed: int) -> pd.DataFrame:
    """Bots act at night with regular gaps; humans by day with irregular ones. Tabular features are noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        bot = rng.random() < 0.35
        length = int(rng.integers(0, 40))
        if bot:
            gaps = 6 + rng.integers(0, 2, length)
            hours = rng.uniform(0, 5, length)
        else:
            gaps = rng.integers(0, 17, length)
            hours = rng.uniform(8, 23, length)
        angle = 2 * np.pi * hours / 24
        rows.append({
            t.SEQ_EVENT_TYPE: rng.integers(1, len(t.EVENT_TYPES) + 1, length).astype(np.int32),
            t.SEQ_DT_BUCKET: gaps.astype(np.int32),
            t.SEQ_HOUR_SIN: np.sin(angle),
            t.SEQ_HOUR_COS: np.cos(angle),
            t.SEQ_LEN: length,
            "f1": rng.normal(5, 2) if rng.random() > 0.3 else np.nan,
            "f2": rng.exponential(100.0),
            "nbr_f1": rng.normal() if rng.random() > 0.2 else None,
            "nbr_count": float(rng.integers(0, 5)),
            t.LABEL: int(bot),
            "weight": 1.0,
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data():
    return _synthetic(700, 1), _synthetic(300, 2)


@pytest.fixture(scope="module")
def trained(data):
    train, valid = data
    return H.train_heavy(train, valid, TAB, NBR, config=SMALL)


def test_learns_planted_sequence_signal(trained, data):
    _, valid = data
    scores = trained.predict(valid, batch_size=50)
    assert scores.shape == (len(valid),)
    assert np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(valid[t.LABEL], scores) > 0.9
    assert trained.best_epoch >= 1 and len(trained.history) >= trained.best_epoch
    best = min(h["valid_loss"] for h in trained.history)
    assert trained.history[trained.best_epoch - 1]["valid_loss"] == best


def test_same_seed_gives_identical_predictions(trained, data):
    train, valid = data
    again = H.train_heavy(train, valid, TAB, NBR, config=SMALL)
    assert np.array_equal(again.predict(valid), trained.predict(valid))


def test_save_load_round_trip(trained, data, tmp_path):
    _, valid = data
    folder = trained.save(tmp_path / "heavy")
    assert sorted(p.name for p in folder.iterdir()) == [H.META_FILE, H.STATE_FILE]
    loaded = H.load_heavy(folder, device="cpu")
    assert loaded.tabular_cols == TAB and loaded.neighbor_cols == NBR
    assert loaded.config == SMALL
    assert np.array_equal(loaded.predict(valid), trained.predict(valid))


def test_a_model_saved_before_ensembles_existed_loads_as_one_model(trained, data, tmp_path):
    """A registered champion written before ``heavy.ensemble`` has no such key in its config: it is one
    model, not an ensemble of the current default size."""
    _, valid = data
    folder = trained.save(tmp_path / "old")
    meta = json.loads((folder / H.META_FILE).read_text())
    del meta["config"]["ensemble"]
    (folder / H.META_FILE).write_text(json.dumps(meta))
    assert H.HeavyConfig().ensemble > 1
    loaded = H.load_heavy(folder, device="cpu")
    assert loaded.config.ensemble == 1 and isinstance(loaded.model, H.HeavyModel)
    assert np.array_equal(loaded.predict(valid), trained.predict(valid))


def test_a_model_saved_with_knobs_this_code_does_not_take_is_unloadable_not_a_type_error(trained, tmp_path):
    """A champion saved by a release with a knob this one lacks (or a value this one refuses) failed in
    ``HeavyConfig(**config)`` with a bare TypeError wherever it was loaded, stage 2's input build included,
    instead of counting as a model this code cannot load (stage 2 off, warned; the train step retrains it)."""
    for change, says in ((lambda c: c.update(attention_heads=4), r"knobs \['attention_heads'\]"),
                         (lambda c: c.update(max_len=0), r"heavy\.max_len")):
        folder = trained.save(tmp_path / "new")
        meta = json.loads((folder / H.META_FILE).read_text())
        change(meta["config"])
        (folder / H.META_FILE).write_text(json.dumps(meta))
        assert re.search(says, artifact_problem(meta))
        with pytest.raises(H.HeavyArtifactError, match=says + r".*retrain the model"):
            H.load_heavy(folder, device="cpu")


def test_load_rejects_foreign_artifact(tmp_path):
    with pytest.raises(H.HeavyArtifactError, match="save models with TrainedHeavy.save"):
        H.load_heavy(tmp_path)


def test_quantized_predictions_stay_close(trained, data):
    _, valid = data
    quantized = trained.quantize_dynamic()
    assert quantized.quantized and not trained.quantized
    assert "quantized.dynamic" in type(quantized.model.fuse[1]).__module__
    assert "quantized.dynamic" in type(quantized.model.gru).__module__
    assert type(trained.model.gru) is torch.nn.GRU  # the float model is left as it was
    diff = np.abs(quantized.predict(valid) - trained.predict(valid))
    assert diff.max() < 0.05
    with pytest.raises(ValueError, match="quantise after loading"):
        quantized.save("unused")


def test_missing_inputs_give_finite_scores_and_differ_from_zero(trained, data):
    _, valid = data
    rows = valid.head(4).copy()
    rows["f1"] = np.nan
    rows["f2"] = [None, np.inf, np.nan, 1.0]
    rows["nbr_f1"] = None
    rows[t.SEQ_EVENT_TYPE] = [None, np.array([], np.int32), rows[t.SEQ_EVENT_TYPE].iloc[2], None]
    for c in (t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN, t.SEQ_HOUR_COS):
        rows[c] = [None, np.array([]), rows[c].iloc[2], None]
    scores = trained.predict(rows)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    # f1 missing versus f1 at its training mean (0 after standardising): the indicator tells them apart.
    at_mean = rows.copy()
    at_mean["f1"] = trained.standardizer.means[0]
    assert not np.allclose(trained.predict(at_mean), scores, atol=1e-9)


def test_to_tensors_pads_truncates_and_marks_missing():
    pdf = pd.DataFrame({
        t.SEQ_EVENT_TYPE: [np.array([1, 2, 3, 4]), None, [5]],
        t.SEQ_DT_BUCKET: [np.array([0, 1, 2, 40]), None, [3]],
        t.SEQ_HOUR_SIN: [np.array([0.1, 0.2, 0.3, 0.4]), None, [0.5]],
        t.SEQ_HOUR_COS: [np.array([0.9, 0.8, 0.7, 0.6]), None, [0.5]],
        "a": [1.0, None, np.inf],
        "nbr_a": [np.nan, 2.0, 3.0],
    })
    got = H.to_tensors(pdf, ["a"], ["nbr_a"], max_len=3)
    assert got[H.EVENT_TYPE].tolist() == [[2, 3, 4], [0, 0, 0], [5, 0, 0]]
    assert got[H.DT_BUCKET].tolist() == [[1, 2, 31], [0, 0, 0], [3, 0, 0]]
    np.testing.assert_allclose(got[H.HOUR_SIN].numpy(), [[0.2, 0.3, 0.4], [0, 0, 0], [0.5, 0, 0]], rtol=1e-6)
    assert got[H.LENGTH].tolist() == [3, 0, 1]
    np.testing.assert_array_equal(got[H.TABULAR].numpy().ravel(), [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(got[H.NEIGHBOR].numpy().ravel(), [np.nan, 2.0, 3.0])
    with pytest.raises(H.HeavyInputError, match="missing columns"):
        H.to_tensors(pdf.drop(columns=["a"]), ["a"], ["nbr_a"], max_len=3)


def test_to_tensors_matches_a_row_by_row_reference_and_rejects_ragged_columns():
    rng = np.random.default_rng(3)
    n, max_len = 60, 7
    cells = [None if k == 0 else rng.integers(-2, 40, k).astype(np.int32) for k in rng.integers(0, 12, n)]
    pdf = pd.DataFrame({
        t.SEQ_EVENT_TYPE: cells,
        t.SEQ_DT_BUCKET: [None if c is None else c[::-1].copy() for c in cells],
        t.SEQ_HOUR_SIN: [None if c is None else list(c / 10.0) for c in cells],  # lists, as a user may pass
        t.SEQ_HOUR_COS: [None if c is None else c / 20.0 for c in cells],
    }).iloc[5:]  # a slice: row positions no longer start at 0
    got = H.to_tensors(pdf, [], [], max_len=max_len)
    for col, key, hi in ((t.SEQ_EVENT_TYPE, H.EVENT_TYPE, t.EVENT_TYPE_VOCAB - 1),
                         (t.SEQ_DT_BUCKET, H.DT_BUCKET, t.DT_BUCKET_MAX), (t.SEQ_HOUR_SIN, H.HOUR_SIN, None)):
        want = np.zeros((len(pdf), max_len))
        for i, cell in enumerate(pdf[col]):
            if cell is not None:
                tail = np.asarray(cell, dtype=float)[-max_len:]
                want[i, :len(tail)] = tail if hi is None else np.clip(tail, 0, hi)
        np.testing.assert_allclose(got[key].numpy(), want, rtol=1e-6, err_msg=col)
    assert got[H.LENGTH].tolist() == [0 if c is None else min(len(c), max_len) for c in pdf[t.SEQ_EVENT_TYPE]]
    ragged = pdf.copy()
    first = int(np.flatnonzero(ragged[t.SEQ_EVENT_TYPE].notna())[0])
    ragged.iat[first, ragged.columns.get_loc(t.SEQ_HOUR_COS)] = None
    with pytest.raises(H.HeavyInputError, match="shorter array"):
        H.to_tensors(ragged, [], [], max_len=max_len)


def test_weighted_soft_target_loss_matches_reference():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=50)
    y = rng.uniform(size=50)
    w = rng.uniform(0, 2, size=50)
    p = 1 / (1 + np.exp(-logits))
    want = np.sum(w * -(y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum()
    got = H._weighted_loss(torch.tensor(logits), torch.tensor(y), torch.tensor(w))
    assert float(got) == pytest.approx(want, rel=1e-9)
    hard = (y > 0.5).astype(float)
    got_hard = H._weighted_loss(torch.tensor(logits), torch.tensor(hard), torch.tensor(w))
    assert float(got_hard) == pytest.approx(log_loss(hard, p, sample_weight=w), rel=1e-9)


def test_encodings_reproduce_predictions(trained, data):
    _, valid = data
    enc = trained.encode_sequences(valid)
    assert enc.shape == (len(valid), SMALL.seq_hidden)
    np.testing.assert_allclose(trained.predict_from_encodings(enc, valid), trained.predict(valid), atol=1e-6)


def test_the_surest_bots_keep_distinct_scores(trained, data, monkeypatch):
    """Float32 logits of 17-30 (past where float32's sigmoid rounds to 1.0) become distinct
    probabilities, scipy's expit in double, on both scoring paths."""
    from scipy.special import expit

    _, valid = data
    rows = valid.iloc[:4]
    logits = torch.tensor([17.0, 20.0, 25.0, 30.0])
    want = expit(logits.double().numpy())
    monkeypatch.setattr(trained.model, "forward", lambda batch: logits)
    monkeypatch.setattr(trained.model, "head", lambda enc, tab, nbr: logits)
    for got in (trained.predict(rows, batch_size=4),
                trained.predict_from_encodings(np.zeros((4, SMALL.seq_hidden)), rows, batch_size=4)):
        assert got.dtype == np.float64 and len(set(got)) == 4
        np.testing.assert_allclose(got, want, rtol=1e-15)


def test_ensemble_averages_independently_trained_seeds(data, tmp_path):
    """heavy.ensemble = 3: the members are the models three single runs with seeds seed, seed+1, seed+2
    would train, and the ensemble's score is the mean of their probabilities. It saves, loads, encodes
    (every member's encoding side by side) and quantises like a single model."""
    train, valid = data
    cfg = dataclasses.replace(SMALL, epochs=3, ensemble=3)
    ensemble = H.train_heavy(train, valid, TAB, NBR, config=cfg)
    singles = [
        H.train_heavy(train, valid, TAB, NBR, config=dataclasses.replace(cfg, ensemble=1, seed=cfg.seed + i))
        for i in range(3)
    ]
    want = np.mean([m.predict(valid) for m in singles], axis=0)
    got = ensemble.predict(valid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert sorted({r["member"] for r in ensemble.history}) == [0, 1, 2]
    assert ensemble.best_epoch == max(m.best_epoch for m in singles)
    assert ensemble.epochs_run == max(len(m.history) for m in singles)  # not the members' sum
    assert all(m.epochs_run == len(m.history) for m in singles)

    enc = ensemble.encode_sequences(valid)
    assert enc.shape == (len(valid), 3 * SMALL.seq_hidden) == (len(valid), cfg.encoding_size)
    np.testing.assert_allclose(ensemble.predict_from_encodings(enc, valid), got, atol=1e-6)
    loaded = H.load_heavy(ensemble.save(tmp_path / "ensemble"), device="cpu")
    assert loaded.config == cfg and isinstance(loaded.model, H.HeavyEnsemble)
    assert np.array_equal(loaded.predict(valid), got)
    assert np.abs(ensemble.quantize_dynamic().predict(valid) - got).max() < 0.05
    with pytest.raises(ValueError, match="ensemble"):
        H.HeavyConfig(ensemble=0)


def test_ensemble_score_is_the_mean_probability_even_at_the_extremes():
    """The ensemble's logit is log-space exact: members far in the tails still average as probabilities."""
    members = [H.HeavyModel(1, 1, SMALL) for _ in range(3)]
    ensemble = H.HeavyEnsemble(members)
    member_logits = torch.tensor([[-40.0, 0.3, 25.0], [-30.0, -2.0, 60.0], [-35.0, 1.5, 18.0]], dtype=torch.float64)
    for member, row in zip(members, member_logits, strict=True):
        member.head = lambda enc, tab, nbr, row=row: row  # type: ignore[method-assign]
    logit = ensemble.head(torch.zeros(3, 3 * SMALL.seq_hidden), torch.zeros(3, 1), torch.zeros(3, 1))
    probs = 1 / (1 + np.exp(-member_logits.numpy()))
    want_p = probs.mean(axis=0)
    # float32 heads: about 1e-7 of the log-sum-exp terms' size, absolute
    np.testing.assert_allclose(logit.double().numpy(), np.log(want_p) - np.log1p(-want_p), rtol=1e-6, atol=1e-5)


def test_seeded_cuda_training_switches_to_deterministic_kernels_and_restores(monkeypatch):
    # The CUDA branch only sets flags (no kernel runs), so it is checked on any machine.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    with H._seeded(1, torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with H._seeded(1, torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's value is kept
    with H._seeded(1, torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()


def test_device_resolution():
    assert H.resolve_device("cpu").type == "cpu"
    assert H.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert H.resolve_device("cuda").type == "cuda"
    else:
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert H.resolve_device("cuda").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        H.HeavyConfig(device="tpu")
    # 0 would clip every gradient to nothing (no learning, no error), a negative norm flips them
    for norm in (0.0, -1.0):
        with pytest.raises(ValueError, match="heavy.max_grad_norm must be > 0"):
            H.HeavyConfig(max_grad_norm=norm)


def test_dense_dropout_drops_both_dense_branches_per_row_in_training_only():
    """heavy.dense_dropout: in training, each row's tabular and neighbour encodings are zeroed together
    (probability p) or kept exactly as scoring sees them (no 1 / (1 - p) scaling: the branches move
    together, so a rescaled kept row would be an input scoring never gives); scoring never drops them."""
    p = 0.5
    model = H.HeavyModel(2, 3, dataclasses.replace(SMALL, dropout=0.0, dense_dropout=p))
    gen = torch.Generator().manual_seed(3)
    enc, tab, nbr = (torch.randn(64, n, generator=gen) for n in (SMALL.seq_hidden, 2, 3))
    with torch.no_grad():
        dense = torch.cat([model.tab(H._with_missing(tab)), model.nbr(H._with_missing(nbr))], dim=1)
        dropped = model.fuse(torch.cat([enc, torch.zeros_like(dense)], dim=1)).squeeze(-1)
        plain = model.fuse(torch.cat([enc, dense], dim=1)).squeeze(-1)
        model.train()
        torch.manual_seed(0)
        got = model.head(enc, tab, nbr)
        model.eval()
        scored = model.head(enc, tab, nbr)
    is_dropped = torch.isclose(got, dropped, atol=1e-6)
    assert torch.all(is_dropped | torch.isclose(got, plain, atol=1e-6))
    assert 10 < int(is_dropped.sum()) < 54  # about half of 64 rows
    torch.testing.assert_close(scored, plain)
    with pytest.raises(ValueError, match="dense_dropout"):
        H.HeavyConfig(dense_dropout=1.0)


def test_spark_inputs_feed_the_model(spark, trained):
    events = _events_df(spark, _events_rows())
    g = nx.path_graph(4)
    edges_df, tab = _graph_frames(spark, g, {n: (float(n), float(n * 10)) for n in range(4)})
    seqs = gather_sequences(events, RUN_DATE, SMALL.max_len)
    nbrs = neighbor_mean(edges_df, tab, ["f1"], SMALL.neighbor_k, SMALL.neighbor_seed, RUN_DATE)
    pdf = (
        tab.join(seqs, t.ACCOUNT_ID, "left").join(nbrs, t.ACCOUNT_ID, "left")
        .orderBy(t.ACCOUNT_ID).toPandas()
    )
    pdf["nbr_count"] = pdf[t.NBR_COUNT].astype(float)
    scores = trained.predict(pdf)
    assert pdf[t.ACCOUNT_ID].tolist() == [0, 1, 2, 3]
    assert pdf[t.SEQ_LEN].isna().tolist() == [True, False, False, True]
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores[1], trained.predict(pdf.iloc[[1]])[0], atol=1e-6)


def test_conf_section_declares_every_knob(conf):
    section = conf.section("heavy")
    knobs = {f.name for f in dataclasses.fields(H.HeavyConfig)}
    # plus the features averaged over neighbours, read by the Spark input gathering (models.heavy_inputs)
    assert set(section) == knobs | {"neighbor_features"}
    assert H.HeavyConfig.from_mapping(section) == H.HeavyConfig()  # the yaml defaults are the code's
    assert H.HeavyConfig.from_mapping({**section, "device": "cpu", "epochs": 3}).epochs == 3


# ---------------------------------------------------------------- a sequence-only signal on the simulator

SCRIPTED_SETS = [
    "simulate.prevalence=0.25", "simulate.family_shares.scheduled=0.0", "simulate.family_shares.mimic=1.0",
    "simulate.family_shares.botnet=0.0", "simulate.family_shares.cyborg=0.0",
    "simulate.family_shares.follow_spam=0.0", "simulate.drift.new_family=null", "simulate.mimic.scripted_share=1.0",
]
SCRIPTED_START, SCRIPTED_DAYS = dt.date(2026, 1, 5), 7
# No early stopping in effect (patience = epochs): on a few hundred validation rows the loss is noisy and
# stopped training before the GRU found the order (PR-AUC 0.35 with patience 6).
SEQ_CONFIG = H.HeavyConfig(
    max_len=64, event_embed_dim=8, dt_embed_dim=4, seq_hidden=32, tab_hidden=16, nbr_hidden=4, head_hidden=32,
    epochs=40, patience=40, batch_size=64, lr=3e-3, seed=11, device="cpu", ensemble=1,
)


@pytest.fixture(scope="module")
def scripted_inputs(spark, conf):
    from botwatch.simulate import simulate_platform

    params = conf.with_overrides(SCRIPTED_SETS).section("simulate")
    tables = simulate_platform(spark, accounts=4000, days=SCRIPTED_DAYS, seed=21, start_date=SCRIPTED_START,
                               params=params)
    run_date = SCRIPTED_START + dt.timedelta(days=SCRIPTED_DAYS - 1)
    seqs = gather_sequences(tables[t.EVENTS], run_date, SEQ_CONFIG.max_len).toPandas()
    n_events = tables[t.EVENTS].groupBy(t.ACCOUNT_ID).count().toPandas().rename(columns={"count": "n_events"})
    pdf = tables[t.TRUTH].toPandas().merge(n_events, on=t.ACCOUNT_ID, how="left").fillna({"n_events": 0})
    pdf = pdf.merge(seqs, on=t.ACCOUNT_ID, how="left")
    pdf[t.LABEL] = (pdf[t.FAMILY] == "mimic").astype(int)
    pdf["weight"] = 1.0
    pdf[t.NBR_COUNT] = 0.0
    pdf["noise"] = np.random.default_rng(0).normal(size=len(pdf))  # the only tabular input: no signal
    assert set(pdf[t.FAMILY]) == {"human", "mimic"}
    # Active accounts only (at least one script cycle of events): dormant humans are trivially human,
    # and the question is which of the busy accounts are run by a script.
    pdf = pdf[pdf["n_events"] >= params["script"]["length"]]
    # A fixed split by account id (ids are not ordered by family outside botnets).
    part = pdf[t.ACCOUNT_ID] % 5
    return pdf[part <= 2], pdf[part == 3], pdf[part == 4]


def test_heavy_learns_the_scripted_order_from_sequences_alone(scripted_inputs):
    """Scripted mimics among active humans, with no tabular signal (one noise column): the GRU finds
    them from the event-type ORDER; with each account's types shuffled (same counts, same timing)
    it does far worse. Precision-recall from scikit-learn."""
    from sklearn.metrics import average_precision_score

    train, valid, test = scripted_inputs
    assert test[t.LABEL].sum() >= 40 and (1 - test[t.LABEL]).sum() >= 80
    rng = np.random.default_rng(3)

    def shuffled(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out[t.SEQ_EVENT_TYPE] = [rng.permutation(np.asarray(s)) if isinstance(s, (list, np.ndarray)) else None
                                 for s in frame[t.SEQ_EVENT_TYPE]]
        return out

    def fit_score(tr: pd.DataFrame, va: pd.DataFrame, te: pd.DataFrame) -> float:
        model = H.train_heavy(tr, va, ["noise"], [t.NBR_COUNT], config=SEQ_CONFIG)
        return average_precision_score(te[t.LABEL], model.predict(te))

    base = float(test[t.LABEL].mean())
    ordered = fit_score(train, valid, test)
    control = fit_score(shuffled(train), shuffled(valid), shuffled(test))
    print(f"scripted mimics from sequences alone: PR-AUC {ordered:.3f}; types shuffled {control:.3f}; base {base:.3f}")
    assert ordered > 0.9
    # Shuffled sequences keep counts and timing; what the model still finds there is not the order.
    assert ordered > control + 0.2


def test_a_column_that_never_varied_in_training_cannot_move_the_score(data):
    """f1 always missing, f2 always 3.0 and no neighbours in training: the weights reading them (and f2's
    missing indicator) never learned, so values they take at scoring must leave the score where training
    left it."""
    train, valid = data
    flat = train.assign(f1=np.nan, f2=3.0, nbr_count=0.0)
    model = H.train_heavy(flat, valid.assign(f1=np.nan, f2=3.0, nbr_count=0.0), TAB, NBR,
                          config=dataclasses.replace(SMALL, epochs=2))
    as_trained = model.predict(valid.assign(f1=np.nan, f2=3.0, nbr_count=0.0))
    for changed in (valid.assign(f1=500.0, f2=500.0, nbr_count=4.0), valid.assign(f2=np.nan)):
        np.testing.assert_array_equal(model.predict(changed), as_trained)
    # nbr_f1 varied in training: it still counts.
    assert not np.array_equal(model.predict(valid.assign(nbr_f1=50.0)), as_trained)
    loaded = H.Standardizer.from_dict(json.loads(json.dumps(model.standardizer.to_dict())))
    np.testing.assert_array_equal(loaded.transform(np.array([[500.0, 500.0, 1.0, 4.0]])),
                                  model.standardizer.transform(np.array([[500.0, 500.0, 1.0, 4.0]])))


def test_a_large_fractional_constant_is_frozen_too():
    """700 copies of 123456.789 have a numpy std of ~1.5e-11 (the mean rounds): above an absolute 1e-12, the
    column was standardised by it, the training value became -1 and any other value +-10."""
    values = np.c_[np.full(700, 123456.789), np.full(700, 0.7), np.linspace(0.0, 1.0, 700)]
    assert np.nanstd(values[:, 0]) > 1e-12  # what the absolute test saw
    s = H.Standardizer.fit(values, ["big", "small", "varied"])
    assert s.frozen.tolist() == [True, True, False]
    got = s.transform(np.array([[123456.789, 0.7, 0.5], [123457.789, 9.0, 0.5]]))
    np.testing.assert_array_equal(got[:, :2], 0.0)
    np.testing.assert_allclose(got[:, 2], (0.5 - values[:, 2].mean()) / values[:, 2].std(), atol=1e-12)


def test_calibration_puts_stage2_on_the_population_scale_and_travels_with_the_model(trained, data, tmp_path):
    """The network learnt the labelled rows' bot share (35 %); stage 2's score replaces stage 1's (calibrated
    to the population's share) for the accounts it scores, so it is calibrated the same way."""
    from botwatch.training import validation_weights
    from botwatch.training_heavy import calibrate_heavy

    _, valid = data
    prevalence = 0.02
    weights = validation_weights(valid, prevalence)
    y = valid[t.LABEL].to_numpy()
    assert abs(np.average(y, weights=weights) - prevalence) < 1e-9  # the reweighted rows' bot share
    raw = trained.predict(valid)
    assert np.average(raw, weights=weights) > prevalence + 0.02  # uncalibrated: above it
    model = calibrate_heavy(trained, raw, valid, prevalence)
    got = model.predict(valid)
    assert abs(np.average(got, weights=weights) - prevalence) < 0.002
    assert trained.calibration == (1.0, 0.0) and np.array_equal(trained.predict(valid), raw)
    # A monotone map: the ranking (and so every decision at a matching threshold) is unchanged.
    assert np.array_equal(np.argsort(got, kind="stable"), np.argsort(raw, kind="stable"))
    a, b = model.calibration
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(a * np.log(raw / (1 - raw)) + b))), rtol=1e-12)
    # The Spark path scores from encodings; the saved model and its int8 copy keep the calibration.
    np.testing.assert_allclose(model.predict_from_encodings(model.encode_sequences(valid), valid), got, atol=1e-6)
    loaded = H.load_heavy(model.save(tmp_path / "calibrated"), device="cpu")
    assert loaded.calibration == model.calibration and np.array_equal(loaded.predict(valid), got)
    assert model.quantize_dynamic().calibration == model.calibration
    np.testing.assert_array_equal(model.calibrated(np.array([0.0, 1.0])), [0.0, 1.0])
