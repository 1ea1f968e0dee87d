"""Stage 2 in Spark: the heavy torch model scores rows of heavy inputs with ``mapInPandas``.

The model's files travel as bytes in the task closure (no shared file system needed) and are
loaded once per Python worker, cached by artifact path, device and precision. ``device: auto``
uses CUDA when the worker sees it; a CUDA failure falls back to the CPU with a warning. On the
CPU the model can be dynamically quantised to int8 (``cascade.quantize_cpu``).

The embedding cache (Delta table ``embedding_cache``) keeps each account's sequence encoding
with a fingerprint of its sequence inputs and the encoder; rows whose fingerprint matches skip
the GRU and only run the head.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import registry
from botwatch import tables as t
from botwatch.delta_io import read_table, table_exists, write_table
from botwatch.models.heavy_inputs import FINGERPRINT, heavy_inputs
from botwatch.tables import table_path

HEAVY_MODEL = "stage2_heavy"
ENCODING = "encoding"
CACHED_ENCODING = "_cached_encoding"
FROM_CACHE = "from_cache"
ENCODER = "encoder"  # model version and precision the cached encoding came from
STATE_FILE, META_FILE = "model.pt", "heavy.json"

log = logging.getLogger(__name__)

# embedding_cache columns: account_id, fingerprint, encoder, encoding (array<float>), run_date (the run that
# wrote the encoding).


@dataclass(frozen=True)
class InferenceSettings:
    """Knobs of stage-2 inference (conf section ``cascade``)."""

    batch_size: int = 1024
    device: str = "auto"
    quantize_cpu: bool = True
    torch_threads: int = 1
    partitions: int = 0
    embedding_cache: bool = True

    @classmethod
    def from_conf(cls, section: dict) -> InferenceSettings:
        return cls(**{k: section[k] for k in cls.__dataclass_fields__ if k in section})


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
        art = record["artifact_path"]
        return cls(
            version=int(record[t.VERSION]),
            path=art,
            meta_json=registry.read_artifact(art, META_FILE, binary=True).decode(),
            state=registry.read_artifact(art, STATE_FILE, binary=True),
            threshold=record.get("threshold"),
        )

    def load(self, device: str = "cpu", quantize: bool = False):
        """The model in this process (cached per process by path, device and precision)."""
        key = (self.path, hashlib.sha1(self.state).hexdigest(), device, quantize)
        if key not in _MODELS:
            from botwatch.models.heavy import load_heavy

            folder = Path(tempfile.mkdtemp(prefix="botwatch-heavy-"))
            (folder / META_FILE).write_text(self.meta_json)
            (folder / STATE_FILE).write_bytes(self.state)
            model = load_heavy(folder, device=device)
            _MODELS[key] = model.quantize_dynamic() if quantize else model
        return _MODELS[key]


_MODELS: dict[tuple, object] = {}


def artifact_inputs(spark: SparkSession, warehouse: str, rows: DataFrame, artifact: HeavyArtifact) -> DataFrame:
    """Heavy inputs of ``rows`` (``account_id``, ``run_date``, features) built the way ``artifact``
    was trained: its tabular columns, neighbour features, sequence length and neighbour sample."""
    import json

    from botwatch.models.heavy import HeavyConfig

    meta = json.loads(artifact.meta_json)
    cfg = HeavyConfig(**meta["config"])
    nbr_features = [c[len(t.NBR_PREFIX):] for c in meta["neighbor_cols"] if c != t.NBR_COUNT]
    tab = list(meta["tabular_cols"])
    keep = [c for c in rows.columns if c in (t.ACCOUNT_ID, t.RUN_DATE) or c in tab]
    return heavy_inputs(
        read_table(spark, warehouse, t.EVENTS), read_table(spark, warehouse, t.EDGES),
        read_table(spark, warehouse, t.FEATURES), rows.select(*keep), tab, nbr_features,
        max_len=cfg.max_len, lookback_days=cfg.lookback_days, neighbor_k=cfg.neighbor_k,
        neighbor_seed=cfg.neighbor_seed,
    )


def heavy_champion(spark: SparkSession, warehouse: str) -> HeavyArtifact | None:
    """The heavy champion, or ``None`` when none is registered (stage 2 is then skipped)."""
    champ = registry.champion(spark, warehouse, HEAVY_MODEL)
    return HeavyArtifact.from_record(champ) if champ else None


def resolved_device(settings: InferenceSettings) -> str:
    """``cpu`` or ``cuda`` as this process sees it (``auto``: CUDA when available)."""
    from botwatch.models.heavy import resolve_device

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_device(settings.device).type


def encoder_key(artifact: HeavyArtifact, settings: InferenceSettings) -> str:
    """Identifies the encoder behind an encoding: model version and precision."""
    quantized = resolved_device(settings) == "cpu" and settings.quantize_cpu
    return f"{artifact.model_version}:{'int8' if quantized else 'fp32'}"


def _score_batch(model, pdf: pd.DataFrame, batch_size: int) -> tuple[np.ndarray, list]:
    """Scores and encodings; cached encodings (column ``_cached_encoding``) skip the encoder."""
    enc = np.zeros((len(pdf), model.config.seq_hidden), dtype=np.float32)
    cached = pdf[CACHED_ENCODING].notna().to_numpy() if CACHED_ENCODING in pdf else np.zeros(len(pdf), bool)
    if cached.any():
        enc[cached] = np.stack(pdf.loc[cached, CACHED_ENCODING].to_numpy()).astype(np.float32)
    if (~cached).any():
        # Length-sorted batches: the GRU runs to each batch's longest sequence, so similar lengths pad less.
        todo = np.flatnonzero(~cached)
        lengths = np.fromiter((len(a) if isinstance(a, (list, np.ndarray)) else 0
                               for a in pdf[t.SEQ_EVENT_TYPE].iloc[todo]), np.int64, len(todo))
        order = todo[np.argsort(lengths, kind="stable")]
        enc[order] = model.encode_sequences(pdf.iloc[order], batch_size)
    return model.predict_from_encodings(enc, pdf, batch_size), list(enc)


def score_heavy(
    inputs: DataFrame, artifact: HeavyArtifact, settings: InferenceSettings, keep: tuple[str, ...] = (t.ACCOUNT_ID,)
) -> DataFrame:
    """``keep`` columns of ``inputs`` plus ``stage2_score``, ``encoding`` and ``from_cache``.

    ``inputs`` holds heavy inputs (:func:`botwatch.models.heavy_inputs.heavy_inputs`) and,
    optionally, ``_cached_encoding`` (null: run the encoder). Rows are repartitioned to
    ``settings.partitions`` (0: Spark's default parallelism) before scoring.
    """
    spark = inputs.sparkSession
    parts = settings.partitions or spark.sparkContext.defaultParallelism
    keep_fields = [f for f in inputs.schema.fields if f.name in keep]
    schema = T.StructType(keep_fields + [
        T.StructField(t.STAGE2_SCORE, T.DoubleType()),
        T.StructField(ENCODING, T.ArrayType(T.FloatType())),
        T.StructField(FROM_CACHE, T.BooleanType()),
    ])
    art, cfg, keep_cols = artifact, settings, list(keep)

    def _run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        device = resolved_device(cfg)

        def on_cpu(err: Exception):
            warnings.warn(f"stage 2: CUDA failed ({err}); scoring on the CPU from here on", stacklevel=1)
            log.warning("stage 2: CUDA failed (%s); falling back to the CPU", err)
            return "cpu", art.load("cpu", quantize=cfg.quantize_cpu)

        try:
            model = art.load(device, quantize=device == "cpu" and cfg.quantize_cpu)
        except RuntimeError as err:  # CUDA initialisation or out of memory
            if device != "cuda":
                raise
            device, model = on_cpu(err)
        for pdf in batches:
            if pdf.empty:
                continue
            try:
                scores, encodings = _score_batch(model, pdf, cfg.batch_size)
            except RuntimeError as err:  # CUDA out of memory, driver or kernel errors
                if device != "cuda":
                    raise
                device, model = on_cpu(err)
                scores, encodings = _score_batch(model, pdf, cfg.batch_size)
            out = pdf[keep_cols].copy()
            out[t.STAGE2_SCORE] = scores
            out[ENCODING] = encodings
            out[FROM_CACHE] = pdf[CACHED_ENCODING].notna() if CACHED_ENCODING in pdf else False
            yield out

    return inputs.repartition(parts, t.ACCOUNT_ID).mapInPandas(_run, schema)


# ---------------------------------------------------------------- embedding cache


def with_cached_encodings(spark: SparkSession, warehouse: str, inputs: DataFrame, encoder: str) -> DataFrame:
    """``inputs`` (with ``fingerprint``) plus ``_cached_encoding``: the cached encoding when the
    account's fingerprint and encoder match the cache, else null."""
    if not table_exists(spark, warehouse, t.EMBEDDING_CACHE):
        return inputs.withColumn(CACHED_ENCODING, F.lit(None).cast(T.ArrayType(T.FloatType())))
    cache = read_table(spark, warehouse, t.EMBEDDING_CACHE).where(F.col(ENCODER) == F.lit(encoder)).select(
        t.ACCOUNT_ID, F.col(FINGERPRINT).alias("_cached_fp"), F.col(ENCODING).alias(CACHED_ENCODING)
    )
    joined = inputs.join(cache, t.ACCOUNT_ID, "left")
    hit = F.col("_cached_fp") == F.col(FINGERPRINT)
    return joined.withColumn(CACHED_ENCODING, F.when(hit, F.col(CACHED_ENCODING))).drop("_cached_fp")


def update_embedding_cache(
    spark: SparkSession, warehouse: str, scored: DataFrame, encoder: str, run_date: dt.date
) -> None:
    """MERGE the freshly computed encodings (``from_cache`` false) into ``embedding_cache``,
    keyed on account_id: new accounts are inserted, changed ones replaced, the rest untouched."""
    fresh = scored.where(~F.col(FROM_CACHE)).select(
        F.col(t.ACCOUNT_ID).cast("long"),
        F.col(FINGERPRINT).cast("long"),
        F.lit(encoder).alias(ENCODER),
        F.col(ENCODING),
        F.lit(run_date).alias(t.RUN_DATE),
    )
    if not table_exists(spark, warehouse, t.EMBEDDING_CACHE):
        write_table(fresh, warehouse, t.EMBEDDING_CACHE)
        return
    from delta.tables import DeltaTable

    target = DeltaTable.forPath(spark, table_path(warehouse, t.EMBEDDING_CACHE))
    (
        target.alias("c")
        .merge(fresh.alias("n"), f"c.{t.ACCOUNT_ID} = n.{t.ACCOUNT_ID}")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
