"""Stage 2 inside one Python worker: load the heavy model once, score batches of rows, and fall
back to the CPU when CUDA fails.

No pyspark here: Spark calls :func:`score_partitions` through ``mapInPandas``
(:func:`botwatch.scoring.stage2.score_heavy`), and a GPU host without Spark runs and benchmarks
the same code (``bench/gpu_inference.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from botwatch import tables as t
from botwatch.config import ConfigError
from botwatch.params import HeavyConfig, InferenceSettings

HEAVY_MODEL = "stage2_heavy"
ENCODING = "encoding"
CACHED_ENCODING = "_cached_encoding"
FROM_CACHE = "from_cache"
ENCODER = "encoder"  # model version and precision an encoding came from (the embedding cache's column too)
# A heavy-model artifact: torch state dict and metadata (botwatch.models.heavy writes them).
STATE_FILE, META_FILE = "model.pt", "heavy.json"
HEAVY_FORMAT_VERSION = 1  # of the artifacts this code writes and reads


def artifact_problem(meta: dict) -> str | None:
    """Why this code cannot load the heavy model whose ``heavy.json`` is ``meta`` (another format, another
    event vocabulary, or knobs this code does not take: a release since changed them), else None."""
    if meta.get("format_version") != HEAVY_FORMAT_VERSION or meta.get("kind") != "heavy":
        return f"format {meta.get('kind')} v{meta.get('format_version')}, this code reads heavy v{HEAVY_FORMAT_VERSION}"
    if meta.get("event_types") != list(t.EVENT_TYPES) or meta.get("dt_buckets") != t.DT_BUCKETS:
        return f"trained on event types {meta.get('event_types')}, this code has {list(t.EVENT_TYPES)}"
    try:
        HeavyConfig.saved(meta.get("config", {}))
    except ConfigError as e:
        return f"saved with knobs this code does not take: {e}"
    return None


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeavyArtifact:
    """A registered heavy model's files as bytes, ready to ship to Python workers."""

    version: int
    path: str
    meta_json: str
    state: bytes
    threshold: float | None

    @property
    def model_version(self) -> str:
        return f"{HEAVY_MODEL}:{self.version}"

    @classmethod
    def from_record(cls, record: dict) -> HeavyArtifact:
        from botwatch import registry  # pyspark: only where the registry is read

        art = record["artifact_path"]
        return cls(
            version=int(record[t.VERSION]),
            path=art,
            meta_json=registry.read_artifact(art, META_FILE, binary=True).decode(),
            state=registry.read_artifact(art, STATE_FILE, binary=True),
            threshold=record.get("threshold"),
        )

    @classmethod
    def from_folder(cls, folder: str | Path, version: int = 0, threshold: float | None = None) -> HeavyArtifact:
        """An artifact from a saved model's folder (``TrainedHeavy.save``) on a local disk."""
        folder = Path(folder)
        return cls(version=version, path=str(folder), meta_json=(folder / META_FILE).read_text(),
                   state=(folder / STATE_FILE).read_bytes(), threshold=threshold)

    def problem(self) -> str | None:
        """Why this code cannot load this model (:func:`artifact_problem`), else None."""
        return artifact_problem(json.loads(self.meta_json))

    def load(self, device: str = "cpu", quantize: bool = False):
        """The model in this process (cached per process by path, device and precision). ``cuda`` is
        the current CUDA device (the task's GPU, :func:`task_gpu`); a reused worker's next task may
        have another, and a model cached on the first one would fail there."""
        if device == "cuda":
            import torch

            device_key = f"cuda:{torch.cuda.current_device()}"
        else:
            device_key = device
        key = (self.path, hashlib.sha1(self.state).hexdigest(), device_key, quantize)
        if key not in _MODELS:
            from botwatch.models.heavy import load_heavy

            # load_heavy reads both files into memory, so the folder goes as soon as it returns.
            with tempfile.TemporaryDirectory(prefix="botwatch-heavy-") as tmp:
                folder = Path(tmp)
                (folder / META_FILE).write_text(self.meta_json)
                (folder / STATE_FILE).write_bytes(self.state)
                model = load_heavy(folder, device=device, name=f"{self.model_version} ({self.path})")
            _MODELS[key] = model.quantize_dynamic() if quantize else model
        return _MODELS[key]


_MODELS: dict[tuple, object] = {}


def resolved_device(settings: InferenceSettings) -> str:
    """``cpu`` or ``cuda`` as this process sees it (``auto``: CUDA when available)."""
    from botwatch.models.heavy import resolve_device

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_device(settings.device).type


def task_gpu() -> int | None:
    """The GPU Spark gave this task (``spark.task.resource.gpu.amount``), or None (not in a task, or
    no GPU resource, or no pyspark: a GPU host that runs this module alone). Without it every task on a
    multi-GPU executor would use GPU 0."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None

    ctx = TaskContext.get()
    gpu = ctx.resources().get("gpu") if ctx is not None else None
    return int(gpu.addresses[0]) if gpu is not None and gpu.addresses else None


def encoder_on(artifact: HeavyArtifact, settings: InferenceSettings, device: str) -> str:
    """Identifies the encoder behind an encoding made on ``device``: model version and precision."""
    quantized = device == "cpu" and settings.quantize_cpu
    return f"{artifact.model_version}:{'int8' if quantized else 'fp32'}"


def encoder_key(artifact: HeavyArtifact, settings: InferenceSettings) -> str:
    """The encoder as this process would run it (the driver's guess of its workers': a worker that
    falls back from CUDA, or runs on other hardware, reports its own in the ``encoder`` column)."""
    return encoder_on(artifact, settings, resolved_device(settings))


def score_batch(model, pdf: pd.DataFrame, batch_size: int) -> tuple[np.ndarray, list]:
    """Scores and encodings; cached encodings (column ``_cached_encoding``) skip the encoder."""
    enc = np.zeros((len(pdf), model.config.encoding_size), dtype=np.float32)
    cached = pdf[CACHED_ENCODING].notna().to_numpy() if CACHED_ENCODING in pdf else np.zeros(len(pdf), bool)
    if cached.any():
        enc[cached] = np.stack(pdf.loc[cached, CACHED_ENCODING].to_numpy()).astype(np.float32)
    if (~cached).any():
        # Length-sorted batches: the GRU runs to each batch's longest sequence, so similar lengths pad less.
        from botwatch.models.heavy import sequence_lengths

        todo = np.flatnonzero(~cached)
        lengths = sequence_lengths(pdf[t.SEQ_EVENT_TYPE].iloc[todo], model.config.max_len)
        order = todo[np.argsort(lengths, kind="stable")]
        enc[order] = model.encode_sequences(pdf.iloc[order], batch_size)
    return model.predict_from_encodings(enc, pdf, batch_size), list(enc)


def score_partitions(
    batches: Iterable[pd.DataFrame], artifact: HeavyArtifact, settings: InferenceSettings, keep: list[str],
    cached_encoder: str | None = None,
) -> Iterator[pd.DataFrame]:
    """``keep`` columns of each batch plus ``stage2_score``, ``encoding``, ``from_cache`` and
    ``encoder`` (the precision this worker encoded at).

    The body of stage 2's ``mapInPandas``. A ``RuntimeError`` on CUDA (initialisation, out of
    memory, a driver or kernel error), at load or on any batch, moves this worker to the CPU
    with a warning; the failed batch is scored again there. Cached encodings (``cached_encoder``'s)
    are used only while this worker's own encoder is that one: int8 on the CPU after a CUDA failure
    is not the fp32 the cache holds.
    """
    import torch

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = resolved_device(settings)

    def on_cpu(err: Exception):
        warnings.warn(f"stage 2: CUDA failed ({err}); scoring on the CPU from here on", stacklevel=1)
        log.warning("stage 2: CUDA failed (%s); falling back to the CPU", err)
        return "cpu", artifact.load("cpu", quantize=settings.quantize_cpu)

    try:
        gpu = task_gpu() if device == "cuda" else None
        if gpu is not None:
            torch.cuda.set_device(gpu)  # "cuda" below means this device; the first CUDA call, so inside the try
        model = artifact.load(device, quantize=device == "cpu" and settings.quantize_cpu)
    except RuntimeError as err:
        if device != "cuda":
            raise
        device, model = on_cpu(err)

    def usable(pdf: pd.DataFrame) -> pd.DataFrame:
        other = cached_encoder is not None and encoder_on(artifact, settings, device) != cached_encoder
        return pdf.assign(**{CACHED_ENCODING: None}) if other and CACHED_ENCODING in pdf else pdf

    for pdf in batches:
        if pdf.empty:
            continue
        try:
            pdf = usable(pdf)
            scores, encodings = score_batch(model, pdf, settings.batch_size)
        except RuntimeError as err:
            if device != "cuda":
                raise
            device, model = on_cpu(err)
            pdf = usable(pdf)
            scores, encodings = score_batch(model, pdf, settings.batch_size)
        out = pdf[keep].copy()
        out[t.STAGE2_SCORE] = scores
        out[ENCODING] = encodings
        out[FROM_CACHE] = pdf[CACHED_ENCODING].notna() if CACHED_ENCODING in pdf else False
        out[ENCODER] = encoder_on(artifact, settings, device)
        yield out
