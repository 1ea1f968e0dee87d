"""The nightly run's first step: check the input tables for run date D before anything reads them.

Fatal problems stop the run with a named error that says what to do: an input table missing
(:class:`~botwatch.delta_io.TableMissingError`), a table without the contract's columns and types
(:class:`~botwatch.schemas.SchemaMismatchError`), ``accounts`` not one row per account
(:class:`AccountGrainError`), or no events on D (:class:`NoEventsError`).

Row problems do not stop the run: D's new rows (events of D, edges created on D, labels made on D,
and labels dated earlier that landed late) go through the same checks as ``botwatch ingest``
(:func:`botwatch.ingest.tag_rows`), plus one: an event in partition D whose ``event_ts`` falls on
another UTC day (``event_date_mismatch``); a bad row is moved out of its input table and into
``quarantine`` with its reason and ``step`` ``validate``.
Quarantine rows are added with an insert-only MERGE keyed on the whole row, never with
``replaceWhere``: ingest's rows for D (same table names, same run_date) stay, and rerunning D adds
nothing twice. A later ``botwatch ingest`` for the same date replaces only ingest's rows.

Usage::

    summary = validate_inputs(spark, warehouse, date(2026, 1, 12))
    summary["counts"]["events"]     # events on D
    summary["events_version"]       # the events table's version whose rows of D validate checked

The activity, features and score_stage2 steps read D's events as of ``events_version`` (see
:func:`botwatch.nightly.validated_events`): a late load of D after validate waits for the next run's
validate instead of reaching D's features and event sequences unchecked.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import cast

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.delta_io import (
    commit_metadata,
    data_commits,
    partition_changed_since,
    read_table,
    retried_commit,
    table_exists,
    table_version,
    write_table,
)
from botwatch.ingest import (
    _REASON,
    VALIDATE_STEP,
    add_quarantine_step_column,
    contract_columns,
    copies,
    good_rows,
    mostly_bad,
    quarantine_rows,
    tag_rows,
    without_copies,
)
from botwatch.schemas import INPUT_SCHEMAS, named_col, require_columns
from botwatch.spark import require_utc


class NoEventsError(RuntimeError):
    """The events table has no rows for the run date: the upstream load for D has not landed."""


class TooManyBadRowsError(RuntimeError):
    """Most of a table's rows of D are bad: an upstream load is likely broken; nothing was moved."""


class EventsChangedError(RuntimeError):
    """Another writer changed D's events while validate checked them (a late load): D's partition is not
    replaced by rows that are no longer all of it. :func:`validate_inputs` checks the day again."""


# How often validate checks D again while another writer keeps changing D's events.
VALIDATE_ATTEMPTS = 3


class AccountGrainError(RuntimeError):
    """``accounts`` has a null or repeated ``account_id``: every account would get one features and
    score row per copy. Nothing was moved: which copy is right is the upstream's call."""


# Which rows of each input table are "D's new rows" (the ones validate checks each night).
def _rows_of_day(table: str, run_date: dt.date) -> Column:
    day = F.lit(run_date)
    if table == t.EVENTS:
        return F.col(t.EVENT_DATE) == day  # a partition: pruned
    if table == t.EDGES:
        return F.to_date(F.col(t.CREATED_AT)) == day
    if table == t.LABELS:
        return F.to_date(F.col(t.LABELED_AT)) == day
    if table == t.ACCOUNTS:
        return F.to_date(F.col(t.CREATED_AT)) == day
    raise ValueError(f"no day filter for table {table!r}")


# Tables whose earlier or undated rows validate checks too (their rows of D alone are counted).
CHECKS_EARLIER_ROWS = (t.LABELS, t.EDGES)


def _rows_to_check(table: str, run_date: dt.date) -> Column:
    """The rows validate checks for D: D's new rows; for labels, every label up to D too (a verdict dated
    an earlier day often lands later, after that day's run; the table is small), and any undated one;
    for edges, any undated one (every date's graph holds it, and no day's rows would)."""
    if table == t.LABELS:
        return F.col(t.LABELED_AT).isNull() | (F.to_date(F.col(t.LABELED_AT)) <= F.lit(run_date))
    if table == t.EDGES:
        return F.col(t.CREATED_AT).isNull() | _rows_of_day(table, run_date)
    return _rows_of_day(table, run_date)


def check_schemas(spark: SparkSession, warehouse: str, versions: Mapping[str, int] | None = None
                  ) -> dict[str, DataFrame]:
    """Every input table (as of its version in ``versions``, else the latest), read and checked against the
    contract's columns and types."""
    frames = {}
    for table, schema in INPUT_SCHEMAS.items():
        # TableMissingError names the table and the fix.
        df = read_table(spark, warehouse, table, (versions or {}).get(table))
        required = {f.name: f.dataType for f in schema.fields if f.name != t.EVENT_DATE or table == t.EVENTS}
        # Producer-optional columns (signup ip/device) may be absent; the rest must be there and typed.
        optional = {t.SIGNUP_IP_HASH, t.SIGNUP_DEVICE_ID}
        frames[table] = require_columns(
            df, {k: v for k, v in required.items() if k not in optional}, f"input table '{table}'"
        )
    return frames


def add_quarantine_rows(spark: SparkSession, warehouse: str, rows: DataFrame) -> None:
    """Insert ``rows`` (``QUARANTINE_SCHEMA``) into ``quarantine`` unless an identical row is there."""
    if not table_exists(spark, warehouse, t.QUARANTINE):
        # Append, not overwrite: a writer that created the table meanwhile keeps its rows.
        write_table(rows, warehouse, t.QUARANTINE, mode="append")
        return
    from delta.tables import DeltaTable

    add_quarantine_step_column(spark, warehouse)
    key = " AND ".join(f"q.`{c}` <=> n.`{c}`" for c in (t.TABLE, t.REASON, t.RUN_DATE, t.ROW_JSON))
    # A row written before the step column existed (null) may be this step's own: not added twice.
    key += f" AND (q.`{t.STEP}` IS NULL OR q.`{t.STEP}` = n.`{t.STEP}`)"

    def commit() -> None:
        target = DeltaTable.forPath(spark, t.table_path(warehouse, t.QUARANTINE))
        target.alias("q").merge(rows.alias("n"), key).whenNotMatchedInsertAll().execute()

    # The table is shared by every date's validate and ingest: another's commit may come first.
    retried_commit(commit, "adding quarantined rows", t.QUARANTINE, "rerun the step")


def _check_events_unchanged(spark: SparkSession, warehouse: str, run_date: dt.date, version: int) -> None:
    """D's events as validate read them (``version``) are still all of D's partition: rows another writer
    added or changed since would be dropped by the rewrite of the partition, neither kept nor quarantined."""
    if partition_changed_since(spark, warehouse, t.EVENTS, version, run_date.isoformat()):  # events: by event_date
        raise EventsChangedError(
            f"another writer changed the events of {run_date} in {t.table_path(warehouse, t.EVENTS)} since its "
            f"version {version}, which validate checked (a late load). Nothing of the day was rewritten; rerun the "
            "date once the load has finished")


def _remove_bad_rows(spark: SparkSession, warehouse: str, table: str, run_date: dt.date, good: DataFrame,
                     bad_contract: DataFrame, events_version: int) -> int | None:
    """Take the bad rows of D out of the input table (one Delta commit). ``good`` and ``bad_contract``:
    materialised; events of D read as of ``events_version``. For events, returns the rewrite's version."""
    if table == t.EVENTS:
        # Events of D are one partition: replace it with its good rows (duplicates keep one copy).
        # Checked just before the write; from the write's start on, Delta refuses a concurrent commit to the
        # partition it replaces. A commit in between (seconds) is not seen: the run log then keys validate on
        # the version before it, so the next run of D checks again, but that commit's rows of D are gone.
        _check_events_unchanged(spark, warehouse, run_date, events_version)
        # Marked, to find its version: the table's latest may already be another writer's next commit.
        with commit_metadata(spark, step=VALIDATE_STEP, run_date=run_date.isoformat(),
                             rewrite=uuid.uuid4().hex) as marks:
            write_table(good, warehouse, t.EVENTS, partition_by=[t.EVENT_DATE],
                        replace_where=f"{t.EVENT_DATE} = '{run_date.isoformat()}'")
        current = table_version(spark, warehouse, t.EVENTS)
        mine = data_commits(spark, warehouse, t.EVENTS, events_version, current).where(
            F.col("userMetadata").isin(*marks))
        return int(cast(Row, mine.agg(F.max("version")).first())[0])
    from delta.tables import DeltaTable

    cols = [f.name for f in INPUT_SCHEMAS[table].fields]
    target = DeltaTable.forPath(spark, t.table_path(warehouse, table))
    key = " AND ".join(f"x.`{c}` <=> b.`{c}`" for c in cols)
    target.alias("x").merge(bad_contract.dropDuplicates().alias("b"), key).whenMatchedDelete().execute()
    return None


def validate_inputs(spark: SparkSession, warehouse: str, run_date: dt.date, max_bad_share: float = 0.5,
                    bad_share_min_rows: int = 100) -> dict:
    """The validate step for D: schemas, D has events, per-table counts for D, bad rows of D
    moved to ``quarantine``. Returns ``{"counts": {table: rows of D}, "quarantined": {table: n}}``.

    A table with at least ``bad_share_min_rows`` rows of D (or labels dated before D) of which more
    than ``max_bad_share`` are bad stops the run (:class:`TooManyBadRowsError`) before anything is
    moved: that is a broken upstream load (accounts not landed yet: every event an ``unknown_account``), and moving the
    whole day to quarantine would score D without its activity.

    Another writer's change to D's events while it runs (a late load) makes it check the day again, up to
    :data:`VALIDATE_ATTEMPTS` times (then :class:`EventsChangedError`): D's partition is rewritten only from
    all of its rows. ``events_version`` in the result: the events table's version whose rows of D are the
    ones it checked (its own rewrite of D, or the version it read when it moved none of D's events)."""
    require_utc(spark)  # D's partition and the day cuts are UTC days
    for attempt in range(1, VALIDATE_ATTEMPTS + 1):
        try:
            return _validate_once(spark, warehouse, run_date, max_bad_share, bad_share_min_rows)
        except EventsChangedError:
            if attempt == VALIDATE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _validate_once(spark: SparkSession, warehouse: str, run_date: dt.date, max_bad_share: float,
                   bad_share_min_rows: int) -> dict:
    # D's events are read as of this version: a change of the day after it makes validate check it again.
    events_version = table_version(spark, warehouse, t.EVENTS)
    # The other inputs too: the counts, the bad-share stop and the moves (which compute the tagged rows
    # again) judge one read of them. Read live, an accounts export landing after the stop moved rows the
    # stop and the counts never saw.
    versions = {table: table_version(spark, warehouse, table) for table in INPUT_SCHEMAS
                if table != t.EVENTS and table_exists(spark, warehouse, table)}
    frames = check_schemas(spark, warehouse, {**versions, t.EVENTS: events_version})
    known = frames[t.ACCOUNTS].select(t.ACCOUNT_ID)
    new_accounts = F.when(_rows_of_day(t.ACCOUNTS, run_date), 1)
    totals = cast(Row, frames[t.ACCOUNTS].agg(
        F.count(F.lit(1)), F.count(new_accounts), F.count_distinct(t.ACCOUNT_ID), F.count(t.ACCOUNT_ID)).first())
    counts = {"accounts_total": totals[0], "accounts_new": totals[1]}
    if totals[2] != totals[0]:
        _raise_account_grain(frames[t.ACCOUNTS], warehouse, totals[0] - totals[3], totals[3] - totals[2])
    tagged_by_table: dict[str, DataFrame] = {}
    quarantined = {}
    # Every table is checked before any row moves. Events first: a day without events stops the run.
    for table in (t.EVENTS, t.EDGES, t.LABELS):
        checked = frames[table].where(_rows_to_check(table, run_date))
        # A producer's own extra columns ride along: rewriting D's events from contract columns
        # alone nulled them in every good row, and the quarantined rows' JSON left them out.
        extras = [c for c in checked.columns if c not in INPUT_SCHEMAS[table].fieldNames()]
        tagged = tag_rows(checked.select(*contract_columns(table), *map(named_col, extras)), table, run_date,
                          known_accounts=known, event_date=run_date if table == t.EVENTS else None,
                          keep_extras=extras)
        # Counts and the bad share are of D's rows; earlier rows' bad ones (late labels) are moved too.
        of_day = F.coalesce(_rows_of_day(table, run_date), F.lit(False)) if table in CHECKS_EARLIER_ROWS else (
            F.lit(True))
        found = tagged.groupBy(_REASON, of_day.alias("of_day"), copies(tagged)).count().collect()
        reasons: dict[str | None, int] = {}
        late: dict[str | None, int] = {}
        copied: dict[bool, dict[str | None, int]] = {True: {}, False: {}}  # of D's rows, of the others
        for reason, day, copy, n in found:
            into = reasons if day else late
            into[reason] = into.get(reason, 0) + n
            if copy:
                copied[bool(day)][reason] = copied[bool(day)].get(reason, 0) + n
        late_bad = {k: v for k, v in late.items() if k is not None}
        counts[table] = sum(reasons.values())
        if table == t.EVENTS and counts[table] == 0:
            raise NoEventsError(
                f"no events for {run_date} in {t.table_path(warehouse, t.EVENTS)} (partition "
                f"{t.EVENT_DATE}={run_date}). {_moved_before(spark, warehouse, run_date)}Load that day's events first "
                "(the upstream export, or `botwatch ingest` with the full history: ingest replaces the input "
                "tables), then rerun the date."
            )
        if table == t.EVENTS and not reasons.get(None):
            # However few: moving them all would score D as a day without activity.
            raise NoEventsError(
                f"none of the {counts[table]} events of {run_date} is good "
                f"({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}); nothing was moved. Fix the day's "
                "events upstream (or with `botwatch ingest`), then rerun the date."
            )
        bad = {k: v for k, v in reasons.items() if k is not None}
        quarantined[table] = sum(bad.values()) + sum(late_bad.values())
        # The same stop for the earlier or undated rows (labels, edges): a renamed source or an accounts
        # export that lost accounts would otherwise move the label history out night after night.
        for by_reason, of_copies, which in ((reasons, copied[True], f"rows of {run_date}"),
                                            (late, copied[False], "undated rows" if table == t.EDGES
                                             else f"rows dated before {run_date}")):
            _stop_if_mostly_bad(table, which, *without_copies(by_reason, of_copies), max_bad_share,
                                bad_share_min_rows)
        tagged_by_table[table] = tagged
    checked_version = events_version
    for table, tagged in tagged_by_table.items():
        if quarantined[table]:
            rewrote = _move_bad_rows(spark, warehouse, table, run_date, tagged, events_version)
            checked_version = rewrote if rewrote is not None else checked_version
    return {"counts": counts, "quarantined": quarantined, "events_version": checked_version}


def _stop_if_mostly_bad(table: str, which: str, originals: dict[str | None, int], copied: str,
                        max_bad_share: float, min_rows: int) -> None:
    """``originals`` and ``copied``: :func:`botwatch.ingest.without_copies` of the rows' counts by reason."""
    rows = sum(originals.values())
    bad = {k: v for k, v in originals.items() if k is not None}
    n_bad = sum(bad.values())
    if mostly_bad(rows, n_bad, max_bad_share, min_rows):
        top = max(bad, key=lambda k: bad[k])
        raise TooManyBadRowsError(
            f"{n_bad} of the {rows} {table} {which} are bad ({bad[top]} {top}){copied}, more than "
            f"validate.max_bad_share ({max_bad_share}); nothing was moved. An upstream load is likely incomplete "
            "(unknown_account: the accounts export has not landed) or changed (unknown_label_source: a renamed "
            "source); fix it and rerun the date, or raise validate.max_bad_share if this is real"
        )


def _moved_before(spark: SparkSession, warehouse: str, run_date: dt.date) -> str:
    """What an earlier validate of D moved out of events, for :class:`NoEventsError`'s message."""
    if not table_exists(spark, warehouse, t.QUARANTINE):
        return ""
    quarantine = read_table(spark, warehouse, t.QUARANTINE)
    by_validate = F.col(t.STEP) == VALIDATE_STEP if t.STEP in quarantine.columns else F.lit(True)
    moved = quarantine.where((F.col(t.TABLE) == t.EVENTS) & (F.col(t.RUN_DATE) == F.lit(run_date))
                             & by_validate).count()
    return f"An earlier validate of the date moved {moved} of its events to quarantine. " if moved else ""


def _raise_account_grain(accounts: DataFrame, warehouse: str, null_ids: int, extra_copies: int) -> None:
    problems = []
    if null_ids:
        problems.append(f"{null_ids} row(s) without an account_id")
    if extra_copies:
        repeated = accounts.groupBy(t.ACCOUNT_ID).count().where(F.col(t.ACCOUNT_ID).isNotNull() & (F.col("count") > 1))
        examples = sorted(r[0] for r in repeated.orderBy(t.ACCOUNT_ID).limit(5).collect())
        problems.append(f"{extra_copies} extra row(s) of repeated ids (first ids: {examples})")
    raise AccountGrainError(
        f"{t.table_path(warehouse, t.ACCOUNTS)} is not one row per account: {' and '.join(problems)}. Nothing was "
        "moved. An accounts export was likely appended instead of merged: keep one row per account_id, the newest "
        "(MERGE the export on account_id), then rerun the date. `botwatch ingest` keeps one copy of each id too, "
        "but the one whose row text sorts first, not the newest: give it one row per account as well"
    )


def _move_bad_rows(spark: SparkSession, warehouse: str, table: str, run_date: dt.date, tagged: DataFrame,
                   events_version: int) -> int | None:
    """Quarantine, then take out of the input table, the bad rows of ``tagged``; for events, returns the
    version of the rewrite of D."""
    # Read once: the rows quarantined and the rows that replace D's are of one version of the table, and
    # never recomputed from the table they replace.
    tagged = tagged.localCheckpoint()
    bad_contract = tagged.where(F.col(_REASON).isNotNull()).select(*contract_columns(table))
    if table == t.EVENTS:
        # Checked before quarantining: else another writer's change would leave quarantine rows of rows never moved.
        _check_events_unchanged(spark, warehouse, run_date, events_version)
        bad_contract = bad_contract.withColumn(t.EVENT_DATE, F.lit(run_date))
    add_quarantine_rows(spark, warehouse, quarantine_rows(tagged, table, run_date, VALIDATE_STEP))
    return _remove_bad_rows(spark, warehouse, table, run_date, good_rows(tagged, table), bad_contract, events_version)
