"""The input contract: validate users' own tables and load them (``botwatch ingest``).

Every input row either loads (cast to the contract schema of :mod:`botwatch.schemas`) or lands in
the ``quarantine`` table with exactly one reason (and ``step``: ingest, or validate for the rows
the nightly run's validate step moves there): nothing is silently dropped. The checks are
plain DataFrame functions (:func:`validate_table`), so the nightly run's validate step reuses them
on data that is already in Delta.

A bad row gets the FIRST reason of :data:`REASONS` that applies (only the checks of its table run):

==========================  ==========================================================================
``malformed_row``           a CSV line with more or fewer fields than its header (its values would
                            land in the wrong columns); ``row_json`` keeps the line as read
``null_key``                a column the contract declares NOT NULL is null
``bad_type``                a value does not cast to the contract type (``"abc"`` as an id, ``3.5`` as
                            an id, ``2`` as a boolean)
``timestamp_in_future``     a timestamp at or after the end of the run date (UTC)
``timestamp_before_2000``   a timestamp before 2000-01-01 (UTC)
``unknown_account``         events / edges / labels referring to an account not in ``known_accounts``
``unknown_event_type``      ``event_type`` not in :data:`botwatch.tables.EVENT_TYPES`
``duplicate_event``         an exact duplicate of another event (one copy loads, the others quarantine)
``duplicate_account``       a second row for an ``account_id`` (one loads, the others quarantine)
``self_follow``             an edge with ``src == dst``
``label_not_binary``        ``label`` not 0 or 1
``unknown_label_source``    ``source`` not in :data:`botwatch.tables.LABEL_SOURCES`
``event_date_mismatch``     (validate only) an event stored under a date that is not its UTC date
==========================  ==========================================================================

Timestamps checked are every timestamp column of the contract (``created_at``, ``event_ts``,
``labeled_at``). Duplicates are judged on the cast contract columns, so ``"5"`` and ``"5.0"`` are
the same id, and for events on their extra columns too, dropped ones included (two likes in one
second with different target ids are two events; not on an input's own ``event_date``, derived
from ``event_ts``). Events keep those columns only as their hash, ``source_extras_hash``, so that
validate tells such events apart too. ``row_json`` keeps every input column, dropped extras
included, so nothing is lost (but pandas' index, written with the rows, is dropped on reading).
Inputs are read as found: CSV as text (cast explicitly here, never inferred), Parquet with its own
types, including pandas' nanosecond timestamps.

Usage::

    good, bad = validate_table(raw_events, "events", date(2026, 1, 31), known_accounts=accounts)
    result = ingest_files(spark, warehouse, accounts="a.parquet", events="e.csv", edges="f.parquet",
                          labels=None, run_date=date(2026, 1, 31))
    print(format_report(result))
"""
from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from urllib.parse import urlparse

from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.delta_io import add_missing_column, commit_metadata, delete_path, table_exists, write_table
from botwatch.files import local_path
from botwatch.schemas import INPUT_SCHEMAS, QUARANTINE_SCHEMA, REQUIRED_COLUMNS, named_col
from botwatch.spark import require_utc, session_conf

log = logging.getLogger(__name__)

# ---- quarantine reasons, in the order they are tried ----
MALFORMED_ROW = "malformed_row"
NULL_KEY = "null_key"
BAD_TYPE = "bad_type"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
TIMESTAMP_BEFORE_2000 = "timestamp_before_2000"
UNKNOWN_ACCOUNT = "unknown_account"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
DUPLICATE_EVENT = "duplicate_event"
DUPLICATE_ACCOUNT = "duplicate_account"
SELF_FOLLOW = "self_follow"
LABEL_NOT_BINARY = "label_not_binary"
UNKNOWN_LABEL_SOURCE = "unknown_label_source"
EVENT_DATE_MISMATCH = "event_date_mismatch"  # validate only: an event filed under another UTC day
REASONS = (
    MALFORMED_ROW,
    NULL_KEY,
    BAD_TYPE,
    TIMESTAMP_IN_FUTURE,
    TIMESTAMP_BEFORE_2000,
    UNKNOWN_ACCOUNT,
    UNKNOWN_EVENT_TYPE,
    DUPLICATE_EVENT,
    DUPLICATE_ACCOUNT,
    SELF_FOLLOW,
    LABEL_NOT_BINARY,
    UNKNOWN_LABEL_SOURCE,
    EVENT_DATE_MISMATCH,
)

# The reason's name fixes the bound; it is not a knob.
EARLIEST_VALID_DATE = date(2000, 1, 1)

# ``quarantine.step`` of the rows each step puts there.
INGEST_STEP = "ingest"
VALIDATE_STEP = "validate"

# Keys of the result of :func:`ingest_files`, per table.
ROWS_IN = "rows_in"
ROWS_LOADED = "rows_loaded"
ROWS_QUARANTINED = "rows_quarantined"
COPIES = "copies"  # of the quarantined rows, by reason, those that are another row's copy (a replayed load)
REASON_COUNTS = "reasons"

CSV = "csv"
PARQUET = "parquet"
DELTA = "delta"  # a local folder with a _delta_log: its current version
DELTA_LOG = "_delta_log"
# The raw text of a CSV line whose field count differs from its header (Spark's corrupt-record column).
_CORRUPT = "_corrupt_record"
# Characters Delta refuses in a column name (without column mapping).
_DELTA_BAD_NAME = re.compile(r"[ ,;{}()\n\t=]")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_CSV_PRUNING = "spark.sql.csv.parser.columnPruning.enabled"

# pandas' index, written as a column by ``DataFrame.to_parquet`` (a filtered or sorted frame) and by
# ``to_csv`` (an empty header name, which Spark calls _c<position>): bookkeeping, not data.
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")

# Internal column names; the prefix keeps them apart from users' columns.
_P = "__bw_"
_JSON = f"{_P}row_json"
# The input row as read, as JSON: kept where ingest retypes a column (CSV accounts' numeric extras), so a
# quarantined row's JSON is still its text (00501, not 501.0).
_ROW_TEXT = f"{_P}row_text"
# Whether a row is another's copy (a replayed load): moved like a bad row, but it is not missing data.
_COPY = f"{_P}copy"
_JSON_OPTIONS = {"ignoreNullFields": "false", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"}
_REASON = f"{_P}reason"


class IngestInputError(ValueError):
    """An input file is missing or unreadable, or lacks a required column; the message names it."""


class MostlyBadInputError(IngestInputError):
    """Most of an input file's rows are bad (an empty or broken accounts export makes every event,
    edge and label an ``unknown_account``): nothing was written, since ingest replaces the tables."""


class IngestCountMismatch(RuntimeError):
    """Rows in != rows loaded + rows quarantined: a bug, since no row may be lost."""


def _contract_fields(table: str) -> list[T.StructField]:
    # event_date is derived from event_ts, never taken from the input.
    return [f for f in INPUT_SCHEMAS[table].fields if f.name != t.EVENT_DATE]


def contract_columns(table: str) -> list[str]:
    """The contract's columns an input of ``table`` provides (all but the derived ``event_date``)."""
    return [f.name for f in _contract_fields(table)]


def _extra_names(columns: Sequence[str], table: str) -> list[str]:
    """Input columns beyond the contract, leaving out the CSV reader's corrupt-record column (and the
    row's text, :data:`_ROW_TEXT`)."""
    contract = set(contract_columns(table))
    return [c for c in columns if c not in contract and c not in (_CORRUPT, _ROW_TEXT)]


def _row_json(df: DataFrame) -> Column:
    """Each row of ``df`` as JSON, nulls included: its input columns, not the reader's own."""
    return F.to_json(F.struct(*[named_col(c) for c in df.columns if c not in (_CORRUPT, _ROW_TEXT)]), _JSON_OPTIONS)


def check_required_columns(df: DataFrame, table: str, source: str) -> None:
    """Raise :class:`IngestInputError` naming ``source`` and the missing required columns of ``table``."""
    _require(df.columns, table, source)


def split_extra_columns(schema: T.StructType, table: str) -> tuple[list[str], list[str]]:
    """Columns beyond the contract: (kept, dropped).

    ``accounts`` keeps extra numeric and boolean columns (platforms' own attributes, usable as
    features); every other extra column is dropped. ``event_date`` in an events input is dropped
    because it is derived from ``event_ts``.
    """
    extras = set(_extra_names(schema.names, table))
    kept: list[str] = []
    dropped: list[str] = []
    for field in schema.fields:
        if field.name not in extras:
            continue
        keep = table == t.ACCOUNTS and isinstance(field.dataType, (T.NumericType, T.BooleanType))
        (kept if keep else dropped).append(field.name)
    return kept, dropped


def storable_names(columns: Sequence[str], kept: Sequence[str]) -> dict[str, str]:
    """New names for the kept extra columns Delta cannot store (without column mapping it refuses
    spaces and ,;{}()= in names): those characters become ``_``, never clashing with another column."""
    taken = {c.lower() for c in columns}  # Spark and Delta compare names case-insensitively
    renamed = {}
    for name in kept:
        if _DELTA_BAD_NAME.search(name):
            new = _DELTA_BAD_NAME.sub("_", name)
            while new.lower() in taken:
                new += "_"
            taken.add(new.lower())
            renamed[name] = new
    return renamed


def _events_extras(table: str, columns: Sequence[str]) -> list[str]:
    """The extra ``columns`` of an events input that tell two events apart: not the CSV reader's corrupt-record
    column, and not the input's own event_date (derived from event_ts, it only names an export's partition)."""
    return [c for c in columns if c not in (_CORRUPT, t.EVENT_DATE)] if table == t.EVENTS else []


def pandas_index_columns(columns: Sequence[str], csv: bool) -> list[str]:
    """The columns that are pandas' index written out: ``__index_level_<n>__`` (Parquet), and in a CSV
    the unnamed leading columns (``_c0``, ``_c1``.. as Spark names empty header cells; Hive's unnamed
    expressions elsewhere keep their ``_c<n>``). A row position, not a platform attribute: as a feature
    it would leak the export's sort order."""
    leading = 0
    while csv and leading < len(columns) and columns[leading] == f"_c{leading}":
        leading += 1
    return [c for i, c in enumerate(columns) if i < leading or _PANDAS_INDEX.fullmatch(c)]


def _try_cast(raw: Column, source: T.DataType, target: T.DataType) -> Column:
    """Cast, null where the value does not fit. Text numbers go through a decimal: pandas writes an
    integer or boolean column with gaps as "1.0", which a plain cast to bigint or boolean would reject."""
    if isinstance(source, T.StringType) and isinstance(target, (T.IntegralType, T.BooleanType)):
        exact = raw.try_cast(T.DecimalType(38, 18))
        if isinstance(target, T.BooleanType):  # Spark's words (true, yes, t, 1...) first
            return F.coalesce(raw.try_cast(target), F.when(exact.isin(0, 1), exact != 0))
        return F.when(exact == F.floor(exact), exact.try_cast(target))
    return raw.try_cast(target)


def _bad_type(raw: Column, cast: Column, source: T.DataType, target: T.DataType) -> Column:
    """A non-null input value that the contract type cannot hold."""
    lost = cast.isNull()
    if isinstance(target, T.IntegralType) and isinstance(source, (T.FractionalType, T.DecimalType)):
        # try_cast truncates 3.5 to 3; an id or label must be a whole number.
        lost = lost | (cast != raw)
    if isinstance(target, T.IntegralType) and isinstance(source, (T.FloatType, T.DoubleType, T.StringType)):
        # From 2^53 on (a float: 2^24) the id may have been rounded before it got here (2^53 + 1 rounds to
        # 2^53 itself; pandas turns an int64 column with a gap into float64, and to_csv writes that float
        # as "1.8012345678901235e+18"). Write ids as int64 or as integer text.
        exact = 2**24 if isinstance(source, T.FloatType) else 2**53
        text = isinstance(source, T.StringType)
        value = raw.try_cast(T.DecimalType(38, 18)) if text else raw
        written_as_float = raw.rlike("[.eE]") if text else F.lit(True)
        lost = lost | (written_as_float & (F.abs(value) >= F.lit(exact)))
    if isinstance(target, T.BooleanType) and isinstance(source, T.NumericType):
        lost = lost | ~raw.isin(0, 1)
    return raw.isNotNull() & lost


def _any(conditions: Sequence[Column]) -> Column:
    return reduce(lambda a, b: a | b, conditions) if conditions else F.lit(False)


def _utc_midnight(day: date) -> Column:
    # An explicit Z makes the bound independent of the session time zone.
    return F.lit(f"{day.isoformat()}T00:00:00Z").cast(T.TimestampType())


def _non_null(col: Column, field: T.StructField) -> Column:
    """Cast to the field's type; a NOT NULL field gets a never-used default so Spark (and Delta)
    record the column as NOT NULL like the contract schema (these rows are already checked non-null)."""
    col = col.cast(field.dataType)
    if field.nullable:
        return col.alias(field.name)
    # Typed Python literals: a cast from a string literal would count as nullable.
    zero = {
        T.StringType: "",
        T.LongType: 0,
        T.IntegerType: 0,
        T.DoubleType: 0.0,
        T.BooleanType: False,
        T.DateType: date(1970, 1, 1),
        T.TimestampType: datetime(1970, 1, 1, tzinfo=UTC),
    }[type(field.dataType)]
    return F.coalesce(col, F.lit(zero).cast(field.dataType)).alias(field.name)


def _known_ids(known_accounts: DataFrame, alias: str) -> DataFrame:
    return (
        known_accounts.select(F.col(t.ACCOUNT_ID).cast(T.LongType()).alias(alias))
        .where(F.col(alias).isNotNull())
        .distinct()
        .withColumn(f"{alias}_known", F.lit(True))
    )


def _join_known(rows: DataFrame, known_accounts: DataFrame, column: str) -> tuple[DataFrame, Column]:
    alias = f"{_P}known_{column}"
    ids = _known_ids(known_accounts, alias)
    joined = rows.join(ids, F.col(column) == F.col(alias), "left").drop(alias)
    return joined, F.col(f"{alias}_known").isNull()


def _first_reason(checks: Sequence[tuple[str, Column]]) -> Column:
    expr = None
    for reason, condition in checks:
        expr = F.when(condition, reason) if expr is None else expr.when(condition, reason)
    return expr if expr is not None else F.lit(None).cast(T.StringType())


def _mark_duplicates(rows: DataFrame, keys: Sequence[Column], reason: str, exact_copies: bool = False) -> DataFrame:
    """Among rows that passed every other check, keep one per ``keys`` (the smallest row JSON, so
    reruns keep the same one) and give the others ``reason``: they are copies (:data:`_COPY`). A bad
    row is a copy only of the same row (its JSON), and never where a value is missing or unreadable (60
    events with an empty timestamp are 60 broken events, not one); with ``exact_copies``, a good row is a
    copy only of the same row too (accounts: another version of an account is no copy)."""
    ok = F.col(_REASON).isNull()
    window = Window.partitionBy(*keys).orderBy(ok.desc(), F.col(_JSON))  # the good first: one of them is kept
    later = f"{_P}later"
    rows = rows.withColumn(later, F.row_number().over(window) > 1)
    whole = ~F.coalesce(F.col(_REASON).isin(MALFORMED_ROW, NULL_KEY, BAD_TYPE), F.lit(False))
    same_row = F.coalesce(F.lag(_JSON).over(window) == F.col(_JSON), F.lit(False)) & whole
    copy = F.col(later) & (same_row if exact_copies else ok | same_row)
    return rows.withColumns({
        _COPY: copy, _REASON: F.when(ok & F.col(later), F.lit(reason)).otherwise(F.col(_REASON)),
    }).drop(later)


def tag_rows(
    df: DataFrame,
    table: str,
    run_date: date,
    *,
    known_accounts: DataFrame | None = None,
    event_date: date | None = None,
    keep_extras: Sequence[str] = (),
) -> DataFrame:
    """Every input row once, with the contract columns cast, its original row as JSON and its first
    reason (null when the row is good). :func:`good_rows` and :func:`quarantine_rows` split it;
    :func:`validate_table` does both. Cache it when both halves are written. ``event_date``: the
    ``events`` partition the rows were read from (validate); an event whose UTC date differs is
    ``event_date_mismatch`` (ingest derives ``event_date`` from ``event_ts``, so never has one).
    ``keep_extras``: extra columns carried as they are (validate: a table's own extra columns, which
    rewriting its rows must not lose)."""
    if table not in INPUT_SCHEMAS:
        raise ValueError(f"unknown input table '{table}'; expected one of {list(INPUT_SCHEMAS)}")
    check_required_columns(df, table, f"table '{table}'")
    fields = _contract_fields(table)
    source_types = {f.name: f.dataType for f in df.schema.fields}
    kept, dropped = split_extra_columns(df.schema, table)
    kept += [c for c in dropped if c in keep_extras]
    dropped = [c for c in dropped if c not in keep_extras]
    if dropped:
        log.info("%s: dropping columns %s (not in the contract)", table, dropped)

    raw: dict[str, Column] = {}
    cast: dict[str, Column] = {}
    for f in fields:
        if f.name not in source_types:  # an optional column the input lacks
            raw[f.name] = cast[f.name] = F.lit(None).cast(f.dataType)
            continue
        raw[f.name] = named_col(f.name)
        cast[f.name] = _try_cast(raw[f.name], source_types[f.name], f.dataType)
        try:
            df.select(cast[f.name]).schema  # noqa: B018 - analysis only: is the cast possible at all?
        except PySparkException as exc:
            raise IngestInputError(
                f"table '{table}': column '{f.name}' is {source_types[f.name].simpleString()}, which cannot "
                f"be read as {f.dataType.simpleString()}; convert it in the input file"
            ) from exc

    row_json = named_col(_ROW_TEXT) if _ROW_TEXT in df.columns else _row_json(df)
    if _CORRUPT in df.columns:
        # A malformed line's fields are not its columns: keep the line itself.
        corrupt = named_col(_CORRUPT)
        row_json = F.when(corrupt.isNotNull(), F.to_json(F.struct(corrupt), _JSON_OPTIONS)).otherwise(row_json)
    malformed = f"{_P}malformed"
    # Events: every extra column (those dropped too) tells two events apart; compared as one JSON value.
    extras = _events_extras(table, [*kept, *dropped])
    extras_json = F.to_json(F.struct(*map(named_col, extras)), _JSON_OPTIONS)
    # Stored as its hash where the columns themselves are dropped (ingest): validate's duplicate check, which
    # sees only stored columns, must tell such events apart too.
    extras_hash = [F.xxhash64(extras_json).alias(t.SOURCE_EXTRAS_HASH)] if _events_extras(table, dropped) else []
    rows = df.select(
        row_json.alias(_JSON),
        (named_col(_CORRUPT).isNotNull() if _CORRUPT in df.columns else F.lit(False)).alias(malformed),
        *[raw[f.name].alias(f"{_P}raw_{f.name}") for f in fields],
        *[cast[f.name].alias(f.name) for f in fields],
        *[named_col(c) for c in kept],
        *extras_hash,
        *([extras_json.alias(f"{_P}extras")] if extras else []),
    )
    raw_of = {f.name: F.col(f"{_P}raw_{f.name}") for f in fields}

    keys = [f.name for f in fields if not f.nullable]
    timestamps = [f.name for f in fields if isinstance(f.dataType, T.TimestampType)]
    future = _utc_midnight(run_date + timedelta(days=1))
    earliest = _utc_midnight(EARLIEST_VALID_DATE)
    checks: list[tuple[str, Column]] = [
        (MALFORMED_ROW, F.col(malformed)),
        (NULL_KEY, _any([raw_of[k].isNull() for k in keys])),
        (
            BAD_TYPE,
            _any([_bad_type(raw_of[f.name], F.col(f.name), source_types.get(f.name, f.dataType), f.dataType)
                  for f in fields]),
        ),
        (TIMESTAMP_IN_FUTURE, _any([F.col(c) >= future for c in timestamps])),
        (TIMESTAMP_BEFORE_2000, _any([F.col(c) < earliest for c in timestamps])),
    ]
    if known_accounts is not None and table != t.ACCOUNTS:
        unknown = []
        for column in (t.SRC, t.DST) if table == t.EDGES else (t.ACCOUNT_ID,):
            rows, missing = _join_known(rows, known_accounts, column)
            unknown.append(missing)
        checks.append((UNKNOWN_ACCOUNT, _any(unknown)))
    if table == t.EVENTS:
        checks.append((UNKNOWN_EVENT_TYPE, ~F.col(t.EVENT_TYPE).isin(*t.EVENT_TYPES)))
        if event_date is not None:
            checks.append((EVENT_DATE_MISMATCH, F.to_date(F.col(t.EVENT_TS)) != F.lit(event_date)))
    if table == t.EDGES:
        checks.append((SELF_FOLLOW, F.col(t.SRC) == F.col(t.DST)))
    if table == t.LABELS:
        checks.append((LABEL_NOT_BINARY, ~F.col(t.LABEL).isin(0, 1)))
        checks.append((UNKNOWN_LABEL_SOURCE, ~F.col(t.SOURCE).isin(*t.LABEL_SOURCES)))

    tagged = rows.withColumn(_REASON, _first_reason(checks))
    if table == t.EVENTS:
        # A duplicate is the same event in every column it carries: two likes in one second that
        # differ only in a producer's extra column (a target id) are two events.
        extra_key = [F.col(f"{_P}extras")] if extras else []
        tagged = _mark_duplicates(tagged, [F.col(f.name) for f in fields] + extra_key, DUPLICATE_EVENT)
    if t.SOURCE_EXTRAS_HASH in kept:
        # Validate: a copy appended without the producer's extra columns (null hash) is the same event as
        # one ingested with them.
        ok = F.col(_REASON).isNull()
        hashed = F.max(F.col(t.SOURCE_EXTRAS_HASH).isNotNull()).over(
            Window.partitionBy(ok, *[F.col(f.name) for f in fields]))
        unhashed_copy = ok & F.col(t.SOURCE_EXTRAS_HASH).isNull() & hashed
        tagged = tagged.withColumns({
            _REASON: F.when(unhashed_copy, F.lit(DUPLICATE_EVENT)).otherwise(F.col(_REASON)),
            _COPY: F.col(_COPY) | unhashed_copy,
        })
    if table == t.ACCOUNTS:
        tagged = _mark_duplicates(tagged, [F.col(t.ACCOUNT_ID)], DUPLICATE_ACCOUNT, exact_copies=True)

    return tagged


def good_rows(tagged: DataFrame, table: str) -> DataFrame:
    """The good rows of :func:`tag_rows`' output, as the contract schema (plus accounts' kept extras)."""
    fields = INPUT_SCHEMAS[table].fields
    contract = {f.name for f in fields}
    extras = [c for c in tagged.columns if c not in contract and not c.startswith(_P)]
    cols = [_non_null(F.to_date(F.col(t.EVENT_TS)) if f.name == t.EVENT_DATE else F.col(f.name), f) for f in fields]
    return tagged.where(F.col(_REASON).isNull()).select(*cols, *[named_col(c) for c in extras])


def quarantine_rows(tagged: DataFrame, table: str, run_date: date, step: str = INGEST_STEP) -> DataFrame:
    """The bad rows of :func:`tag_rows`' output, as ``QUARANTINE_SCHEMA`` (``step``: who quarantines them)."""
    values = [F.lit(table), F.col(_REASON), F.lit(run_date), F.col(_JSON), F.lit(step)]
    return tagged.where(F.col(_REASON).isNotNull()).select(
        *[_non_null(col, field) for col, field in zip(values, QUARANTINE_SCHEMA.fields, strict=True)]
    )


def validate_table(
    df: DataFrame,
    table: str,
    run_date: date,
    *,
    known_accounts: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split an input table into (good rows, quarantine rows).

    Good rows are cast to the contract schema (``INPUT_SCHEMAS[table]``, in its column order);
    events get ``event_date = to_date(event_ts)`` (the session is UTC); accounts keep their extra
    numeric/boolean columns after the contract's, events with extra columns their hash
    (``source_extras_hash``). Quarantine rows have ``QUARANTINE_SCHEMA``:
    ``table``, the first ``reason`` that applies (order of :data:`REASONS`), ``run_date``,
    ``row_json``, the original row as JSON (nulls included), and ``step`` ``ingest``. With
    ``known_accounts`` (a frame with ``account_id``), events, edges and labels of other accounts
    are quarantined as ``unknown_account``. Missing required columns raise :class:`IngestInputError`.

    >>> good, bad = validate_table(raw, "edges", date(2026, 1, 31), known_accounts=accounts)  # doctest: +SKIP
    """
    tagged = tag_rows(df, table, run_date, known_accounts=known_accounts)
    return good_rows(tagged, table), quarantine_rows(tagged, table, run_date)


# ---- files ----


def _is_local(path: str) -> bool:
    return local_path(path) is not None


def _local(path: str) -> str:
    # Relative paths are the user's, from the current directory (not the project root).
    return urlparse(path).path if path.startswith("file:") else os.path.abspath(path)


def _data_files(folder: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Data files under a local folder (those ending in ``suffixes``; None: any), skipping the
    _SUCCESS / .crc files Spark skips too. A Parquet folder's files are all of them, as Spark reads
    them: Hive and Impala name theirs ``000000_0`` or ``*.parq``."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found += [os.path.join(root, n) for n in sorted(names)
                  if (suffixes is None or n.lower().endswith(suffixes)) and not n.startswith(("_", "."))]
    return found


def _is_delta_table(folder: str) -> bool:
    log = os.path.join(folder, DELTA_LOG)
    return os.path.isdir(log) and any(n.endswith(".json") for n in os.listdir(log))


def _file_format(table: str, path: str) -> str:
    lower = path.lower().rstrip("/")
    if lower.endswith(CSV_SUFFIXES):
        return CSV
    if lower.endswith(PARQUET_SUFFIXES):
        return PARQUET
    if _is_local(path) and _is_delta_table(path):
        return DELTA  # read as Parquet, its folder also holds the files later versions removed
    if _is_local(path) and os.path.isdir(path):
        names = [f.lower() for f in _data_files(path)]  # one walk of the folder
        if not names:
            raise IngestInputError(f"{table} folder {path} holds no data files (files named _* or .* are skipped, "
                                   "as Spark skips them); point it at the folder that holds the table's files")
        has_csv = any(f.endswith(CSV_SUFFIXES) for f in names)
        return CSV if has_csv and not any(f.endswith(PARQUET_SUFFIXES) for f in names) else PARQUET
    if not _is_local(path):
        return PARQUET  # an object-store folder, as Spark writes them
    raise IngestInputError(
        f"{table} file {path}: unknown format; give a .parquet or .csv file, a folder of Parquet files or a Delta table"
    )


def _local_columns(path: str, fmt: str) -> list[str]:
    """Column names of a local input from its CSV header or Parquet footers, without Spark."""
    import pyarrow.parquet as pq

    if fmt == DELTA:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        try:
            return [field.name for field in DeltaTable(path).schema().fields]
        except DeltaError as exc:
            raise IngestInputError(f"{path}: not a readable Delta table: {exc}") from exc
    files = _data_files(path, CSV_SUFFIXES if fmt == CSV else None) if os.path.isdir(path) else [path]
    columns: list[str] = []
    first_header: list[str] | None = None
    first_types: dict[str, str] | None = None
    for file in files:
        if fmt == CSV:
            gz = file.lower().endswith(".gz")
            # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which Spark's line reader skips.
            with (gzip.open(file, "rt", newline="", encoding="utf-8-sig") if gz
                  else open(file, newline="", encoding="utf-8-sig")) as handle:
                names = next(csv.reader(handle), [])
            # Spark reads every file of a folder by the first one's header, by position (an empty file: no rows).
            first_header = names if first_header is None and names else first_header
            if names and names != first_header:
                raise IngestInputError(
                    f"{file}: its CSV header {names} differs from {files[0]}'s {first_header}; Spark would read its "
                    "values into the first file's columns by position. Write every file with the same header")
        else:
            with pq.ParquetFile(file, coerce_int96_timestamp_unit="us") as footer:
                schema, rows = footer.schema_arrow, footer.metadata.num_rows
                int96 = {footer.schema.column(i).path for i in range(len(footer.schema))
                         if footer.schema.column(i).physical_type == "INT96"}
            names = schema.names
            # pandas' index is dropped anyway; an empty file after the first has no values to misread.
            types = {f.name: _parquet_type(f.type, f.name in int96) for f in schema
                     if not _PANDAS_INDEX.fullmatch(f.name)}
            first_types = types if first_types is None else first_types
            if types != first_types and rows:
                raise IngestInputError(_parquet_schemas_differ(file, files[0], types, first_types))
        # Hive-style folders (key=value) are columns too.
        hive = [part.split("=", 1)[0] for part in os.path.relpath(file, path).split(os.sep)[:-1] if "=" in part]
        columns += [n for n in [*names, *hive] if n not in columns]
    return columns


def _parquet_type(arrow_type, int96: bool = False) -> str:
    """A Parquet column's type as Spark reads it: a pandas category (dictionary) or a large string is a string,
    and Hive's INT96 timestamps are UTC instants like pyarrow's UTC-adjusted microseconds."""
    import pyarrow as pa

    if int96:
        return str(pa.timestamp("us", tz="UTC"))
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_large_string(arrow_type):
        return str(pa.string())
    return str(pa.binary()) if pa.types.is_large_binary(arrow_type) else str(arrow_type)


def _parquet_schemas_differ(file: str, first: str, types: dict[str, str], first_types: dict[str, str]) -> str:
    """Why a folder's Parquet file cannot be read with its first file: the columns they disagree on."""
    problems = [f"'{c}' is {types[c]} here, {first_types[c]} there" for c in types
                if c in first_types and types[c] != first_types[c]]
    only_here, only_there = [c for c in types if c not in first_types], [c for c in first_types if c not in types]
    if only_here:
        problems.append(f"only here: {only_here}")
    if only_there:
        problems.append(f"only there: {only_there}")
    return (f"{file}: its Parquet schema differs from {first}'s ({'; '.join(problems)}); Spark reads a folder by "
            "one file's schema, so the others' values would be misread, dropped or fail the read. Write every file "
            "with the same columns and types (pandas: timestamps in microseconds with to_parquet(..., "
            "coerce_timestamps='us'), and a type for a column that is all None in some file)")


def _require(columns: Sequence[str], table: str, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in columns]
    if missing:
        raise IngestInputError(
            f"{source}: missing required column(s) {missing} of table '{table}' "
            f"(found {list(columns)}). Required: {list(REQUIRED_COLUMNS[table])}."
        )


def resolve_input(table: str, path: str) -> tuple[str, str]:
    """(path for Spark, format) of one input, checked before any Spark work: a missing local file,
    or a local file lacking a required column, raises :class:`IngestInputError` naming it.

    Needs no Spark session, so the CLI fails fast, before a JVM starts.
    """
    if not _is_local(path):
        return path, _file_format(table, path)
    local = _local(path)
    if not os.path.exists(local):
        raise IngestInputError(f"{table} file not found: {path}")
    fmt = _file_format(table, local)
    try:
        columns = _local_columns(local, fmt)
    except IngestInputError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueError / OSError subclasses
        raise IngestInputError(f"{table} file {path} cannot be read as {fmt}: {exc}") from exc
    _require(columns, table, f"{table} file {path}")
    # An explicit file: stays a URI for Spark: a bare path is read from the cluster's default file system.
    # Not %-encoded (as_uri): Hadoop's Path and pyarrow would look for a literal "my%20exports".
    return (f"file://{local}" if path.startswith("file:") else local), fmt


def _parquet_nanos_columns(path: str) -> list[str]:
    """Columns stored as nanosecond timestamps (pandas' default), which Spark cannot read directly.

    Only local files are inspected (footers only, via pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not _is_local(path):
        return []
    path = _local(path)
    files = _data_files(path) if os.path.isdir(path) else [path]
    nanos: list[str] = []
    for file in files:
        # pyarrow reports Hive's and Spark's INT96 timestamps as ns too; Spark reads those itself.
        with pq.ParquetFile(file, coerce_int96_timestamp_unit="us") as footer:
            fields = list(footer.schema_arrow)
        for field in fields:
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns" and field.name not in nanos:
                nanos.append(field.name)
    return nanos


def _numeric_csv_extras(df: DataFrame) -> DataFrame:
    """CSV has no types: an extra accounts column whose every value is a number (or a boolean)
    becomes double (or boolean), so it is kept like a typed Parquet column; the row's text stays in
    :data:`_ROW_TEXT` for the quarantine's JSON."""
    extras = _extra_names(df.columns, t.ACCOUNTS)
    if not extras:
        return df
    # A malformed line's values sit in the wrong columns (it is quarantined): it does not decide a type.
    well_formed = F.col(_CORRUPT).isNull() if _CORRUPT in df.columns else F.lit(True)
    aggs = []
    for i, c in enumerate(extras):
        present = named_col(c).isNotNull() & well_formed
        aggs += [
            F.count(F.when(present, 1)).alias(f"n{i}"),
            F.count(F.when(present & named_col(c).try_cast("double").isNull(), 1)).alias(f"d{i}"),
            F.count(F.when(present & named_col(c).try_cast("boolean").isNull(), 1)).alias(f"b{i}"),
        ]
    stats = df.agg(*aggs).first()
    assert stats is not None
    typed = {}
    for i, c in enumerate(extras):
        if stats[f"n{i}"] and not stats[f"d{i}"]:
            typed[c] = named_col(c).try_cast("double")  # a malformed line's text: null, not an ANSI error
        elif stats[f"n{i}"] and not stats[f"b{i}"]:
            typed[c] = named_col(c).try_cast("boolean")
    return df.withColumn(_ROW_TEXT, _row_json(df)).withColumns(typed) if typed else df


def read_input(spark: SparkSession, table: str, path: str, fmt: str, nanos_columns: Sequence[str] = ()) -> DataFrame:
    """Read one input as found (CSV: header, every column a string; Parquet: its own types), with
    nanosecond timestamp columns turned back into timestamps. Checks the required columns."""
    from delta.tables import DeltaTable

    try:
        if fmt == CSV:
            # Every column as text (named as Spark names the header's), plus the raw line of any row
            # whose field count differs from the header (Spark would pad or cut it silently, shifting
            # values into other columns).
            header = spark.read.option("header", True).option("inferSchema", False).csv(path).columns
            schema = T.StructType([T.StructField(c, T.StringType()) for c in [*header, _CORRUPT]])
            df = (spark.read.schema(schema).option("header", True).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", _CORRUPT).csv(path))
        # A cluster folder (hdfs:, s3a:, dbfs:) holding a Delta table: read as Parquet, it would also hold
        # the files later versions removed.
        elif fmt == DELTA or (not _is_local(path) and DeltaTable.isDeltaTable(spark, path)):
            df = spark.read.format("delta").load(path)
        else:
            df = spark.read.parquet(path)
        df.schema  # noqa: B018 - surface read errors here, naming the file
    except PySparkException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "TIMESTAMP(NANOS" in str(exc):
            first += " (write timestamps in microseconds: pandas' to_parquet(..., coerce_timestamps='us'))"
        raise IngestInputError(f"{table} file {path} cannot be read as {fmt}: {first}") from exc
    nanos = {c: F.timestamp_micros(F.expr(f"`{c}` div 1000")) for c in nanos_columns if c in df.columns}
    if nanos:
        df = df.withColumns(nanos)
    check_required_columns(df, table, f"{table} file {path}")
    return df


@contextmanager
def open_inputs(
    spark: SparkSession, paths: dict[str, str | None], echo: Callable[[str], None] = print
) -> Iterator[dict[str, DataFrame]]:
    """The input files ``{table: path}`` (None: not given) as DataFrames, usable inside the block.

    Every input is checked (exists, readable, required columns) before any is returned; dropped
    extra columns are reported through ``echo``. Parquet written by pandas stores nanosecond
    timestamps, which Spark reads only with a setting that must hold while the frames are used,
    hence a context manager::

        with open_inputs(spark, {"accounts": "a.csv", "events": "e.parquet"}) as raw:
            good, bad = validate_table(raw["accounts"], "accounts", run_date)
            good.show()
    """
    inputs = {table: resolve_input(table, path) for table, path in paths.items() if path is not None}
    nanos = {table: _parquet_nanos_columns(p) if fmt == PARQUET else [] for table, (p, fmt) in inputs.items()}
    # Spark's CSV parser, reading only a query's columns, misses a line's wrong field count: its
    # _corrupt_record is then null, and its shifted values pass as good ones.
    whole_lines = "false" if any(fmt == CSV for _, fmt in inputs.values()) else None
    with session_conf(spark, {_NANOS_AS_LONG: "true" if any(nanos.values()) else None, _CSV_PRUNING: whole_lines}):
        raw = {table: read_input(spark, table, p, fmt, nanos[table]) for table, (p, fmt) in inputs.items()}
        for table, df in list(raw.items()):
            index = pandas_index_columns(df.columns, csv=inputs[table][1] == CSV)
            if index:
                df = df.drop(*index)
                echo(f"note: {table} file {inputs[table][0]}: dropping column(s) {index} (pandas' index, "
                     "written with the rows: to_parquet/to_csv(index=False) leaves it out)")
            if inputs[table][1] == CSV and table == t.ACCOUNTS:
                df = _numeric_csv_extras(df)
            raw[table] = df
            kept, dropped = split_extra_columns(df.schema, table)
            hashed = _events_extras(table, dropped)
            if hashed:
                echo(f"note: {table} file {inputs[table][0]}: dropping column(s) {hashed} (kept only as their hash, "
                     f"{t.SOURCE_EXTRAS_HASH}, which tells apart events that differ only there)")
            rest = [c for c in dropped if c not in hashed]
            if rest:
                why = ("derived from event_ts" if table == t.EVENTS else
                       "only accounts keep extra columns, and only numeric or boolean ones")
                echo(f"note: {table} file {inputs[table][0]}: dropping column(s) {rest} ({why})")
            renamed = storable_names(df.columns, kept)
            if renamed:
                raw[table] = df.withColumnsRenamed(renamed)
                echo(f"note: {table} file {inputs[table][0]}: kept column(s) renamed {renamed} (Delta column names "
                     "cannot hold spaces or any of ,;{}()=)")
        yield raw


def add_quarantine_step_column(spark: SparkSession, warehouse: str) -> None:
    """Give a ``quarantine`` table written before the ``step`` column existed that column (null in its rows)."""
    add_missing_column(spark, warehouse, t.QUARANTINE, t.STEP, "STRING")


def write_quarantine(quarantine: DataFrame, warehouse: str, run_date: date, tables: Sequence[str]) -> None:
    """Replace ingest's rows of the (run_date, tables) slice of ``quarantine`` with ``quarantine``.

    Validate's rows of that slice stay: they are the only copy of the rows it moved out of the
    input tables. Rows written before the ``step`` column existed (null) count as ingest's."""
    add_quarantine_step_column(quarantine.sparkSession, warehouse)
    names = ", ".join(f"'{name}'" for name in tables)
    where = (f"{t.RUN_DATE} = DATE'{run_date.isoformat()}' AND `{t.TABLE}` IN ({names}) "
             f"AND (`{t.STEP}` = '{INGEST_STEP}' OR `{t.STEP}` IS NULL)")
    write_table(quarantine, warehouse, t.QUARANTINE, replace_where=where)


def ingest_files(
    spark: SparkSession,
    warehouse: str,
    *,
    accounts: str,
    events: str,
    edges: str,
    labels: str | None,
    run_date: date,
    echo: Callable[[str], None] = print,
    max_bad_share: float = 0.5,
    bad_share_min_rows: int = 100,
) -> dict[str, dict]:
    """Load users' Parquet/CSV files as the validated input tables; return counts per table.

    Accounts are validated first; events, edges and labels are then checked against the accounts
    that loaded. Good rows overwrite the input tables (events partitioned by ``event_date``); bad
    rows replace the (run_date, tables ingested) slice of ``quarantine`` (written first), so
    re-ingesting the same files leaves every table as it was. Each given table is replaced whole:
    pass the full export, not one day. Without ``labels`` the labels table is left untouched, or
    created empty when there is none.

    Returns ``{table: {"rows_in", "rows_loaded", "rows_quarantined", "reasons": {reason: n}, "copies":
    {reason: n}}}`` (``copies``: of those, the rows that are another's copy);
    rows in are counted on the input itself, and rows_in != loaded + quarantined raises
    :class:`IngestCountMismatch`. An accounts or events file without good rows, or a file of at least
    ``bad_share_min_rows`` rows of which more than ``max_bad_share`` are bad (validate's rule), raises
    :class:`MostlyBadInputError` before anything is written. The session must be in UTC (days are
    UTC days).
    """
    require_utc(spark)
    given = {t.ACCOUNTS: accounts, t.EVENTS: events, t.EDGES: edges, t.LABELS: labels}
    # Every input is read and checked before anything is written.
    with open_inputs(spark, given, echo) as raw, commit_metadata(spark, run_date=run_date.isoformat(), step="ingest"):
        result: dict[str, dict] = {}
        tagged: dict[str, DataFrame] = {}
        try:
            known = None
            # Accounts first: the other tables are checked against the accounts that load.
            for table in (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS):
                if table not in raw:
                    continue
                # Cached: counted, then written as good rows and as quarantine rows from one validation.
                tagged[table] = tag_rows(raw[table], table, run_date, known_accounts=known).persist(
                    StorageLevel.MEMORY_AND_DISK
                )
                result[table] = _count(table, raw[table], tagged[table])
                _refuse_mostly_bad(table, given[table], result[table], max_bad_share, bad_share_min_rows)
                if table == t.ACCOUNTS:
                    known = good_rows(tagged[table], table).select(t.ACCOUNT_ID)
            # Quarantine before the inputs: if a write fails, no bad row is in neither place.
            bad = [quarantine_rows(df, table, run_date) for table, df in tagged.items()]
            write_quarantine(reduce(DataFrame.unionByName, bad), warehouse, run_date, list(tagged))
            for table, rows in tagged.items():
                good = good_rows(rows, table)
                if table == t.EVENTS:
                    # Rebalance: one task per day would make a busy day one huge file.
                    good = good.hint("rebalance", t.EVENT_DATE)
                write_table(good, warehouse, table, partition_by=(t.EVENT_DATE,) if table == t.EVENTS else ())
            if t.LABELS not in tagged and not table_exists(spark, warehouse, t.LABELS):
                # No labels yet (a young platform): an empty table, so the run starts and training waits.
                write_table(spark.createDataFrame([], INPUT_SCHEMAS[t.LABELS]), warehouse, t.LABELS)
            if table_exists(spark, warehouse, t.TRUTH):
                # A simulated platform's ground truth no longer describes these inputs: training would give
                # their accounts its families, and a later simulate would take the warehouse for its own.
                delete_path(spark, t.table_path(warehouse, t.TRUTH))
                echo(f"removed {t.TRUTH}: the simulated platform's ground truth does not describe ingested inputs")
        finally:
            for df in tagged.values():
                df.unpersist()
        return result


def _count(table: str, raw: DataFrame, tagged: DataFrame) -> dict:
    """Rows in (counted on the input itself), loaded and quarantined per reason; they must add up."""
    found = tagged.groupBy(_REASON, copies(tagged)).count().collect()
    by_reason: dict[str | None, int] = {}
    copied: dict[str, int] = {}
    for reason, copy, n in found:
        by_reason[reason] = by_reason.get(reason, 0) + n
        if copy:
            copied[reason] = copied.get(reason, 0) + n
    loaded = by_reason.pop(None, 0)
    quarantined = sum(by_reason.values())
    rows_in = raw.count()
    if rows_in != loaded + quarantined:
        raise IngestCountMismatch(
            f"{table}: {rows_in} rows in but {loaded} loaded + {quarantined} quarantined; this is a bug"
        )
    return {
        ROWS_IN: rows_in,
        ROWS_LOADED: loaded,
        ROWS_QUARANTINED: quarantined,
        REASON_COUNTS: {r: by_reason[r] for r in REASONS if r in by_reason},
        COPIES: {r: copied[r] for r in REASONS if r in copied},
    }


def bad_share_limits(conf) -> dict:
    """``max_bad_share`` and ``bad_share_min_rows`` from the conf's ``validate`` section, for ingest and validate."""
    section = conf.section("validate")
    return {"max_bad_share": float(section["max_bad_share"]), "bad_share_min_rows": int(section["bad_share_min_rows"])}


def copies(tagged: DataFrame) -> Column:
    """Whether a row of :func:`tag_rows`' output is another's copy (events, accounts); false elsewhere."""
    return (F.col(_COPY) if _COPY in tagged.columns else F.lit(False)).alias("copy")


def mostly_bad(rows: int, bad: int, max_bad_share: float, min_rows: int) -> bool:
    """Ingest's and validate's stop: at least ``min_rows`` rows, more than ``max_bad_share`` of them bad.
    Callers count through :func:`without_copies`: a row's copies are neither rows nor bad rows, since one
    of each stays (nothing is missing), and counted, whether a night ran hung on how often a load was replayed."""
    return rows >= min_rows and bad > max_bad_share * rows


def without_copies(by_reason: Mapping[str | None, int],
                   copied: Mapping[str | None, int]) -> tuple[dict[str | None, int], str]:
    """The bad-share stop's view of rows counted by reason (None: good): each reason's rows that are no
    other row's copy (:func:`copies`), and the words its messages add about the copies left out."""
    n_copies = sum(copied.values())
    originals = {r: n - copied.get(r, 0) for r, n in by_reason.items() if n > copied.get(r, 0)}
    return originals, f", not counting {n_copies} copies of other rows" if n_copies else ""


def _refuse_mostly_bad(table: str, path: str | None, counts: dict, max_bad_share: float, min_rows: int) -> None:
    originals, copied = without_copies({None: counts[ROWS_LOADED], **counts[REASON_COUNTS]}, counts[COPIES])
    bad = {r: n for r, n in originals.items() if r is not None}
    rows_in, n_bad = sum(originals.values()), sum(bad.values())
    if mostly_bad(rows_in, n_bad, max_bad_share, min_rows):
        problem = f"has {n_bad} bad rows of {rows_in} (over {max_bad_share:.0%}{copied})"
    elif table in (t.ACCOUNTS, t.EVENTS) and counts[ROWS_LOADED] == 0:
        # However few rows: no account or no event, nothing could be scored, and the table replaced is the history.
        problem = "has no good rows"
    else:
        return
    top = sorted(bad.items(), key=lambda kv: -kv[1])[:3]
    reasons = ", ".join(f"{r} {n}" for r, n in top) or "no rows"
    raise MostlyBadInputError(
        f"{table} ({path}) {problem}: {reasons}. Nothing was written (ingest replaces the tables whole). "
        "Check the file (an unknown_account majority means the accounts export is incomplete or its ids "
        "do not match), then ingest again"
    )


def format_report(result: dict[str, dict]) -> str:
    """The counts of :func:`ingest_files` as lines: one per table, one per reason under it."""
    lines = [f"{'table':<10} {'rows in':>10} {'loaded':>10} {'quarantined':>12}"]
    for table, c in result.items():
        lines.append(f"{table:<10} {c[ROWS_IN]:>10} {c[ROWS_LOADED]:>10} {c[ROWS_QUARANTINED]:>12}")
        for reason, n in c[REASON_COUNTS].items():
            lines.append(f"  {reason:<30} {n:>12}")
    return "\n".join(lines)
