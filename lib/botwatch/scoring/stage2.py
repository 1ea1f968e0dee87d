"""Stage 2 in Spark: the heavy torch model scores rows of heavy inputs with ``mapInPandas``.

The model's files travel as bytes in the task closure (no shared file system needed) and are
loaded once per Python worker, cached by artifact path, device and precision. ``device: auto``
uses CUDA when the worker sees it; a CUDA failure falls back to the CPU with a warning. On the
CPU the model can be dynamically quantised to int8 (``cascade.quantize_cpu``). What runs in the
worker is :mod:`botwatch.scoring.worker`, which has no pyspark.

The embedding cache (Delta table ``embedding_cache``) keeps each account's sequence encoding
with a fingerprint of its sequence inputs and the encoder; rows whose fingerprint matches skip
the GRU and only run the head.
"""
from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import registry
from botwatch import tables as t
from botwatch.delta_io import read_table, retried_commit, table_exists, write_table
from botwatch.features.activity import events_table
from botwatch.models.heavy_inputs import FINGERPRINT, heavy_inputs
from botwatch.params import HeavyConfig
from botwatch.scoring.worker import (  # noqa: F401  (re-exported: stage 2's public names)
    CACHED_ENCODING,
    ENCODER,
    ENCODING,
    FROM_CACHE,
    HEAVY_MODEL,
    META_FILE,
    STATE_FILE,
    HeavyArtifact,
    InferenceSettings,
    artifact_problem,
    encoder_key,
    resolved_device,
    score_partitions,
)
from botwatch.tables import table_path

# embedding_cache columns: account_id, fingerprint, encoder, encoding (array<float>), run_date (the run that
# wrote the encoding).


# The heavy knobs that shape a model's inputs (beyond its tabular and neighbour columns).
INPUT_KNOBS = ("max_len", "lookback_days", "neighbor_k", "neighbor_seed")


def built_like(artifact: HeavyArtifact, config: Mapping[str, Any], neighbor_cols: Sequence[str]) -> bool:
    """Whether inputs built with ``config`` (heavy knobs) and ``neighbor_cols`` are the ones
    ``artifact`` was trained on (its tabular columns are filled by name either way)."""
    meta = json.loads(artifact.meta_json)
    return list(meta["neighbor_cols"]) == list(neighbor_cols) and all(
        meta["config"].get(k) == config.get(k) for k in INPUT_KNOBS)


def artifact_inputs(spark: SparkSession, warehouse: str, rows: DataFrame, artifact: HeavyArtifact,
                    validated: tuple[dt.date, int] | None = None) -> DataFrame:
    """Heavy inputs of ``rows`` (``account_id``, ``run_date``, features) built the way ``artifact``
    was trained: its tabular columns, neighbour features, sequence length and neighbour sample.
    ``validated``: see :func:`botwatch.features.activity.events_table`."""
    meta = json.loads(artifact.meta_json)
    cfg = HeavyConfig.saved(meta["config"])
    nbr_features = [c[len(t.NBR_PREFIX):] for c in meta["neighbor_cols"] if c != t.NBR_COUNT]
    tab = list(meta["tabular_cols"])
    keep = [c for c in rows.columns if c in (t.ACCOUNT_ID, t.RUN_DATE) or c in tab]
    return heavy_inputs(
        events_table(spark, warehouse, validated), read_table(spark, warehouse, t.EDGES),
        read_table(spark, warehouse, t.FEATURES), rows.select(*keep), tab, nbr_features,
        max_len=cfg.max_len, lookback_days=cfg.lookback_days, neighbor_k=cfg.neighbor_k,
        neighbor_seed=cfg.neighbor_seed,
    )


def heavy_champion(spark: SparkSession, warehouse: str, as_of: dt.date | None = None) -> HeavyArtifact | None:
    """The heavy champion (with ``as_of``: the one of that date), or ``None`` when there is none
    (stage 2 is then skipped), or when this code cannot load it (a release changed the model's format or
    event types since: warned; the train step retrains it, :func:`heavy_champion_record`)."""
    # Not heavy_champion_status: the weights are read here anyway, heavy.json with them, once.
    champ = registry.champion(spark, warehouse, HEAVY_MODEL, as_of=as_of)
    if champ is None:
        return None
    artifact = HeavyArtifact.from_record(champ)
    problem = artifact.problem()
    if problem is None:
        return artifact
    warnings.warn(f"heavy champion {artifact.model_version} ({artifact.path}) cannot be loaded by this code: "
                  f"{problem}. Stage 2 is off until a heavy model trained by this code is promoted (the train "
                  "step retrains it)", stacklevel=2)
    return None


def heavy_champion_status(spark: SparkSession, warehouse: str,
                          as_of: dt.date | None = None) -> tuple[dict | None, str | None]:
    """The heavy champion's registry row (None: there is none) and why this code cannot load it (None: it
    can), reading only the model's ``heavy.json``, not its weights."""
    champ = registry.champion(spark, warehouse, HEAVY_MODEL, as_of=as_of)
    if champ is None:
        return None, None
    return champ, artifact_problem(registry.read_artifact(champ["artifact_path"], META_FILE))


def heavy_champion_record(spark: SparkSession, warehouse: str, as_of: dt.date | None = None) -> dict | None:
    """The registry row of :func:`heavy_champion` (None where that is None), without reading its weights."""
    champ, problem = heavy_champion_status(spark, warehouse, as_of)
    return None if problem is not None else champ


def score_heavy(
    inputs: DataFrame, artifact: HeavyArtifact, settings: InferenceSettings, keep: tuple[str, ...] = (t.ACCOUNT_ID,),
    cached_encoder: str | None = None,
) -> DataFrame:
    """``keep`` columns of ``inputs`` plus ``stage2_score``, ``encoding``, ``from_cache`` and ``encoder``
    (the model version and precision each worker encoded at).

    ``inputs`` holds heavy inputs (:func:`botwatch.models.heavy_inputs.heavy_inputs`) and,
    optionally, ``_cached_encoding`` (null: run the encoder), ``cached_encoder``'s encodings. Rows
    are repartitioned to ``settings.partitions`` (0: Spark's default parallelism) before scoring.
    """
    spark = inputs.sparkSession
    parts = settings.partitions or spark.sparkContext.defaultParallelism
    keep_fields = [f for f in inputs.schema.fields if f.name in keep]
    schema = T.StructType(keep_fields + [
        T.StructField(t.STAGE2_SCORE, T.DoubleType()),
        T.StructField(ENCODING, T.ArrayType(T.FloatType())),
        T.StructField(FROM_CACHE, T.BooleanType()),
        T.StructField(ENCODER, T.StringType()),
    ])
    art, cfg, keep_cols = artifact, settings, list(keep)

    def _run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return score_partitions(batches, art, cfg, keep_cols, cached_encoder)

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


def update_embedding_cache(spark: SparkSession, warehouse: str, scored: DataFrame, run_date: dt.date) -> None:
    """MERGE the freshly computed encodings (``from_cache`` false) into ``embedding_cache``, each
    under the encoder its worker ran, keyed on account_id: new accounts are inserted, changed ones
    replaced, the rest untouched."""
    fresh = scored.where(~F.col(FROM_CACHE)).select(
        F.col(t.ACCOUNT_ID).cast("long"),
        F.col(FINGERPRINT).cast("long"),
        F.col(ENCODER),
        F.col(ENCODING),
        F.lit(run_date).alias(t.RUN_DATE),
    )
    if not table_exists(spark, warehouse, t.EMBEDDING_CACHE):
        write_table(fresh, warehouse, t.EMBEDDING_CACHE)
        return
    from delta.tables import DeltaTable

    def commit() -> None:
        (
            DeltaTable.forPath(spark, table_path(warehouse, t.EMBEDDING_CACHE)).alias("c")
            .merge(fresh.alias("n"), f"c.{t.ACCOUNT_ID} = n.{t.ACCOUNT_ID}")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )

    # Another date's stage 2 (a backfill) may commit first: the MERGE reads the table again and retries.
    retried_commit(commit, f"caching the encodings of {run_date}", t.EMBEDDING_CACHE, "rerun the score_stage2 step")
