"""Stage 2's worker code without Spark: scores equal the model's own row-order predictions, cached
encodings skip the encoder, and a CUDA failure (at load or on a batch) moves the worker to the
CPU with a warning while other errors still raise."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from botwatch import tables as t
from botwatch.models import heavy as H
from botwatch.scoring import worker as W

TAB = ["f1", "f2"]
NBR = ["nbr_f1", "nbr_count"]
CONFIG = H.HeavyConfig(max_len=12, event_embed_dim=4, dt_embed_dim=4, seq_hidden=8, tab_hidden=8, nbr_hidden=8,
                       head_hidden=8, seed=3, device="cpu", ensemble=1)
CPU_FP32 = W.InferenceSettings(batch_size=4, device="cpu", quantize_cpu=False, torch_threads=1)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> W.HeavyArtifact:
    torch.manual_seed(0)
    cols = TAB + NBR
    std = H.Standardizer(cols, np.zeros(len(cols)), np.ones(len(cols)))
    model = H.TrainedHeavy(H.HeavyModel(len(TAB), len(NBR), CONFIG).eval(), std, TAB, NBR, CONFIG)
    return W.HeavyArtifact.from_folder(model.save(tmp_path_factory.mktemp("heavy")), version=5)


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {t.SEQ_EVENT_TYPE: [], t.SEQ_DT_BUCKET: [], t.SEQ_HOUR_SIN: [], t.SEQ_HOUR_COS: []}
    for length in rng.integers(0, 20, n):  # some empty, some longer than max_len
        if length == 0:
            for v in cols.values():
                v.append(None)
            continue
        angle = rng.uniform(0, 2 * np.pi, length)
        cols[t.SEQ_EVENT_TYPE].append(rng.integers(1, 6, length).tolist())
        cols[t.SEQ_DT_BUCKET].append(rng.integers(0, 20, length).tolist())
        cols[t.SEQ_HOUR_SIN].append(np.sin(angle).tolist())
        cols[t.SEQ_HOUR_COS].append(np.cos(angle).tolist())
    pdf = pd.DataFrame({t.ACCOUNT_ID: np.arange(n, dtype=np.int64), **cols})
    for c in TAB + NBR:
        pdf[c] = rng.normal(size=n)
    return pdf


def _score(batches, artifact, settings=CPU_FP32) -> pd.DataFrame:
    return pd.concat(list(W.score_partitions(batches, artifact, settings, [t.ACCOUNT_ID])), ignore_index=True)


def test_worker_scores_equal_row_order_predictions(artifact):
    batches = [_rows(11, 1), _rows(0, 2), _rows(7, 3)]
    out = _score(batches, artifact)
    reference = np.concatenate([H.load_heavy(artifact.path, device="cpu").predict(b) for b in batches if len(b)])
    np.testing.assert_allclose(out[t.STAGE2_SCORE].to_numpy(), reference, atol=1e-6)
    assert list(out.columns) == [t.ACCOUNT_ID, t.STAGE2_SCORE, W.ENCODING, W.FROM_CACHE, W.ENCODER]
    assert (out[W.ENCODER] == "stage2_heavy:5:fp32").all()
    assert len(out) == 18 and not out[W.FROM_CACHE].any()
    assert all(len(e) == CONFIG.seq_hidden for e in out[W.ENCODING])


def test_cached_encodings_skip_the_encoder(artifact, monkeypatch):
    pdf = _rows(9, 4)
    fresh = _score([pdf], artifact)
    cached = pdf.assign(**{W.CACHED_ENCODING: [e if i % 2 else None for i, e in enumerate(fresh[W.ENCODING])]})
    model = artifact.load("cpu")
    encoded_rows = []
    real = model.encode_sequences
    monkeypatch.setattr(model, "encode_sequences", lambda p, b=None: encoded_rows.append(len(p)) or real(p, b))
    out = _score([cached], artifact)
    assert encoded_rows == [5]  # only the rows without a cached encoding
    assert out[W.FROM_CACHE].tolist() == [bool(i % 2) for i in range(9)]
    np.testing.assert_allclose(out[t.STAGE2_SCORE], fresh[t.STAGE2_SCORE], atol=1e-6)


def test_an_ensemble_scores_and_caches_like_a_single_model(tmp_path):
    """heavy.ensemble > 1: the worker's encodings hold every member's side by side, and scores from
    fresh or cached encodings equal the loaded ensemble's own predictions."""
    torch.manual_seed(1)
    config = dataclasses.replace(CONFIG, ensemble=2)
    cols = TAB + NBR
    std = H.Standardizer(cols, np.zeros(len(cols)), np.ones(len(cols)))
    model = H.TrainedHeavy(H.build_model(len(TAB), len(NBR), config).eval(), std, TAB, NBR, config)
    ensemble = W.HeavyArtifact.from_folder(model.save(tmp_path / "heavy"), version=6)
    pdf = _rows(9, 5)
    fresh = _score([pdf], ensemble)
    reference = H.load_heavy(ensemble.path, device="cpu")
    assert isinstance(reference.model, H.HeavyEnsemble)
    np.testing.assert_allclose(fresh[t.STAGE2_SCORE].to_numpy(), reference.predict(pdf), atol=1e-6)
    assert all(len(e) == 2 * CONFIG.seq_hidden for e in fresh[W.ENCODING])
    cached = pdf.assign(**{W.CACHED_ENCODING: list(fresh[W.ENCODING])})
    again = _score([cached], ensemble)
    assert again[W.FROM_CACHE].all()
    np.testing.assert_allclose(again[t.STAGE2_SCORE], fresh[t.STAGE2_SCORE], atol=1e-6)


def _pretend_cuda(monkeypatch, artifact, fail_at: str):
    """The worker sees CUDA; loading on it raises (``load``) or the loaded model raises on a batch."""
    monkeypatch.setattr(W, "resolved_device", lambda settings: "cuda")
    real_load = W.HeavyArtifact.load

    class Broken:
        config = CONFIG

        def encode_sequences(self, *a, **k):
            raise RuntimeError("CUDA error: out of memory")

    def load(self, device="cpu", quantize=False):
        if device == "cuda":
            if fail_at == "load":
                raise RuntimeError("CUDA driver initialization failed")
            return Broken()
        return real_load(self, device, quantize)

    monkeypatch.setattr(W.HeavyArtifact, "load", load)


@pytest.mark.parametrize("fail_at", ["load", "batch"])
def test_cuda_failure_falls_back_to_the_cpu_with_a_warning(artifact, monkeypatch, fail_at):
    batches = [_rows(6, 5), _rows(6, 6)]
    expected = _score(batches, artifact)
    _pretend_cuda(monkeypatch, artifact, fail_at)
    with pytest.warns(UserWarning, match="CUDA failed .* scoring on the CPU"):
        out = _score(batches, artifact, W.InferenceSettings(batch_size=4, device="cuda", quantize_cpu=False))
    np.testing.assert_allclose(out[t.STAGE2_SCORE], expected[t.STAGE2_SCORE], atol=1e-6)


def test_a_worker_at_another_precision_reports_it_and_ignores_the_cache(artifact, monkeypatch):
    """With cascade.quantize_cpu the CPU fallback after a CUDA failure encodes in int8: those encodings are
    reported as int8 (the cache stores them so), and the fp32 encodings the driver looked up are not fed to it."""
    pdf = _rows(8, 9)
    fp32 = _score([pdf], artifact)
    cached = pdf.assign(**{W.CACHED_ENCODING: [None, *fp32[W.ENCODING].iloc[1:]]})
    # on the CPU in fp32, as the driver expected: the cache is used
    same = pd.concat(list(W.score_partitions([cached], artifact, CPU_FP32, [t.ACCOUNT_ID], "stage2_heavy:5:fp32")))
    assert same[W.FROM_CACHE].tolist() == [False] + [True] * 7 and (same[W.ENCODER] == "stage2_heavy:5:fp32").all()
    # the driver saw no GPU and expected int8: this fp32 worker does not take its encodings
    other = pd.concat(list(W.score_partitions([cached], artifact, CPU_FP32, [t.ACCOUNT_ID], "stage2_heavy:5:int8")))
    assert not other[W.FROM_CACHE].any()
    settings = W.InferenceSettings(batch_size=4, device="cuda", quantize_cpu=True)
    int8_scores, int8_encodings = W.score_batch(artifact.load("cpu", quantize=True), pdf, settings.batch_size)
    _pretend_cuda(monkeypatch, artifact, "batch")
    key = W.encoder_key(artifact, settings)
    assert key == "stage2_heavy:5:fp32"  # the driver's: it sees CUDA
    with pytest.warns(UserWarning, match="CUDA failed"):
        out = pd.concat(list(W.score_partitions([cached], artifact, settings, [t.ACCOUNT_ID], key)))
    assert (out[W.ENCODER] == "stage2_heavy:5:int8").all() and not out[W.FROM_CACHE].any()
    np.testing.assert_allclose(np.stack(out[W.ENCODING]), np.stack(int8_encodings), atol=1e-6)
    np.testing.assert_allclose(out[t.STAGE2_SCORE], int8_scores, atol=1e-6)
    assert np.abs(np.stack(out[W.ENCODING]) - np.stack(fp32[W.ENCODING])).max() > 0  # not the cached fp32 ones


def test_each_task_uses_the_gpu_spark_gave_it(artifact, monkeypatch):
    import pyspark
    from pyspark.resource import ResourceInformation

    assert W.task_gpu() is None  # not in a Spark task
    task = type("Task", (), {"resources": lambda self: {"gpu": ResourceInformation("gpu", ["1"])}})()
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: task))
    assert W.task_gpu() == 1
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    _pretend_cuda(monkeypatch, artifact, "load")
    with pytest.warns(UserWarning, match="CUDA failed"):
        _score([_rows(4, 7)], artifact, W.InferenceSettings(batch_size=4, device="cuda", quantize_cpu=False))
    assert chosen == [1]  # before loading: "cuda" then means GPU 1, not GPU 0 for every task

    def unusable(index):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index}")

    monkeypatch.setattr(torch.cuda, "set_device", unusable)  # the first CUDA call can fail too
    with pytest.warns(UserWarning, match="CUDA failed .*invalid device ordinal"):
        _score([_rows(4, 7)], artifact, W.InferenceSettings(batch_size=4, device="cuda", quantize_cpu=False))
    monkeypatch.setitem(sys.modules, "pyspark", None)  # a GPU host without Spark (bench/gpu_inference.py)
    assert W.task_gpu() is None


def test_runtime_errors_on_the_cpu_raise(artifact, monkeypatch):
    model = artifact.load("cpu")

    def broken(*a, **k):
        raise RuntimeError("a bug, not CUDA")

    monkeypatch.setattr(model, "encode_sequences", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _score([_rows(4, 7)], artifact)


def test_loading_leaves_no_temporary_files(artifact, tmp_path, monkeypatch):
    """Each worker writes the shipped bytes to disk to load them; that folder must not outlive the load
    (a nightly run on long-lived workers would otherwise leak one per model version and process)."""
    monkeypatch.setattr(W.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(W, "_MODELS", {})
    model = artifact.load("cpu", quantize=False)
    assert model is artifact.load("cpu", quantize=False)  # cached per process
    assert list(tmp_path.iterdir()) == []


def test_a_reused_worker_loads_the_model_again_on_its_next_tasks_gpu(artifact, monkeypatch):
    """Python workers are reused across tasks; a task on GPU 1 after one on GPU 0 must not get the
    model cached on GPU 0 (its first layer would fail on GPU 1's inputs and the task fall back to the CPU)."""
    import botwatch.models.heavy as heavy

    monkeypatch.setattr(W, "_MODELS", {})
    current = [0]
    loads: list[int] = []

    def load_heavy(folder, device="cpu", name=None):
        loads.append(current[0])
        return object()

    monkeypatch.setattr(heavy, "load_heavy", load_heavy)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    on_gpu0 = artifact.load("cuda")
    assert artifact.load("cuda") is on_gpu0 and loads == [0]  # cached per GPU
    current[0] = 1  # the next task: torch.cuda.set_device(1)
    on_gpu1 = artifact.load("cuda")
    assert on_gpu1 is not on_gpu0 and loads == [0, 1]
    current[0] = 0
    assert artifact.load("cuda") is on_gpu0


@pytest.mark.parametrize(("knob", "value", "says"), [
    ("batch_size", -1, "cascade.batch_size must be at least 0, got -1"),
    ("device", "gpu", "cascade.device must be one of ('auto', 'cpu', 'cuda'), got 'gpu'"),
    ("torch_threads", -1, "cascade.torch_threads must be at least 0, got -1"),
    ("partitions", -2, "cascade.partitions must be at least 0, got -2"),
])
def test_inference_knobs_that_cannot_score_are_conf_errors(artifact, knob, value, says):
    """Refused when the settings are built (at start-up, from the conf), not by the Python workers after a night's
    stage-1 scores; the two the worker would fail on are shown failing there."""
    from botwatch.config import ConfigError

    for build in (lambda: W.InferenceSettings(**{knob: value}), lambda: W.InferenceSettings.from_conf({knob: value})):
        with pytest.raises(ConfigError) as refused:
            build()
        assert says in str(refused.value)
    if knob in ("batch_size", "device"):
        unchecked = dataclasses.replace(CPU_FP32)
        object.__setattr__(unchecked, knob, value)  # past the check, as the worker would have got it
        with pytest.raises(ValueError):
            _score([_rows(4, 7)], artifact, unchecked)


def test_every_refused_heavy_knob_is_named_at_once():
    from botwatch.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        H.HeavyConfig(epochs=0, batch_size=0, num_threads=-1)
    assert str(refused.value) == ("heavy.epochs must be at least 1, got 0; heavy.batch_size must be at least 1, got 0; "
                                  "heavy.num_threads must be at least 0, got -1")
