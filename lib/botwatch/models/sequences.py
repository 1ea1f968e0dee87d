"""Inputs of the heavy model gathered in Spark: each account's recent action sequence and a
GraphSAGE-style mean of its sampled neighbours' tabular features.

Both are plain DataFrame -> DataFrame functions built from Spark's built-in functions (no
Python UDFs); the driver or a Python worker later turns their rows into tensors with
:func:`botwatch.models.heavy.to_tensors`.

Usage::

    seqs = gather_sequences(events, run_date, max_len=128)
    nbrs = neighbor_mean(edges, features, ["events_7d", "account_age_days"], k=16, seed=7, run_date=run_date)
    inputs = features.join(seqs, "account_id", "left").join(nbrs, "account_id", "left")
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.schemas import require_columns

SEQUENCE_COLUMNS = (t.SEQ_EVENT_TYPE, t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN, t.SEQ_HOUR_COS, t.SEQ_LEN)


def event_type_index(event_type: Column) -> Column:
    """1-based index of the event type in ``tables.EVENT_TYPES`` (0 stays free for padding); unknown -> n + 1."""
    pos = F.array_position(F.array(*[F.lit(e) for e in t.EVENT_TYPES]), event_type).cast("int")
    return F.when(pos > 0, pos).otherwise(F.lit(t.EVENT_TYPE_UNKNOWN))


def dt_bucket(seconds: Column) -> Column:
    """floor(log2(seconds + 1)) capped at 31, exactly: for s >= 0 it is bit_length(floor(s) + 1) - 1.

    Computed from the binary string, not from a float log, which rounds 2^k - 1 seconds into the
    wrong bucket. Null (no previous event) and negative gaps give 0.
    """
    whole = F.greatest(F.floor(seconds), F.lit(0)).cast("long")
    bucket = F.length(F.bin(whole + 1)) - 1
    return F.coalesce(F.least(bucket, F.lit(t.DT_BUCKET_MAX)), F.lit(0)).cast("int")


def hour_angle(ts: Column) -> Column:
    """UTC hour of day plus the minute fraction, as an angle on the unit circle (independent of the session zone)."""
    minutes_of_day = F.floor(F.pmod(F.unix_seconds(ts), F.lit(86400)) / 60)
    return minutes_of_day / F.lit(60.0 * 24.0) * F.lit(2.0 * math.pi)


def gather_sequences(
    events: DataFrame, run_date: dt.date, max_len: int, lookback_days: int = 28
) -> DataFrame:
    """Per account, the last ``max_len`` events dated in ``(run_date - lookback_days, run_date]``,
    oldest first, as arrays.

    Returns ``account_id``, ``seq_event_type`` (array<int>, index into ``EVENT_TYPES`` + 1),
    ``seq_dt_bucket`` (array<int>, floor(log2(seconds since the previous event + 1)), 0 for the
    first event of the window, capped at 31), ``seq_hour_sin`` / ``seq_hour_cos`` (array<double>,
    UTC time of day on the unit circle) and ``seq_len`` (int). The gap of the oldest kept event is
    measured to the event before it when the window holds one, so truncation loses no timing.
    Accounts without events in the window have no row (left-join and treat as empty).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}; set heavy.max_len in conf")
    if lookback_days < 1:
        raise ValueError(f"lookback_days must be >= 1, got {lookback_days}; set heavy.lookback_days in conf")
    require_columns(events, (t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.EVENT_DATE), "gather_sequences(events)")
    first_day = run_date - dt.timedelta(days=lookback_days - 1)
    recent = events.where(
        (F.col(t.EVENT_DATE) >= F.lit(first_day)) & (F.col(t.EVENT_DATE) <= F.lit(run_date))
    )
    # Newest first; event type and ids break ties so equal timestamps give the same order every run.
    tie_breaks = [F.col(c).desc_nulls_last() for c in (t.EVENT_TYPE, t.DEVICE_ID, t.IP_HASH) if c in events.columns]
    newest_first = Window.partitionBy(t.ACCOUNT_ID).orderBy(F.col(t.EVENT_TS).desc(), *tie_breaks)
    # With newest first, lead() is the previous event in time: one sort serves both.
    prev_ts = F.lead(t.EVENT_TS).over(newest_first)
    gap_seconds = (F.unix_micros(F.col(t.EVENT_TS)) - F.unix_micros(prev_ts)) / F.lit(1e6)
    angle = hour_angle(F.col(t.EVENT_TS))
    ranked = (
        recent.select(
            t.ACCOUNT_ID,
            F.row_number().over(newest_first).alias("_rn"),
            event_type_index(F.col(t.EVENT_TYPE)).alias("et"),
            dt_bucket(gap_seconds).alias("dt"),
            F.sin(angle).alias("hs"),
            F.cos(angle).alias("hc"),
        )
        .where(F.col("_rn") <= max_len)
    )
    # Sorting the structs by rank descending puts the oldest kept event first.
    steps = F.sort_array(F.collect_list(F.struct("_rn", "et", "dt", "hs", "hc")), asc=False)
    return (
        ranked.groupBy(t.ACCOUNT_ID)
        .agg(steps.alias("_s"))
        .select(
            t.ACCOUNT_ID,
            F.col("_s.et").alias(t.SEQ_EVENT_TYPE),
            F.col("_s.dt").alias(t.SEQ_DT_BUCKET),
            F.col("_s.hs").alias(t.SEQ_HOUR_SIN),
            F.col("_s.hc").alias(t.SEQ_HOUR_COS),
            F.size("_s").cast("int").alias(t.SEQ_LEN),
        )
    )


def neighbor_col(name: str) -> str:
    """Name of the neighbour aggregate of feature ``name`` (``nbr_<name>``)."""
    return f"{t.NBR_PREFIX}{name}"


def neighbor_mean(
    edges: DataFrame,
    tabular: DataFrame,
    feature_cols: Sequence[str],
    k: int,
    seed: int,
    run_date: dt.date,
) -> DataFrame:
    """GraphSAGE-style mean of ``feature_cols`` over up to ``k`` sampled undirected neighbours.

    Edges count as of ``run_date`` (created before the next day). Neighbours are sampled by a
    seeded hash rank, so the same seed picks the same neighbours on every run and every
    cluster. Null and NaN feature values are left out of each mean. ``tabular`` holds one row
    per account; the result has one row per account of ``tabular``: ``account_id``,
    ``nbr_<col>`` (double) for each feature and ``nbr_count`` (int, sampled neighbours);
    accounts without neighbours get null means and count 0.
    """
    require_columns(tabular, (t.ACCOUNT_ID, *feature_cols), "neighbor_mean(tabular)")
    at_date = tabular.withColumn(t.RUN_DATE, F.lit(run_date))
    return neighbor_mean_at(edges, at_date, at_date, feature_cols, k, seed).drop(t.RUN_DATE)


def neighbor_mean_at(
    edges: DataFrame,
    keys: DataFrame,
    features: DataFrame,
    feature_cols: Sequence[str],
    k: int,
    seed: int,
) -> DataFrame:
    """:func:`neighbor_mean` for many (account, date) pairs in one pass: for each row of ``keys``
    (``account_id``, ``run_date``) with a ``features`` row that date, the mean of ``feature_cols``
    over up to ``k`` of its neighbours as of the date (edges created before the next UTC midnight,
    a null time counting as old), their values from ``features`` at the date; sampled and averaged
    as :func:`neighbor_mean` describes. One scan of the edges and of the features for every date.
    Output: ``account_id``, ``run_date``, ``nbr_<col>`` and ``nbr_count`` (0 without neighbours)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}; set heavy.neighbor_k in conf")
    feature_cols = list(feature_cols)
    require_columns(edges, (t.SRC, t.DST, t.CREATED_AT), "neighbor_mean_at(edges)")
    require_columns(keys, (t.ACCOUNT_ID, t.RUN_DATE), "neighbor_mean_at(keys)")
    require_columns(features, (t.ACCOUNT_ID, t.RUN_DATE, *feature_cols), "neighbor_mean_at(features)")
    nbr = "neighbor_id"
    both = edges.select(F.col(t.SRC).alias(t.ACCOUNT_ID), F.col(t.DST).alias(nbr), t.CREATED_AT).unionByName(
        edges.select(F.col(t.DST).alias(t.ACCOUNT_ID), F.col(t.SRC).alias(nbr), t.CREATED_AT))
    # When each undirected pair first exists: its oldest follow (a null time is older than the data).
    since = both.where(F.col(t.ACCOUNT_ID) != F.col(nbr)).groupBy(t.ACCOUNT_ID, nbr).agg(
        F.min(F.coalesce(F.col(t.CREATED_AT), F.lit(dt.datetime(1970, 1, 1)))).alias("_since"))
    wanted = keys.select(t.ACCOUNT_ID, t.RUN_DATE).distinct().join(
        features.select(t.ACCOUNT_ID, t.RUN_DATE), [t.ACCOUNT_ID, t.RUN_DATE], "left_semi")
    # As of the date: created before the next (UTC) midnight, as edges_as_of.
    pairs = wanted.join(since, t.ACCOUNT_ID).where(
        F.col("_since") < F.to_timestamp(F.date_add(F.col(t.RUN_DATE), 1)))
    rank = Window.partitionBy(t.ACCOUNT_ID, t.RUN_DATE).orderBy(
        F.xxhash64(F.lit(seed), F.col(t.ACCOUNT_ID), F.col(nbr)), F.col(nbr))
    sampled = pairs.withColumn("_rn", F.row_number().over(rank)).where(F.col("_rn") <= k)
    values = features.select(
        F.col(t.ACCOUNT_ID).alias(nbr), t.RUN_DATE,
        *[F.nanvl(F.col(c).cast("double"), F.lit(None).cast("double")).alias(c) for c in feature_cols],
    )
    means = sampled.join(values, [nbr, t.RUN_DATE], "left").groupBy(t.ACCOUNT_ID, t.RUN_DATE).agg(
        *[F.avg(c).alias(neighbor_col(c)) for c in feature_cols],
        F.count(F.lit(1)).cast("int").alias(t.NBR_COUNT),
    )
    return wanted.join(means, [t.ACCOUNT_ID, t.RUN_DATE], "left").select(
        t.ACCOUNT_ID, t.RUN_DATE, *[neighbor_col(c) for c in feature_cols],
        F.coalesce(F.col(t.NBR_COUNT), F.lit(0)).cast("int").alias(t.NBR_COUNT),
    )


def gather_sequences_at(events: DataFrame, keys: DataFrame, max_len: int, lookback_days: int = 28) -> DataFrame:
    """:func:`gather_sequences` for many (account, date) pairs in one pass: for each row of
    ``keys`` (``account_id``, ``run_date``), the last ``max_len`` events dated in
    ``(run_date - lookback_days, run_date]``.

    Training rows sit at different feature dates (point in time), so each gets the sequence its
    own date saw. Only the keys' accounts' events are read. Output: ``account_id``, ``run_date``
    and the ``seq_*`` columns of :func:`gather_sequences`; pairs without events have no row.
    """
    if max_len < 1 or lookback_days < 1:
        raise ValueError(f"max_len and lookback_days must be >= 1, got {max_len}, {lookback_days}")
    require_columns(events, (t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.EVENT_DATE), "gather_sequences_at(events)")
    require_columns(keys, (t.ACCOUNT_ID, t.RUN_DATE), "gather_sequences_at(keys)")
    pairs = keys.select(t.ACCOUNT_ID, t.RUN_DATE).distinct()
    day = F.col(t.EVENT_DATE)
    recent = events.join(pairs, t.ACCOUNT_ID).where(
        (day <= F.col(t.RUN_DATE)) & (day > F.date_sub(F.col(t.RUN_DATE), lookback_days))
    )
    tie_breaks = [F.col(c).desc_nulls_last() for c in (t.EVENT_TYPE, t.DEVICE_ID, t.IP_HASH) if c in events.columns]
    newest_first = Window.partitionBy(t.ACCOUNT_ID, t.RUN_DATE).orderBy(F.col(t.EVENT_TS).desc(), *tie_breaks)
    prev_ts = F.lead(t.EVENT_TS).over(newest_first)
    gap_seconds = (F.unix_micros(F.col(t.EVENT_TS)) - F.unix_micros(prev_ts)) / F.lit(1e6)
    angle = hour_angle(F.col(t.EVENT_TS))
    ranked = recent.select(
        t.ACCOUNT_ID,
        t.RUN_DATE,
        F.row_number().over(newest_first).alias("_rn"),
        event_type_index(F.col(t.EVENT_TYPE)).alias("et"),
        dt_bucket(gap_seconds).alias("dt"),
        F.sin(angle).alias("hs"),
        F.cos(angle).alias("hc"),
    ).where(F.col("_rn") <= max_len)
    steps = F.sort_array(F.collect_list(F.struct("_rn", "et", "dt", "hs", "hc")), asc=False)
    return ranked.groupBy(t.ACCOUNT_ID, t.RUN_DATE).agg(steps.alias("_s")).select(
        t.ACCOUNT_ID,
        t.RUN_DATE,
        F.col("_s.et").alias(t.SEQ_EVENT_TYPE),
        F.col("_s.dt").alias(t.SEQ_DT_BUCKET),
        F.col("_s.hs").alias(t.SEQ_HOUR_SIN),
        F.col("_s.hc").alias(t.SEQ_HOUR_COS),
        F.size("_s").cast("int").alias(t.SEQ_LEN),
    )
