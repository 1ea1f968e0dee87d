"""Activity features: mergeable per-(account, day) partials, and 1d/7d/28d windows built from them.

The nightly job reads ONE day of events: :func:`daily_partials` turns it into one row per account
(the ``activity_daily`` table, written by :func:`build_activity_daily`), and :func:`window_features`
combines the partials of the last ``w`` days -- histograms and counts are summed, maxima maxed, HLL
sketches unioned, and inter-event times and sessions stitched across midnight from each day's first
and last event. The cost is O(new events + accounts x days); raw events are never rescanned.
:func:`activity_features_from_scratch` computes the same features straight from raw events: it is
the reference for the incremental path and the benchmark's full recompute.

Definitions (times are UTC unless "local"):

- Window ``w`` for run date D covers the days D-w+1 .. D, by ``event_date`` (which must be the UTC
  date of ``event_ts``; ingest checks it). Column names carry the window: ``n_events_7d``.
- Inter-event time (IET): seconds between consecutive events of an account, across day boundaries
  inside the window (the first event of the window has none). Histogram bin
  ``floor(log2(IET + 1))``, ``IET_BINS`` = 32 bins (bin b holds [2^b - 1, 2^(b+1) - 1) seconds; the
  last bin also takes anything longer).
- Session: consecutive events with gaps <= ``SESSION_GAP_SECONDS`` (30 min); a longer gap starts a
  new session. Its length is last minus first event (0 for a single event).
- ``max_events_per_minute`` / ``_per_hour``: the most events in one clock minute / hour (UTC).
- Entropies are Shannon entropies in bits of count histograms: ``hour_entropy`` (24 UTC hours),
  ``iet_entropy`` (IET bins; null without any IET), ``dow_entropy`` (7 UTC weekdays),
  ``event_type_entropy`` (``tables.EVENT_TYPES``; other types count in ``n_events`` only).
- ``burstiness`` = (sigma - mu) / (sigma + mu) of the IETs, population sigma; null with fewer
  than 2 IETs, or when sigma + mu = 0 (every event at one instant).
- ``circadian_amplitude`` = abs(numpy.fft.fft(p)[1]) for p the normalised 24-bin LOCAL hour
  histogram; ``night_share`` = share of events in local hours 0..5. Local time is UTC plus the
  country's whole-hour offset (``tables.COUNTRY_UTC_OFFSET``); both are null when no day of the
  window has a known offset (days without one are left out of the local histogram).
- ``distinct_ips`` / ``distinct_devices``: HyperLogLog estimates (lgConfigK 12, relative standard
  error about 1.6%); null IPs/devices are not counted, and a window whose events all lack one gets
  null (unknown), not 0.
- Every feature of a window without events is NULL, and ``has_activity_{w}d`` is false.

Usage::

    build_activity_daily(spark, warehouse, day)                  # nightly: one day of events
    feats = activity_features(spark, warehouse, day, [1, 7, 28])  # one row per recently active account
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import delta_io
from botwatch import tables as t
from botwatch.schemas import require_columns

# Partials bake in the session gap, the IET bins and the sketch size: changing one means
# rebuilding activity_daily for the window's days.
SESSION_GAP_SECONDS = 1800
IET_BINS = 32
HOURS = 24
DAYS_OF_WEEK = 7
NIGHT_HOURS = range(0, 6)
HLL_LG_CONFIG_K = 12  # every partial must use the same size, or unions need allowDifferentLgConfigK
DEFAULT_WINDOWS = (1, 7, 28)

# ---- activity_daily columns (one row per account_id x day) ----
DOW = "dow"  # UTC day of week of `day`, 0 = Monday
UTC_OFFSET_HOURS = "utc_offset_hours"
N_EVENTS = "n_events"
HOUR_HIST_UTC = "hour_hist_utc"
HOUR_HIST_LOCAL = "hour_hist_local"
IET_HIST = "iet_hist"
IET_COUNT = "iet_count"
IET_SUM = "iet_sum"
IET_SUMSQ = "iet_sumsq"
EVENT_TYPE_COUNTS = "event_type_counts"
MAX_EVENTS_PER_MINUTE = "max_events_per_minute"
MAX_EVENTS_PER_HOUR = "max_events_per_hour"
SESSION_COUNT = "session_count"
SESSION_SECONDS = "session_seconds"
FIRST_TS = "first_ts"
LAST_TS = "last_ts"
IP_SKETCH = "ip_sketch"
DEVICE_SKETCH = "device_sketch"
LOCAL_DAYS = "local_days"  # days of a window whose local hour histogram is known
# ---- activity_window columns (the rolled state: one row per account_id x window x run_date) ----
WINDOW_DAYS = "window_days"
WINDOW_SPEC = "window_spec"

# ---- window features: column f"{name}_{w}d" ----
HAS_ACTIVITY = "has_activity"
HOUR_ENTROPY = "hour_entropy"
IET_ENTROPY = "iet_entropy"
BURSTINESS = "burstiness"
CIRCADIAN_AMPLITUDE = "circadian_amplitude"
NIGHT_SHARE = "night_share"
DOW_ENTROPY = "dow_entropy"
EVENT_TYPE_ENTROPY = "event_type_entropy"
DISTINCT_IPS = "distinct_ips"
DISTINCT_DEVICES = "distinct_devices"
MEAN_SESSION_SECONDS = "mean_session_seconds"
FEATURE_NAMES = (
    N_EVENTS,
    HOUR_ENTROPY,
    IET_ENTROPY,
    BURSTINESS,
    MAX_EVENTS_PER_MINUTE,
    MAX_EVENTS_PER_HOUR,
    CIRCADIAN_AMPLITUDE,
    NIGHT_SHARE,
    DOW_ENTROPY,
    EVENT_TYPE_ENTROPY,
    DISTINCT_IPS,
    DISTINCT_DEVICES,
    SESSION_COUNT,
    MEAN_SESSION_SECONDS,
)

# private working columns
_TS = "_ts_us"
_PREV_TS = "_prev_ts_us"
_PREV_DAY = "_prev_day"
_IET = "_iet"
_RN = "_rn"
_MINUTE_POS = "_minute_pos"
_HOUR_POS = "_hour_pos"
_DOW_HIST = "_dow_hist"
_W = "_window"
_GAP = "_gap"

_US = 1_000_000
_MINUTE_US = 60 * _US
_HOUR_US = 3600 * _US

EVENT_COLUMNS: dict[str, T.DataType] = {
    t.ACCOUNT_ID: T.LongType(),
    t.EVENT_TS: T.TimestampType(),
    t.EVENT_TYPE: T.StringType(),
    t.IP_HASH: T.StringType(),
    t.DEVICE_ID: T.StringType(),
    t.EVENT_DATE: T.DateType(),
}
ACCOUNT_COLUMNS: dict[str, T.DataType] = {t.ACCOUNT_ID: T.LongType(), t.COUNTRY: T.StringType()}
PARTIAL_COLUMNS = (t.ACCOUNT_ID, t.DAY, DOW, N_EVENTS, HOUR_HIST_UTC, HOUR_HIST_LOCAL, IET_HIST, IET_COUNT,
                   IET_SUM, IET_SUMSQ, EVENT_TYPE_COUNTS, MAX_EVENTS_PER_MINUTE, MAX_EVENTS_PER_HOUR,
                   SESSION_COUNT, SESSION_SECONDS, FIRST_TS, LAST_TS, IP_SKETCH, DEVICE_SKETCH)


# The additive window sums carried from day to day in ``activity_window`` (per account x window),
# before their histograms are packed into long columns (see :func:`state_columns`).
# The inter-event-time and session-length sums are kept there as fixed point in two longs: whole seconds, and the
# rest in units of 2^-52 (even a year-long window's ~730 terms stay below 2^63). A sum of doubles
# that absorbed a long gap's square (10^11-10^13 s^2) rounded away the later small ones, and
# subtracting the gap when its day left the window left a rounding residue for them (a burst after
# weeks of silence: burstiness -1 instead of -0.42). Each double term becomes the same two longs
# when added and when removed, and long sums are exact, so the roll equals the sum of the window's
# terms. (Decimal(38,18) sums, tried first, aggregate through BigDecimal.)
EXACT_SUMS = (IET_SUM, IET_SUMSQ, SESSION_SECONDS)
_FRAC_SCALE = float(1 << 52)
STATE_VALUES = (N_EVENTS, HOUR_HIST_UTC, HOUR_HIST_LOCAL, LOCAL_DAYS, IET_HIST, IET_COUNT, IET_SUM, IET_SUMSQ,
                EVENT_TYPE_COUNTS, _DOW_HIST, SESSION_COUNT, SESSION_SECONDS)
_DAY_SECONDS = 86_400


class WindowSpecError(ValueError):
    """The feature windows are not a non-empty list of positive whole days."""


def windowed(name: str, days: int) -> str:
    """Column name of feature ``name`` over a ``days``-day window: ``windowed("n_events", 7) == "n_events_7d"``."""
    return f"{name}_{days}d"


def feature_columns(windows: Sequence[int] = DEFAULT_WINDOWS) -> list[str]:
    """The output columns of :func:`window_features`, after ``account_id``, in order."""
    return [windowed(n, w) for w in check_windows(windows) for n in (HAS_ACTIVITY, *FEATURE_NAMES)]


def state_iet_bins(windows: Sequence[int] = DEFAULT_WINDOWS) -> int:
    """IET bins the window state keeps: an IET inside a window of w days is shorter than w days, so
    the bins past floor(log2(w days in seconds)) stay empty (28 days: bins 0..21 of 32)."""
    return min(IET_BINS, (max(check_windows(windows)) * _DAY_SECONDS).bit_length())


def _state_hist_sizes(windows: Sequence[int]) -> dict[str, int]:
    return {HOUR_HIST_UTC: HOURS, HOUR_HIST_LOCAL: HOURS, IET_HIST: state_iet_bins(windows),
            EVENT_TYPE_COUNTS: len(t.EVENT_TYPES), _DOW_HIST: DAYS_OF_WEEK}


# Histogram bins are packed two to a long state column, 31 bits each: the rolled aggregation,
# the state table and its reads carry half as many values. A sum of packed values is the packed
# sum of the bins while every bin's window total stays under 2^31 (2.1 billion events in one bin
# of one window); negative terms (days leaving a window) are fine, as the totals are not.
_LANES = 2
_LANE_BITS = 31
_LANE_MASK = (1 << _LANE_BITS) - 1


def exact_sum_columns(name: str) -> list[str]:
    """The two long state columns of exact sum ``name``: ``[f"{name}_whole", f"{name}_frac"]``."""
    return [f"{name}_whole", f"{name}_frac"]


def _exact_terms(name: str, term: Column, sign: int) -> dict[str, Column]:
    """A double term of exact sum ``name`` as its two longs (negated to remove it)."""
    whole = F.floor(term)
    frac = F.round((term - whole) * _FRAC_SCALE).cast("long")  # x - floor(x) is exact in doubles
    cols = [whole, frac] if sign > 0 else [-whole, -frac]
    return dict(zip(exact_sum_columns(name), cols, strict=True))


def exact_total(name: str) -> Column:
    """The double value of exact sum ``name`` from its two state columns."""
    whole, frac = (F.col(c) for c in exact_sum_columns(name))
    return whole.cast("double") + frac.cast("double") / _FRAC_SCALE


def packed_column(hist: str, j: int) -> str:
    """State column ``j`` of histogram ``hist``, holding bins ``2j`` and ``2j + 1``:
    ``packed_column("iet_hist", 0) == "iet_hist_p0"``."""
    return f"{hist}_p{j}"


def _packed_columns(hist: str, size: int) -> list[str]:
    """The state columns of a ``size``-bin histogram ``hist``, in bin order."""
    return [packed_column(hist, j) for j in range(-(-size // _LANES))]


def pack_bins(bins: Sequence[Column]) -> list[Column]:
    """Bin counts -> packed longs, ``_LANES`` bins each (the first bin in the low bits)."""
    out = []
    for j in range(0, len(bins), _LANES):
        lanes = [b.cast("long") for b in bins[j:j + _LANES]]
        packed = lanes[0]
        for k, lane in enumerate(lanes[1:], 1):
            packed = packed + F.shiftleft(lane, _LANE_BITS * k)
        out.append(packed)
    return out


def unpack_bins(packed: Sequence[Column], size: int) -> list[Column]:
    """Packed longs -> the ``size`` bin counts (inverse of :func:`pack_bins` for non-negative bins)."""
    return [F.shiftright(packed[i // _LANES], _LANE_BITS * (i % _LANES)).bitwiseAND(F.lit(_LANE_MASK))
            for i in range(size)]


def state_columns(windows: Sequence[int] = DEFAULT_WINDOWS) -> list[str]:
    """The value columns of the ``activity_window`` state, in order: :data:`STATE_VALUES` with each
    histogram as packed long columns (:func:`packed_column`): no arrays built and taken apart per
    row, plain Parquet columns, and 49 sums instead of 99 for windows up to 28 days."""
    sizes = _state_hist_sizes(windows)
    return [b for c in STATE_VALUES
            for b in (_packed_columns(c, sizes[c]) if c in sizes else exact_sum_columns(c) if c in EXACT_SUMS
                      else [c])]


# ---------------------------------------------------------------------------------------------
# Column -> Column formulas (applied to summed histograms; each tested column by column)
# ---------------------------------------------------------------------------------------------


Bins = Column | Sequence[Column]  # a histogram: an array column, or one expression per bin


def _elements(counts: Bins, size: int) -> list[Column]:
    # Fixed-size histograms are unrolled into element expressions: Spark compiles those, while
    # higher-order functions (transform/aggregate) are interpreted row by row (2-3x slower here).
    if isinstance(counts, Column):
        return [F.get(counts, i) for i in range(size)]
    return list(counts)


def _total(xs: list[Column]) -> Column:
    return sum(xs[1:], xs[0]).cast("double")


def entropy_bits(counts: Bins, size: int) -> Column:
    """Shannon entropy in bits of a ``size``-bin histogram (an array of non-negative counts, or
    one column per bin); null when it sums to 0 (or is null). Equals ``scipy.stats.entropy(counts, base=2)``.
    """
    xs = _elements(counts, size)
    total = _total(xs)
    one = F.lit(1)
    # H = log2(N) - sum(c log2 c) / N (0 log 0 = 0), clamped at 0 against rounding.
    plogp = _total([x * F.log2(F.greatest(x, one)) for x in xs])
    return F.when(total > 0, F.greatest(F.log2(total) - F.try_divide(plogp, total), F.lit(0.0)))


def harmonic_amplitude(counts: Bins, size: int, k: int = 1) -> Column:
    """Amplitude of the k-th harmonic of the normalised ``size``-bin histogram:
    ``abs(numpy.fft.fft(p)[k])`` with ``p = counts / sum(counts)``; null when it sums to 0. With 24
    hour bins and k=1: the strength of the 24-hour rhythm (0 for a flat day, 1 when every event
    falls in one hour)."""
    xs = _elements(counts, size)
    total = _total(xs)
    angles = [2.0 * math.pi * k * i / size for i in range(size)]
    re = _total([x * math.cos(a) for x, a in zip(xs, angles, strict=True)])
    im = _total([x * math.sin(a) for x, a in zip(xs, angles, strict=True)])
    return F.when(total > 0, F.try_divide(F.sqrt(re * re + im * im), total))


def bins_share(counts: Bins, size: int, bins: Sequence[int]) -> Column:
    """Share of a ``size``-bin histogram's mass in ``bins`` (e.g. night hours 0..5); null when it
    sums to 0."""
    xs = _elements(counts, size)
    total = _total(xs)
    return F.when(total > 0, F.try_divide(_total([xs[b] for b in bins]), total))


def burstiness(n: Column, total: Column, total_sq: Column) -> Column:
    """(sigma - mu) / (sigma + mu) from the count, sum and sum of squares of inter-event times
    (population sigma); null when n < 2 or sigma + mu = 0."""
    n_d = n.cast("double")
    # try_divide: ANSI mode evaluates shared subexpressions before the guard.
    mu = F.try_divide(total, n_d)
    sigma = F.sqrt(F.greatest(F.try_divide(total_sq, n_d) - mu * mu, F.lit(0.0)))
    return F.when((n >= 2) & (sigma + mu > 0), F.try_divide(sigma - mu, sigma + mu))


def log2_bin(seconds: Column, bins: int = IET_BINS) -> Column:
    """Inter-event-time bin ``floor(log2(seconds + 1))``, capped at ``bins - 1``."""
    b = F.floor(F.log2(seconds + 1.0)).cast("int")
    # Not least(): it skips nulls, and a missing IET must stay null.
    return F.when(b > bins - 1, F.lit(bins - 1)).otherwise(b)


def rotate_hours(hist: Column, offset_hours: Column) -> Column:
    """UTC hour histogram -> local one: ``local[h] = utc[(h - offset) mod 24]``; null for a null offset."""
    return F.when(
        offset_hours.isNotNull(),
        F.array(*[F.get(hist, F.pmod(F.lit(h) - offset_hours, F.lit(HOURS))) for h in range(HOURS)]),
    )


def utc_offset_hours(country: Column) -> Column:
    """Whole-hour UTC offset of a country code (``tables.COUNTRY_UTC_OFFSET``); null when unknown."""
    pairs = [F.lit(x) for kv in sorted(t.COUNTRY_UTC_OFFSET.items()) for x in kv]
    return F.create_map(*pairs)[country].cast("int")


# ---------------------------------------------------------------------------------------------
# Daily partials
# ---------------------------------------------------------------------------------------------


def check_windows(windows: Sequence[int]) -> tuple[int, ...]:
    """``windows`` sorted, once each; :class:`WindowSpecError` unless positive whole days."""
    ok = (isinstance(windows, (list, tuple)) and bool(windows)
          and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in windows))
    if not ok:
        raise WindowSpecError(
            f"feature windows must be a non-empty list of positive whole days (e.g. [1, 7, 28]), got {windows!r}; "
            "fix features.windows in the conf"
        )
    return tuple(sorted(set(windows)))


def _with_event_timing(events: DataFrame, keys: Sequence[str]) -> DataFrame:
    """Per event: the IET in seconds since the previous event with the same ``keys`` (an account,
    or an account-day), and its position inside its clock minute and clock hour (the last event
    of a minute has position = the minute's event count).

    Every column comes from windows over the same partition and order, so one shuffle and one
    sort serve them all (positions: row number minus the row number where the minute began)."""
    ordered = Window.partitionBy(*keys).orderBy(_TS)
    upto_here = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    prev = F.col(_PREV_TS)
    rn = F.col(_RN)

    def position(unit_us: int) -> Column:
        starts = F.when(prev.isNull() | (F.expr(f"{_TS} div {unit_us}") != F.expr(f"{_PREV_TS} div {unit_us}")), rn)
        return rn - F.max(starts).over(upto_here) + 1

    return (
        events.withColumn(_RN, F.row_number().over(ordered))
        .withColumn(_PREV_TS, F.lag(_TS).over(ordered))
        .withColumn(_IET, (F.col(_TS) - prev) / float(_US))
        .withColumn(_MINUTE_POS, position(_MINUTE_US))
        .withColumn(_HOUR_POS, position(_HOUR_US))
    )


def _count(cond: Column) -> Column:
    """Rows where ``cond`` holds. Not count_if(): Spark 4 rewrites each count_if into an extra
    projected column, and past 100 columns the stage loses whole-stage code generation."""
    return F.sum(F.when(cond, 1).otherwise(0))


def _event_sums(iet: Column, gap_seconds: int) -> list[Column]:
    """Aggregates over the events of one group whose IET column is ``iet`` (null: no previous
    event in the group). Shared by the daily partials and the from-scratch path."""
    hour = F.expr(f"pmod({_TS} div {_HOUR_US}, {HOURS})")
    ibin = log2_bin(iet)
    return [
        F.count(F.lit(1)).alias(N_EVENTS),
        F.array(*[_count(hour == h) for h in range(HOURS)]).alias(HOUR_HIST_UTC),
        F.array(*[_count(ibin == b) for b in range(IET_BINS)]).alias(IET_HIST),
        F.count(iet).alias(IET_COUNT),
        F.coalesce(F.sum(iet), F.lit(0.0)).alias(IET_SUM),
        F.coalesce(F.sum(iet * iet), F.lit(0.0)).alias(IET_SUMSQ),
        F.array(*[_count(F.col(t.EVENT_TYPE) == ty) for ty in t.EVENT_TYPES]).alias(EVENT_TYPE_COUNTS),
        F.max(_MINUTE_POS).alias(MAX_EVENTS_PER_MINUTE),
        F.max(_HOUR_POS).alias(MAX_EVENTS_PER_HOUR),
        _count(iet.isNull() | (iet > gap_seconds)).alias(SESSION_COUNT),
        F.coalesce(F.sum(F.when(iet <= gap_seconds, iet)), F.lit(0.0)).alias(SESSION_SECONDS),
    ]


def _sketches(events: DataFrame, keys: Sequence[str]) -> DataFrame:
    """HLL sketches of IPs and devices per ``keys``. Kept out of the numeric aggregation: a sketch
    aggregate turns the whole aggregation into an uncompiled object aggregate."""
    return events.groupBy(*keys).agg(
        F.hll_sketch_agg(t.IP_HASH, HLL_LG_CONFIG_K).alias(IP_SKETCH),
        F.hll_sketch_agg(t.DEVICE_ID, HLL_LG_CONFIG_K).alias(DEVICE_SKETCH),
    )


def _account_offsets(accounts: DataFrame) -> DataFrame:
    offsets = accounts.select(t.ACCOUNT_ID, utc_offset_hours(F.col(t.COUNTRY)).alias(UTC_OFFSET_HOURS))
    return offsets.dropDuplicates([t.ACCOUNT_ID])


def _event_input(events: DataFrame, where: Column) -> DataFrame:
    return events.where(where).select(
        t.ACCOUNT_ID,
        F.unix_micros(t.EVENT_TS).alias(_TS),
        t.EVENT_DATE,
        t.EVENT_TYPE,
        t.IP_HASH,
        t.DEVICE_ID,
    )


def daily_partials(
    events: DataFrame,
    accounts: DataFrame,
    day: dt.date,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """One row per account active on ``day`` (UTC), from that day's events only: the
    ``activity_daily`` partition ``day``. Columns: :data:`PARTIAL_COLUMNS`.

    >>> partials = daily_partials(events, accounts, dt.date(2024, 5, 1))  # doctest: +SKIP
    """
    return daily_partials_range(events, accounts, day, day, session_gap_seconds)


def daily_partials_range(
    events: DataFrame,
    accounts: DataFrame,
    first_day: dt.date,
    last_day: dt.date,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """The partials of every day in ``first_day .. last_day`` in one job (a backfill); each
    (account, day) row equals :func:`daily_partials` of that day."""
    require_columns(events, EVENT_COLUMNS, "activity daily partials (events)")
    require_columns(accounts, ACCOUNT_COLUMNS, "activity daily partials (accounts)")
    if last_day < first_day:
        raise ValueError(f"daily partials: last day {last_day} is before first day {first_day}")
    keys = [t.ACCOUNT_ID, t.EVENT_DATE]
    ev = _event_input(events, F.col(t.EVENT_DATE).between(F.lit(first_day), F.lit(last_day)))
    numeric = (
        _with_event_timing(ev, keys)
        .groupBy(*keys)
        .agg(
            *_event_sums(F.col(_IET), session_gap_seconds),
            F.timestamp_micros(F.min(_TS)).alias(FIRST_TS),
            F.timestamp_micros(F.max(_TS)).alias(LAST_TS),
        )
    )
    return (
        numeric.join(_sketches(ev, keys), keys)
        # No broadcast hint: the full account table may not fit the driver; Spark broadcasts it when small.
        .join(_account_offsets(accounts), t.ACCOUNT_ID, "left")
        .withColumnRenamed(t.EVENT_DATE, t.DAY)
        .withColumn(DOW, F.weekday(F.col(t.DAY)))
        .withColumn(HOUR_HIST_LOCAL, rotate_hours(F.col(HOUR_HIST_UTC), F.col(UTC_OFFSET_HOURS)))
        .select(*PARTIAL_COLUMNS)
    )


def build_activity_daily(
    spark: SparkSession,
    warehouse: str,
    first_day: dt.date,
    last_day: dt.date | None = None,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
    validated: tuple[dt.date, int] | None = None,
) -> None:
    """Write the ``activity_daily`` partitions ``first_day .. last_day`` (default: just
    ``first_day``) from the warehouse's ``events`` and ``accounts``; ``validated``: see :func:`events_table`.

    Replaces exactly those partitions (``replaceWhere``): rerunning a day never duplicates rows.
    The ``activity_window`` states of ``first_day`` and later are deleted first (see
    :func:`drop_window_states_from`).
    """
    last_day = last_day or first_day
    events = events_table(spark, warehouse, validated)
    accounts = delta_io.read_table(spark, warehouse, t.ACCOUNTS)
    partials = daily_partials_range(events, accounts, first_day, last_day, session_gap_seconds)
    # What each day was built from: a later change to its number of events (late ones, a corrected
    # export, a new simulated platform) makes the partial stale (see :func:`events_per_day`).
    built_from = events_per_day(events, first_day, last_day)
    pairs = [F.lit(x) for day, n in built_from.items() for x in (day, n)]
    known = F.try_element_at(F.create_map(*pairs), F.col(t.DAY)) if pairs else F.lit(None)
    partials = partials.withColumn(t.SOURCE_EVENTS, F.coalesce(known, F.lit(0)).cast("long"))
    drop_window_states_from(spark, warehouse, first_day)
    with delta_io.commit_metadata(spark, step="activity_daily", run_date=str(last_day)):
        delta_io.write_table(
            partials,
            warehouse,
            t.ACTIVITY_DAILY,
            partition_by=[t.DAY],
            replace_where=f"{t.DAY} >= '{first_day.isoformat()}' AND {t.DAY} <= '{last_day.isoformat()}'",
            merge_schema=True,  # tables built before source_events was kept gain it
        )


def events_table(spark: SparkSession, warehouse: str, validated: tuple[dt.date, int] | None = None) -> DataFrame:
    """The ``events`` table; with ``validated`` (day, version), that day's rows as of that version: the ones
    validate checked (:func:`botwatch.nightly.validated_events`), not a late load's that landed since."""
    events = delta_io.read_table(spark, warehouse, t.EVENTS)
    if validated is None:
        return events
    day, version = validated
    of_day = F.col(t.EVENT_DATE).eqNullSafe(F.lit(day))
    checked = delta_io.read_table(spark, warehouse, t.EVENTS, version).where(of_day)
    return events.where(~of_day).unionByName(checked, allowMissingColumns=True)


def events_per_day(events: DataFrame, first_day: dt.date, last_day: dt.date) -> dict[dt.date, int]:
    """``{event_date: rows}`` of ``events`` in ``first_day .. last_day`` (days without rows left out).
    A count of a partitioned Parquet table reads the files' footers, not their rows. Compared with
    what a partial recorded (``source_events``), it finds days whose events came or went after the
    partial was built, whatever the files' layout (a full-export ingest rewrites every file)."""
    rows = (events.where(F.col(t.EVENT_DATE).between(F.lit(first_day), F.lit(last_day)))
            .groupBy(t.EVENT_DATE).count().collect())
    return {r[0]: int(r[1]) for r in rows}


def drop_window_states_from(spark: SparkSession, warehouse: str, day: dt.date) -> None:
    """Delete the ``activity_window`` states of ``day`` and later, before ``day``'s partial is rewritten.

    Each state holds the window sums of the partials it added, and the next night subtracts a
    partial's current rows when its day leaves the window. A day built late (its events came after
    its run) or rebuilt (a rerun, a backfill) would leave every later state off by the difference, for
    good. Without those states the next night sums its window from the partials, then rolls again.
    Deleted before the partial is written: a crash between the two leaves no stale state."""
    if not delta_io.table_exists(spark, warehouse, t.ACTIVITY_WINDOW):
        return
    from delta.tables import DeltaTable

    with delta_io.commit_metadata(spark, step="activity_window", run_date=day.isoformat()):
        DeltaTable.forPath(spark, t.table_path(warehouse, t.ACTIVITY_WINDOW)).delete(
            F.col(t.RUN_DATE) >= F.lit(day)
        )


def read_activity_window(spark: SparkSession, warehouse: str, run_date: dt.date, days: int) -> DataFrame:
    """The ``activity_daily`` rows of the ``days`` days ending at ``run_date`` (partition-pruned)."""
    start = run_date - dt.timedelta(days=days - 1)
    daily = delta_io.read_table(spark, warehouse, t.ACTIVITY_DAILY)
    return daily.where(F.col(t.DAY).between(F.lit(start), F.lit(run_date)))


def activity_features(
    spark: SparkSession,
    warehouse: str,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """The nightly activity features for ``run_date`` from the ``activity_daily`` table (build
    its partition ``run_date`` first with :func:`build_activity_daily`).

    Writes the ``activity_window`` state partition ``run_date`` on the way: rolled forward from
    the day before's state when there is one with the same windows and session gap (reading
    O(accounts) partial rows), else summed from the window's partials. Maxima and HLL unions come
    from a thin projection of the window's partials."""
    ws = check_windows(windows)
    daily = read_activity_window(spark, warehouse, run_date, ws[-1] + 1)
    state = build_activity_window(spark, warehouse, run_date, ws, session_gap_seconds, daily=daily)
    return features_from_state(state, window_extremes(daily, run_date, ws), ws)


def window_spec(windows: Sequence[int], session_gap_seconds: int) -> str:
    """What an ``activity_window`` state was built with; a state with another spec is not rolled."""
    return f"windows={','.join(map(str, check_windows(windows)))};gap={session_gap_seconds}"


def read_window_state(spark: SparkSession, warehouse: str, run_date: dt.date, spec: str) -> DataFrame | None:
    """The ``activity_window`` state of ``run_date`` built with ``spec``, or None when there is none."""
    if not delta_io.table_exists(spark, warehouse, t.ACTIVITY_WINDOW):
        return None
    state = delta_io.read_table(spark, warehouse, t.ACTIVITY_WINDOW)
    if not _has_current_layout(state):
        return None
    state = state.where(F.col(t.RUN_DATE) == F.lit(run_date))
    if state.where(F.col(WINDOW_SPEC) == F.lit(spec)).limit(1).count() == 0:
        return None
    return state.withColumnRenamed(WINDOW_DAYS, _W)


def _has_current_layout(state: DataFrame) -> bool:
    # Tables written before the packed layout hold histograms as arrays, and those written before
    # the exact sums hold them as doubles (with the rounding residue of every gap that left).
    return {packed_column(HOUR_HIST_UTC, 0), *(c for name in EXACT_SUMS for c in exact_sum_columns(name))} <= set(
        state.columns)


def build_activity_window(
    spark: SparkSession,
    warehouse: str,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
    daily: DataFrame | None = None,
    keep_days: int = 7,
) -> DataFrame:
    """Write the ``activity_window`` partition ``run_date`` (replaced whole) and return it.

    Rolled from ``run_date - 1``'s state when it exists with the same spec, else summed from
    partials. Partitions older than ``keep_days`` are deleted: only the day before is ever read.
    :func:`build_activity_daily` deletes the states a rewritten partial day would make wrong."""
    ws = check_windows(windows)
    spec = window_spec(ws, session_gap_seconds)
    if daily is None:
        daily = read_activity_window(spark, warehouse, run_date, ws[-1] + 1)
    previous = read_window_state(spark, warehouse, run_date - dt.timedelta(days=1), spec)
    if previous is not None:
        sums = roll_window_sums(previous, daily, run_date, ws, session_gap_seconds)
    else:
        sums = window_sums(daily, run_date, ws, session_gap_seconds)
    out = sums.select(
        t.ACCOUNT_ID, F.col(_W).alias(WINDOW_DAYS), *state_columns(ws),
        F.lit(spec).alias(WINDOW_SPEC), F.lit(run_date).alias(t.RUN_DATE),
    )
    oldest = run_date - dt.timedelta(days=keep_days)
    # one commit writes the new day and drops the expired ones (a DELETE after it was a second commit)
    keep: str | None = f"{t.RUN_DATE} = '{run_date.isoformat()}' OR {t.RUN_DATE} < '{oldest.isoformat()}'"
    if previous is None and delta_io.table_exists(spark, warehouse, t.ACTIVITY_WINDOW):
        # Another layout or column set (windows widened or narrowed): its days can never be rolled
        # and replaceWhere cannot change a schema, so the table is replaced whole.
        existing = delta_io.read_table(spark, warehouse, t.ACTIVITY_WINDOW)
        if not _has_current_layout(existing) or set(existing.columns) != set(out.columns):
            keep = None
    with delta_io.commit_metadata(spark, step="activity_window", run_date=run_date.isoformat()):
        delta_io.write_table(out, warehouse, t.ACTIVITY_WINDOW, partition_by=[t.RUN_DATE], replace_where=keep)
    state = delta_io.read_table(spark, warehouse, t.ACTIVITY_WINDOW).where(F.col(t.RUN_DATE) == F.lit(run_date))
    return state.withColumnRenamed(WINDOW_DAYS, _W)


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


def _explode_windows(df: DataFrame, day_col: str, run_date: dt.date, windows: tuple[int, ...]) -> DataFrame:
    """One copy of each row per window that contains its day (column ``_W``: the window's days).
    Windows are nested suffixes, so this adds few rows (1d/7d/28d: x1.3) and keeps one
    aggregation for all windows."""
    age = F.datediff(F.lit(run_date), F.col(day_col))
    member = F.array(*[F.when(age < w, F.lit(w)) for w in windows])
    return df.withColumn(_W, F.explode(member)).where(F.col(_W).isNotNull())


def _in_window(day: Column, run_date: dt.date) -> Column:
    """Whether ``day`` (a date column) lies inside window ``_W`` ending at ``run_date``."""
    return F.datediff(F.lit(run_date), day) < F.col(_W)


def _known_distinct(sketch: str) -> Column:
    """The sketch's distinct-count estimate; null when no event of the window had a value (missing,
    not 0: a sketch of one or more values never estimates 0)."""
    estimate = F.hll_sketch_estimate(sketch)
    return F.when(estimate > 0, estimate)


def _features(sums: DataFrame, hists: dict[str, list[Column]]) -> DataFrame:
    """Feature columns (unsuffixed) from one row of window sums per (account, window); ``hists``
    gives each histogram's bins (a null local histogram: no day with a known offset)."""
    local = hists[HOUR_HIST_LOCAL]
    return sums.select(
        t.ACCOUNT_ID,
        _W,
        F.col(N_EVENTS),
        entropy_bits(hists[HOUR_HIST_UTC], HOURS).alias(HOUR_ENTROPY),
        entropy_bits(hists[IET_HIST], len(hists[IET_HIST])).alias(IET_ENTROPY),
        burstiness(F.col(IET_COUNT), F.col(IET_SUM), F.col(IET_SUMSQ)).alias(BURSTINESS),
        F.col(MAX_EVENTS_PER_MINUTE),
        F.col(MAX_EVENTS_PER_HOUR),
        harmonic_amplitude(local, HOURS, 1).alias(CIRCADIAN_AMPLITUDE),
        bins_share(local, HOURS, NIGHT_HOURS).alias(NIGHT_SHARE),
        entropy_bits(hists[_DOW_HIST], DAYS_OF_WEEK).alias(DOW_ENTROPY),
        entropy_bits(hists[EVENT_TYPE_COUNTS], len(t.EVENT_TYPES)).alias(EVENT_TYPE_ENTROPY),
        _known_distinct(IP_SKETCH).alias(DISTINCT_IPS),
        _known_distinct(DEVICE_SKETCH).alias(DISTINCT_DEVICES),
        F.col(SESSION_COUNT),
        F.try_divide(F.col(SESSION_SECONDS), F.col(SESSION_COUNT)).alias(MEAN_SESSION_SECONDS),
    )


def _wide(per_window: DataFrame, windows: tuple[int, ...]) -> DataFrame:
    """(account, window) rows -> one row per account with ``{name}_{w}d`` columns; a window
    without a row (no events) gets nulls and ``has_activity_{w}d`` false."""
    cols = []
    for w in windows:
        here = F.col(_W) == w
        cols.append(F.coalesce(F.max(here), F.lit(False)).alias(windowed(HAS_ACTIVITY, w)))
        cols += [F.max(F.when(here, F.col(n))).alias(windowed(n, w)) for n in FEATURE_NAMES]
    return per_window.groupBy(t.ACCOUNT_ID).agg(*cols)


def window_sums(
    activity_daily: DataFrame,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """The additive part of every window, from the window's daily partials: one row per
    (account, window ``_W``) with :func:`state_columns` -- summed histograms and counts, with
    inter-event times and sessions stitched across midnight. This is the ``activity_window`` state
    that :func:`roll_window_sums` carries from one run date to the next."""
    ws = check_windows(windows)
    require_columns(activity_daily, PARTIAL_COLUMNS, "activity window features (activity_daily)")
    start = run_date - dt.timedelta(days=ws[-1] - 1)
    daily = activity_daily.where(F.col(t.DAY).between(F.lit(start), F.lit(run_date)))
    keys = [t.ACCOUNT_ID, _W]

    # Stitching, from a thin (account, day, first, last) projection ordered by day: the gap from
    # the previous active day's last event is one more IET when that day lies inside the window,
    # and it merges two sessions when short. The wide partial rows are never sorted: their sums
    # need no order, so Spark aggregates them before the shuffle.
    by_day = Window.partitionBy(t.ACCOUNT_ID).orderBy(t.DAY)
    thin = daily.select(
        t.ACCOUNT_ID,
        t.DAY,
        F.lag(t.DAY).over(by_day).alias(_PREV_DAY),
        ((F.unix_micros(FIRST_TS) - F.lag(F.unix_micros(LAST_TS)).over(by_day)) / float(_US)).alias(_GAP),
    )
    gaps = _explode_windows(thin, t.DAY, run_date, ws).where(_in_window(F.col(_PREV_DAY), run_date))
    partials = _partial_rows(_explode_windows(daily, t.DAY, run_date, ws), 1, ws)
    return _sum_state(partials.unionByName(_gap_rows(gaps.select(*keys, _GAP), session_gap_seconds, 1, ws)), ws)


def _state_row(values: dict[str, Column], windows: Sequence[int]) -> list[Column]:
    """One state row's columns, in :func:`state_columns` order; columns not in ``values`` are 0."""
    zero = F.lit(0).cast("long")
    return [F.col(t.ACCOUNT_ID), F.col(_W), *[values.get(c, zero).alias(c) for c in state_columns(windows)]]


def _packed_values(hist: str, bins: Sequence[Column]) -> dict[str, Column]:
    return dict(zip(_packed_columns(hist, len(bins)), pack_bins(bins), strict=True))


def _gap_rows(gaps: DataFrame, session_gap_seconds: int, sign: int, windows: Sequence[int]) -> DataFrame:
    """State rows that add (``sign`` 1) or remove (-1) one stitched inter-event time ``_GAP`` per row:
    one more IET, and one session fewer (its seconds added) when the gap is short."""
    g = F.col(_GAP)
    # A gap inside a window is shorter than the window, so its bin is one the state keeps.
    gbin = log2_bin(g, state_iet_bins(windows))
    short = g <= session_gap_seconds
    one = F.lit(sign).cast("long")
    zero = F.lit(0).cast("long")
    values = _packed_values(IET_HIST, [F.when(gbin == b, one).otherwise(zero) for b in range(state_iet_bins(windows))])
    values |= {
        IET_COUNT: one,
        **_exact_terms(IET_SUM, g, sign),
        **_exact_terms(IET_SUMSQ, g * g, sign),
        SESSION_COUNT: F.when(short, -one).otherwise(zero),
        **_exact_terms(SESSION_SECONDS, F.when(short, g).otherwise(0.0), sign),
    }
    return gaps.select(*_state_row(values, windows))


def _partial_rows(partials: DataFrame, sign: int, windows: Sequence[int]) -> DataFrame:
    """State rows that add (``sign`` 1) or remove (-1) whole daily partials (column ``_W`` set)."""
    def signed(c: Column) -> Column:
        return (c * sign).cast("long")

    # A day's IETs are under a day long: all in the bins the state keeps.
    values: dict[str, Column] = {}
    for name, size in _state_hist_sizes(windows).items():
        if name == _DOW_HIST:
            bins = [F.when(F.col(DOW) == d, F.col(N_EVENTS)).otherwise(0) for d in range(DAYS_OF_WEEK)]
        else:
            bins = [F.coalesce(F.get(F.col(name), i), F.lit(0)) for i in range(size)]
        values |= {c: signed(v) for c, v in _packed_values(name, bins).items()}
    values |= {
        N_EVENTS: signed(F.col(N_EVENTS)),
        # Days without a known offset have no local histogram: count the days that have one.
        LOCAL_DAYS: signed(F.col(HOUR_HIST_LOCAL).isNotNull().cast("int")),
        IET_COUNT: signed(F.col(IET_COUNT)),
        **_exact_terms(IET_SUM, F.col(IET_SUM), sign),
        **_exact_terms(IET_SUMSQ, F.col(IET_SUMSQ), sign),
        SESSION_COUNT: signed(F.col(SESSION_COUNT)),
        **_exact_terms(SESSION_SECONDS, F.col(SESSION_SECONDS), sign),
    }
    return partials.select(*_state_row(values, windows))


def _sum_state(rows: DataFrame, windows: Sequence[int]) -> DataFrame:
    """Sum state rows per (account, window); windows left without events are dropped."""
    sums = [F.sum(c).alias(c) for c in state_columns(windows)]
    return rows.groupBy(t.ACCOUNT_ID, _W).agg(*sums).where(F.col(N_EVENTS) > 0)


def roll_window_sums(
    previous: DataFrame,
    activity_daily: DataFrame,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """:func:`window_sums` for ``run_date`` from the state of the day before (``previous``, the
    same windows and session gap) and three kinds of partials: the new day's, the one leaving each
    window (day D-w) and the thin first/last event times of the days in between (for the
    stitched gaps that enter or leave a window). Equal to :func:`window_sums` (counts and the
    inter-event-time and session-length sums exactly); it reads O(accounts) rows instead
    of O(accounts x days). A 1-day window is not rolled: it is the new day's partial."""
    ws = check_windows(windows)
    require_columns(activity_daily, PARTIAL_COLUMNS, "activity window roll (activity_daily)")
    require_columns(previous, (t.ACCOUNT_ID, _W, *state_columns(ws)), "activity window roll (previous state)")
    day = F.col(t.DAY)
    today = activity_daily.where(day == F.lit(run_date))
    # A 1-day window is the new day's partial itself (no gap into it): a projection, not a roll.
    one_day = _partial_rows(today.withColumn(_W, F.lit(1)), 1, ws) if 1 in ws else None
    rolled = tuple(w for w in ws if w > 1)
    if one_day is not None and not rolled:
        return one_day
    all_windows = F.explode(F.array(*[F.lit(w) for w in rolled])).alias(_W)
    added = _partial_rows(today.select("*", all_windows), 1, ws)
    leaving = [
        activity_daily.where(day == F.lit(run_date - dt.timedelta(days=w))).withColumn(_W, F.lit(w))
        for w in rolled
    ]
    removed = _partial_rows(_union_all(leaving), -1, ws)

    # Stitched gaps, from thin per-account aggregates over the days D-W .. D.
    oldest = run_date - dt.timedelta(days=rolled[-1])
    thin = activity_daily.where(day.between(F.lit(oldest), F.lit(run_date)))

    # One thin aggregation for every window (max_by/min_by keep it a hash aggregate; max of a
    # struct made it a sort aggregate), consumed once: one row per account and window.
    before = F.when(day < F.lit(run_date), day)
    aggs = [
        F.max(before).alias("_prev_day"),
        F.max_by(LAST_TS, before).alias("_prev_last"),
        F.max(F.when(day == F.lit(run_date), F.col(FIRST_TS))).alias("_today_first"),
    ]
    for w in rolled:
        out_day = F.lit(run_date - dt.timedelta(days=w))
        aggs += [
            F.max(F.when(day == out_day, F.col(LAST_TS))).alias(f"_out_last_{w}"),
            F.min_by(FIRST_TS, F.when((day > out_day) & (day < F.lit(run_date)), day)).alias(f"_next_first_{w}"),
        ]
    edges = thin.groupBy(t.ACCOUNT_ID).agg(*aggs)

    def seconds(later: str, earlier: str) -> Column:
        return (F.unix_micros(later) - F.unix_micros(earlier)) / float(_US)

    per_window = [
        F.struct(
            F.lit(w).alias(_W),
            # The gap into D counts in window w when the previous active day is inside it.
            F.when(F.col("_prev_day") >= F.lit(run_date - dt.timedelta(days=w - 1)),
                   seconds("_today_first", "_prev_last")).alias("_in"),
            # Day D-w leaves window w: the gap from its last event to the next active day goes with it.
            seconds(f"_next_first_{w}", f"_out_last_{w}").alias("_out"),
        )
        for w in rolled
    ]
    gaps = edges.select(t.ACCOUNT_ID, F.explode(F.array(*per_window)).alias("_g")).select(
        t.ACCOUNT_ID, F.col(f"_g.{_W}").alias(_W), F.col("_g._in").alias("_in"), F.col("_g._out").alias("_out")
    )
    gap_in = _gap_rows(gaps.select(t.ACCOUNT_ID, _W, F.col("_in").alias(_GAP)).where(F.col(_GAP).isNotNull()),
                       session_gap_seconds, 1, ws)
    gap_out = _gap_rows(gaps.select(t.ACCOUNT_ID, _W, F.col("_out").alias(_GAP)).where(F.col(_GAP).isNotNull()),
                        session_gap_seconds, -1, ws)
    carried = previous.select(t.ACCOUNT_ID, _W, *state_columns(ws)).where(F.col(_W).isin(*rolled))
    sums = _sum_state(_union_all([carried, added, removed, gap_in, gap_out]), ws)
    return sums if one_day is None else sums.unionByName(one_day)


def _union_all(frames: Sequence[DataFrame]) -> DataFrame:
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def window_extremes(
    activity_daily: DataFrame, run_date: dt.date, windows: Sequence[int] = DEFAULT_WINDOWS
) -> DataFrame:
    """The parts of a window that cannot be rolled forward (maxima and HLL unions), from a thin
    projection of the window's partials: one row per (account, window)."""
    ws = check_windows(windows)
    start = run_date - dt.timedelta(days=ws[-1] - 1)
    thin = activity_daily.where(F.col(t.DAY).between(F.lit(start), F.lit(run_date))).select(
        t.ACCOUNT_ID, t.DAY, MAX_EVENTS_PER_MINUTE, MAX_EVENTS_PER_HOUR, IP_SKETCH, DEVICE_SKETCH
    )
    return _explode_windows(thin, t.DAY, run_date, ws).groupBy(t.ACCOUNT_ID, _W).agg(
        F.max(MAX_EVENTS_PER_MINUTE).alias(MAX_EVENTS_PER_MINUTE),
        F.max(MAX_EVENTS_PER_HOUR).alias(MAX_EVENTS_PER_HOUR),
        F.hll_union_agg(IP_SKETCH).alias(IP_SKETCH),
        F.hll_union_agg(DEVICE_SKETCH).alias(DEVICE_SKETCH),
    )


def features_from_state(state: DataFrame, extremes: DataFrame, windows: Sequence[int] = DEFAULT_WINDOWS) -> DataFrame:
    """Window features (one row per account, :func:`feature_columns`) from the window sums and extremes."""
    ws = check_windows(windows)
    combined = state.join(extremes, [t.ACCOUNT_ID, _W]).withColumns(
        {name: exact_total(name) for name in EXACT_SUMS})
    hists = {
        name: unpack_bins([F.col(c) for c in _packed_columns(name, size)], size)
        for name, size in _state_hist_sizes(ws).items()
    }
    local_known = F.col(LOCAL_DAYS) > 0
    hists[HOUR_HIST_LOCAL] = [F.when(local_known, c) for c in hists[HOUR_HIST_LOCAL]]
    return _wide(_features(combined, hists), ws)


def window_features(
    activity_daily: DataFrame,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """Activity features for ``windows`` (days) ending at ``run_date``, from daily partials only.

    One row per account with a partial in the largest window; columns ``account_id`` then
    :func:`feature_columns`. ``activity_daily`` may hold other days: only the window's are read.

    >>> feats = window_features(spark.read.format("delta").load(path), dt.date(2024, 5, 28))  # doctest: +SKIP
    """
    sums = window_sums(activity_daily, run_date, windows, session_gap_seconds)
    return features_from_state(sums, window_extremes(activity_daily, run_date, windows), windows)


def activity_features_from_scratch(
    events: DataFrame,
    accounts: DataFrame,
    run_date: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    session_gap_seconds: int = SESSION_GAP_SECONDS,
) -> DataFrame:
    """The same features as :func:`window_features`, computed directly from the raw events of the
    largest window (one ordered pass per account, no partials, no stitching). The reference for
    the incremental path in tests, and the benchmarks' full recompute."""
    ws = check_windows(windows)
    require_columns(events, EVENT_COLUMNS, "activity features from scratch (events)")
    require_columns(accounts, ACCOUNT_COLUMNS, "activity features from scratch (accounts)")
    start = run_date - dt.timedelta(days=ws[-1] - 1)
    ev = _event_input(events, F.col(t.EVENT_DATE).between(F.lit(start), F.lit(run_date)))
    timed = _with_event_timing(ev, [t.ACCOUNT_ID]).withColumn(
        _PREV_DAY, F.lag(t.EVENT_DATE).over(Window.partitionBy(t.ACCOUNT_ID).orderBy(_TS))
    )
    rows = _explode_windows(timed, t.EVENT_DATE, run_date, ws)
    # An event's IET counts in a window only when the previous event is inside it too.
    iet = F.when(_in_window(F.col(_PREV_DAY), run_date), F.col(_IET))
    dow = F.weekday(t.EVENT_DATE)
    numeric = rows.groupBy(t.ACCOUNT_ID, _W).agg(
        *_event_sums(iet, session_gap_seconds),
        F.array(*[_count(dow == d) for d in range(DAYS_OF_WEEK)]).alias(_DOW_HIST),
    )
    sketches = _sketches(_explode_windows(ev, t.EVENT_DATE, run_date, ws), [t.ACCOUNT_ID, _W])
    sums = (
        numeric.join(sketches, [t.ACCOUNT_ID, _W])
        .join(_account_offsets(accounts), t.ACCOUNT_ID, "left")
        .withColumn(HOUR_HIST_LOCAL, rotate_hours(F.col(HOUR_HIST_UTC), F.col(UTC_OFFSET_HOURS)))
    )
    sizes = {**_state_hist_sizes(ws), IET_HIST: IET_BINS}  # the events' own histograms are arrays
    return _wide(_features(sums, {name: _elements(F.col(name), size) for name, size in sizes.items()}), ws)
