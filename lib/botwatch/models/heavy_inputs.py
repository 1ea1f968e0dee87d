"""The heavy model's input rows, built in Spark for a set of (account, feature date) rows:
tabular features (as model inputs), the account's event sequence as of that date and the
GraphSAGE mean of its sampled neighbours' features on that date.

Training asks for labelled rows at many feature dates, scoring for the flagged accounts of
one date; both read only those accounts' events and edges. The fingerprint column hashes an
account's sequence inputs with the model version, for the embedding cache.

Usage::

    rows = features.where(...).select("account_id", "run_date", *tabular_cols)
    inputs = heavy_inputs(events, edges, features, rows, tabular_cols, ["n_events_7d"], config)
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.models.sequences import SEQUENCE_COLUMNS, gather_sequences_at, neighbor_col, neighbor_mean_at
from botwatch.models.stage1 import as_model_input
from botwatch.schemas import require_columns

FINGERPRINT = "fingerprint"


def neighbor_columns(neighbor_features: Sequence[str]) -> list[str]:
    """The heavy model's neighbour inputs: ``nbr_<f>`` per feature, then ``nbr_count``."""
    return [neighbor_col(c) for c in neighbor_features] + [t.NBR_COUNT]


def _touching(edges: DataFrame, accounts: DataFrame) -> DataFrame:
    """Edges with either end in ``accounts``: every edge of those accounts, so their neighbour
    samples (hash ranks over their own pairs) are the same as on the whole graph."""
    ids = accounts.select(t.ACCOUNT_ID).distinct()
    return edges.join(ids.withColumnRenamed(t.ACCOUNT_ID, t.SRC), t.SRC, "left_semi").unionByName(
        edges.join(ids.withColumnRenamed(t.ACCOUNT_ID, t.DST), t.DST, "left_semi")
    )


def heavy_inputs(
    events: DataFrame,
    edges: DataFrame,
    features: DataFrame,
    rows: DataFrame,
    tabular_cols: Sequence[str],
    neighbor_features: Sequence[str],
    *,
    max_len: int,
    lookback_days: int,
    neighbor_k: int,
    neighbor_seed: int,
) -> DataFrame:
    """``rows`` (``account_id``, ``run_date``, other columns kept) with the tabular inputs as
    doubles (null -> NaN), the ``seq_*`` arrays (null: no events) and the neighbour means.

    ``features`` is the whole features table (neighbours' values come from it, at each row's
    ``run_date``). A tabular column the rows lack is fed as missing.
    """
    require_columns(rows, (t.ACCOUNT_ID, t.RUN_DATE), "heavy_inputs(rows)")
    require_columns(features, (t.ACCOUNT_ID, t.RUN_DATE, *neighbor_features), "heavy_inputs(features)")
    for c in tabular_cols:
        if c not in rows.columns:
            rows = rows.withColumn(c, F.lit(None).cast("double"))
    keep = [c for c in rows.columns if c not in tabular_cols]
    # Computed once: every pass below reads the rows, and as a lazy frame each would plan and run
    # their whole lineage again (for training: label resolution and the point-in-time join).
    base = rows.select(*keep, *as_model_input(tabular_cols)).localCheckpoint()
    keys = base.select(t.ACCOUNT_ID, t.RUN_DATE).distinct()

    dates = sorted(r[0] for r in keys.select(t.RUN_DATE).distinct().collect())
    if dates:
        # Literal bounds, so the scan reads only the partitions the sequences can use: the per-row
        # window below compares with each key's date, which no scan can prune by.
        first = dates[0] - dt.timedelta(days=lookback_days - 1)
        events = events.where(F.col(t.EVENT_DATE).between(F.lit(first), F.lit(dates[-1])))
    seqs = gather_sequences_at(events.join(keys.select(t.ACCOUNT_ID).distinct(), t.ACCOUNT_ID, "left_semi"),
                               keys, max_len, lookback_days).drop(t.SEQ_LEN)
    # Neighbours' values at each row's date, for every date in one pass (literal dates: pruned).
    at_dates = features.where(F.col(t.RUN_DATE).isin(*dates)) if dates else features.limit(0)
    nbrs = neighbor_mean_at(_touching(edges, keys), keys, at_dates, neighbor_features, neighbor_k, neighbor_seed)
    out = base.join(seqs, [t.ACCOUNT_ID, t.RUN_DATE], "left").join(nbrs, [t.ACCOUNT_ID, t.RUN_DATE], "left")
    # Accounts without a features row on that date: no neighbour sample, count 0.
    return out.withColumn(t.NBR_COUNT, F.coalesce(F.col(t.NBR_COUNT), F.lit(0)).cast("int"))


def fingerprint(model_version: str) -> Column:
    """Hash of an account's sequence inputs and the model version: equal fingerprints mean the
    cached sequence encoding is still the encoder's output for these events."""
    # A null sequence (no events) hashes as itself: xxhash64 skips nulls.
    return F.xxhash64(F.lit(model_version), *[F.col(c) for c in SEQUENCE_COLUMNS if c != t.SEQ_LEN])
