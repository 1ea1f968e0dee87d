"""The nightly run (botwatch.nightly, validate, publish): skip logic, run log, the date lock,
the ``scores_latest`` MERGE, and on the shared simulated platform: a rerun gives identical
tables with no duplicate keys, and a run that fails midway then reruns ends where an
uninterrupted run ends."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from tests.helpers import DAG_WAIT_TIMEOUT_S, JAVA_OPTIONS, canonical_rows, copy_warehouse, merges_losing

from botwatch import files, nightly, registry, steps
from botwatch import tables as t
from botwatch.delta_io import (
    CommitConflictError,
    TableMissingError,
    commit_metadata,
    read_table,
    table_exists,
    write_table,
)
from botwatch.ingest import write_quarantine
from botwatch.schemas import INPUT_SCHEMAS, QUARANTINE_SCHEMA, SchemaMismatchError
from botwatch.scoring.latest import publish_latest
from botwatch.training import NotEnoughLabelsError
from botwatch.validate import (
    AccountGrainError,
    NoEventsError,
    TooManyBadRowsError,
    add_quarantine_rows,
    validate_inputs,
)

D = dt.date(2026, 1, 12)


def ts(day: dt.date, hour: int = 12, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute)


def write_inputs(spark, warehouse: str, *, events=None, edges=None, labels=None, accounts=None) -> None:
    accounts = accounts if accounts is not None else [
        (1, ts(dt.date(2025, 1, 1)), "US", False, 0.5, None, None),
        (2, ts(dt.date(2025, 6, 1)), "DE", False, 0.7, None, None),
        (3, ts(D, 3), "JP", True, 0.2, None, None),
    ]
    events = events if events is not None else [(1, ts(D, 9), "post", "ip1", "dev1", D)]
    edges = edges if edges is not None else [(1, 2, ts(dt.date(2025, 7, 1)))]
    labels = labels if labels is not None else [(2, 0, "appeal", ts(dt.date(2025, 12, 1)))]
    for table, rows in ((t.ACCOUNTS, accounts), (t.EVENTS, events), (t.EDGES, edges), (t.LABELS, labels)):
        df = spark.createDataFrame(rows, INPUT_SCHEMAS[table])
        write_table(df, warehouse, table, partition_by=[t.EVENT_DATE] if table == t.EVENTS else ())


# ---------------------------------------------------------------- validate


def test_validate_moves_bad_rows_of_the_day_to_quarantine_and_keeps_ingests(spark, warehouse):
    before = D - dt.timedelta(days=1)
    events = [
        (1, ts(D, 9), "post", "ip1", "dev1", D),
        (1, ts(D, 9), "post", "ip1", "dev1", D),        # exact duplicate: one copy stays
        (99, ts(D, 10), "like", "ip2", "dev2", D),      # unknown account
        (2, ts(D, 11), "teleport", "ip3", "dev3", D),   # unknown event type
        (2, ts(D, 12), "like", "ip3", "dev3", D),
        (2, ts(before, 23, 59), "like", "ip3", "dev3", D),  # filed under D, happened on D-1
        (99, ts(before, 10), "like", "ip2", "dev2", before),  # bad, but not D's: left for D-1's run
    ]
    edges = [(1, 2, ts(dt.date(2025, 7, 1))), (3, 3, ts(D, 5)), (2, 1, ts(D, 6))]  # a self-follow on D
    labels = [(2, 0, "appeal", ts(dt.date(2025, 12, 1))), (1, 1, "psychic", ts(D, 8)), (1, 1, "investigator", ts(D, 9))]
    write_inputs(spark, warehouse, events=events, edges=edges, labels=labels)
    # A row ingest put in quarantine for D (same table name): validate must not erase it.
    ingest_row = spark.createDataFrame([("events", "bad_type", D, '{"account_id": "x"}', "ingest")], QUARANTINE_SCHEMA)
    write_quarantine(ingest_row, warehouse, D, ["events"])

    got = validate_inputs(spark, warehouse, D)

    assert got["counts"] == {"accounts_total": 3, "accounts_new": 1, "events": 6, "edges": 2, "labels": 2}
    assert got["quarantined"] == {"events": 4, "edges": 1, "labels": 1}
    q = read_table(spark, warehouse, t.QUARANTINE).toPandas()
    reasons = sorted(zip(q[t.TABLE], q[t.REASON], strict=True))
    assert reasons == sorted([
        ("events", "bad_type"), ("events", "duplicate_event"), ("events", "unknown_account"),
        ("events", "unknown_event_type"), ("events", "event_date_mismatch"), ("edges", "self_follow"),
        ("labels", "unknown_label_source"),
    ])
    ev = read_table(spark, warehouse, t.EVENTS).toPandas()
    assert sorted(zip(ev[t.ACCOUNT_ID], ev[t.EVENT_TYPE], ev[t.EVENT_DATE], strict=True)) == sorted([
        (1, "post", D), (2, "like", D), (99, "like", before),
    ])
    assert sorted(map(tuple, read_table(spark, warehouse, t.EDGES).select(t.SRC, t.DST).collect())) == [(1, 2), (2, 1)]
    assert sorted(r[t.SOURCE] for r in read_table(spark, warehouse, t.LABELS).collect()) == ["appeal", "investigator"]

    assert sorted(q[t.STEP]) == ["ingest"] + ["validate"] * 6
    # A rerun finds nothing new and adds nothing twice.
    again = validate_inputs(spark, warehouse, D)
    assert again["quarantined"] == {"events": 0, "edges": 0, "labels": 0}
    assert read_table(spark, warehouse, t.QUARANTINE).count() == len(q)
    # Ingesting for D again replaces ingest's rows of D only: the rows validate moved out of the input
    # tables exist nowhere else.
    reingest = spark.createDataFrame([("events", "null_key", D, "{}", "ingest")], QUARANTINE_SCHEMA)
    write_quarantine(reingest, warehouse, D, ["events", "edges", "labels"])
    after = read_table(spark, warehouse, t.QUARANTINE).toPandas()
    assert sorted(zip(after[t.STEP], after[t.REASON], strict=True)) == sorted(
        [("ingest", "null_key")] + [("validate", r) for s, r in zip(q[t.STEP], q[t.REASON], strict=True)
                                    if s == "validate"])


def test_validate_keeps_what_another_writer_does_to_the_day_while_it_runs(spark, warehouse, monkeypatch):
    """D's partition is replaced by its good rows: a late event appended after they were read (here just after
    the duplicate went to quarantine), or a same-size correction of the day, was undone, neither kept nor
    quarantined. Validate sees the day changed and checks it again; another day's commit is no change of D."""
    import botwatch.validate as validate_module

    copy = (1, ts(D, 9), "post", "ip1", "dev1", D)
    schema = INPUT_SCHEMAS[t.EVENTS]
    real, calls = validate_module.add_quarantine_rows, []

    def validate_with(change, events, every_time=False):
        """validate_inputs of ``events`` with ``change`` (of the events table) made by another writer just
        after the first quarantine insert (or after each)."""
        write_inputs(spark, warehouse, events=events)
        calls.clear()

        def then_the_change(spark_, warehouse_, rows):
            real(spark_, warehouse_, rows)
            calls.append(1)
            if len(calls) == 1 or every_time:
                change()

        monkeypatch.setattr(validate_module, "add_quarantine_rows", then_the_change)
        return validate_inputs(spark, warehouse, D)

    def rows() -> list:
        return sorted(map(tuple, read_table(spark, warehouse, t.EVENTS).select(t.ACCOUNT_ID, t.DEVICE_ID).collect()))

    late = spark.createDataFrame([(2, ts(D, 13), "like", "ip2", "dev2", D)], schema)
    got = validate_with(lambda: write_table(late, warehouse, t.EVENTS, mode="append"), [copy, copy])
    assert len(calls) == 2 and got["counts"][t.EVENTS] == 3 and got["quarantined"][t.EVENTS] == 1
    assert rows() == [(1, "dev1"), (2, "dev2")]
    assert [r[0] for r in read_table(spark, warehouse, t.QUARANTINE).select(t.REASON).collect()] == [
        "duplicate_event"]  # the first check's row not added twice

    # A correction of the day with as many rows: validate's rewrite would have put dev2 back.
    corrected = spark.createDataFrame([copy, copy, (2, ts(D, 13), "like", "ip2", "dev9", D)], schema)
    got = validate_with(lambda: write_table(corrected, warehouse, t.EVENTS, replace_where=f"event_date = '{D}'"),
                        [copy, copy, (2, ts(D, 13), "like", "ip2", "dev2", D)])
    assert len(calls) == 2 and rows() == [(1, "dev1"), (2, "dev9")]

    # The next day's events landing meanwhile change nothing of D: no second check.
    nxt = D + dt.timedelta(days=1)
    tomorrow = spark.createDataFrame([(2, ts(nxt, 1), "like", "ip2", "dev2", nxt)], schema)
    validate_with(lambda: write_table(tomorrow, warehouse, t.EVENTS, mode="append"), [copy, copy])
    assert len(calls) == 1 and rows() == [(1, "dev1"), (2, "dev2")]

    # A writer that never stops changing the day: validate gives up, rewriting nothing.
    with pytest.raises(validate_module.EventsChangedError, match="another writer changed the events of"):
        validate_with(lambda: write_table(late, warehouse, t.EVENTS, mode="append"), [copy, copy], every_time=True)
    assert len(calls) == validate_module.VALIDATE_ATTEMPTS
    assert read_table(spark, warehouse, t.EVENTS).count() == 2 + validate_module.VALIDATE_ATTEMPTS


def test_a_change_of_the_days_partition_is_seen_under_delta_column_mapping_too(spark, warehouse):
    """With column mapping (needed to rename or drop a producer's column) the log names partition columns by
    their physical names (``col-...``): read by the logical name, validate's check never saw a change."""
    from botwatch.delta_io import partition_changed_since

    path = t.table_path(warehouse, t.EVENTS)
    spark.sql(f"CREATE TABLE delta.`{path}` ({INPUT_SCHEMAS[t.EVENTS].toDDL()}) USING delta PARTITIONED BY "
              "(event_date) TBLPROPERTIES ('delta.columnMapping.mode' = 'name', 'delta.minReaderVersion' = '2', "
              "'delta.minWriterVersion' = '5')")

    def append(day):
        row = [(1, ts(day, 9), "post", "ip1", "dev1", day)]
        write_table(spark.createDataFrame(row, INPUT_SCHEMAS[t.EVENTS]), warehouse, t.EVENTS, mode="append")

    append(D)
    read_at = nightly.table_version(spark, warehouse, t.EVENTS)
    append(D + dt.timedelta(days=1))
    assert not partition_changed_since(spark, warehouse, t.EVENTS, read_at, D.isoformat())
    append(D)
    assert partition_changed_since(spark, warehouse, t.EVENTS, read_at, D.isoformat())


def test_validate_checks_labels_that_land_after_the_day_they_are_dated(spark, warehouse):
    """A verdict dated an earlier day often lands after that day's run: validate checks every label up to D
    (the table is small), so a late ``label=2`` never reaches training. D's counts and bad share stay D's."""
    labels = [
        (2, 0, "appeal", ts(dt.date(2025, 12, 1))),
        (1, 2, "investigator", ts(D - dt.timedelta(days=3))),  # late, not 0/1
        (42, 1, "user_report", ts(D - dt.timedelta(days=2))),  # late, unknown account
        (1, 1, "investigator", ts(D + dt.timedelta(days=1))),  # dated after D: D+1's run checks it
    ]
    write_inputs(spark, warehouse, labels=labels)
    got = validate_inputs(spark, warehouse, D)
    assert got["counts"]["labels"] == 0 and got["quarantined"]["labels"] == 2
    q = read_table(spark, warehouse, t.QUARANTINE).where(F.col(t.TABLE) == t.LABELS).toPandas()
    assert sorted(q[t.REASON]) == ["label_not_binary", "unknown_account"] and set(q[t.RUN_DATE]) == {D}
    kept = read_table(spark, warehouse, t.LABELS).collect()
    assert sorted((r[t.ACCOUNT_ID], r[t.SOURCE]) for r in kept) == [(1, "investigator"), (2, "appeal")]
    assert validate_inputs(spark, warehouse, D)["quarantined"]["labels"] == 0


def test_validate_checks_undated_edges(spark, warehouse):
    """An edge without created_at is in every date's graph but of no day's rows: validate checks it every
    night (a follow of an account that does not exist would count in its follower's degree)."""
    edges = [(1, 2, ts(dt.date(2025, 7, 1))), (1, 999, None), (2, 1, None), (3, 1, ts(D, 5))]
    write_inputs(spark, warehouse, edges=edges)
    got = validate_inputs(spark, warehouse, D)
    assert got["counts"]["edges"] == 1 and got["quarantined"]["edges"] == 1
    q = read_table(spark, warehouse, t.QUARANTINE).where(F.col(t.TABLE) == t.EDGES).toPandas()
    assert list(q[t.REASON]) == ["unknown_account"] and json.loads(q[t.ROW_JSON][0])[t.DST] == 999
    assert sorted(map(tuple, read_table(spark, warehouse, t.EDGES).select(t.SRC, t.DST).collect())) == [
        (1, 2), (2, 1), (3, 1)]
    assert validate_inputs(spark, warehouse, D)["quarantined"]["edges"] == 0


def test_validate_keeps_a_producers_extra_columns_when_it_rewrites_the_days_events(spark, warehouse):
    write_inputs(spark, warehouse)
    # A dot in a name is allowed in Delta; as a bare string Spark reads it as a struct's field.
    schema = T.StructType([*INPUT_SCHEMAS[t.EVENTS].fields, T.StructField("user_agent", T.StringType()),
                           T.StructField("client.build", T.IntegerType())])
    events = [(1, ts(D, 9), "post", "ip1", "dev1", D, "ua-a", 7),
              (1, ts(D, 9), "post", "ip1", "dev1", D, "ua-a", 7),  # duplicate: D's partition is rewritten
              (1, ts(D, 9), "post", "ip1", "dev1", D, "ua-a", 8),  # another event: only an extra differs
              (2, ts(D, 12), "like", "ip3", "dev3", D, "ua-b", None)]
    spark.createDataFrame(events, schema).write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true").partitionBy(t.EVENT_DATE).save(t.table_path(warehouse, t.EVENTS))

    assert validate_inputs(spark, warehouse, D)["quarantined"]["events"] == 1
    got = read_table(spark, warehouse, t.EVENTS)
    assert got.columns == schema.fieldNames()
    assert sorted(map(tuple, got.select(t.ACCOUNT_ID, "user_agent", "`client.build`").collect())) == [
        (1, "ua-a", 7), (1, "ua-a", 8), (2, "ua-b", None)]
    moved = json.loads(read_table(spark, warehouse, t.QUARANTINE).first()[t.ROW_JSON])
    assert moved["user_agent"] == "ua-a" and moved["client.build"] == 7


def test_the_days_features_read_the_events_validate_checked(spark, test_conf, monkeypatch):
    """Events of D that land after validate (a late load: an unknown account's, and a good one) reached D's
    activity partial and features unchecked. The activity and features steps read D's events as validate left
    them and key their run-log rows on that version; the next run validates the late rows, then uses the
    good one. An OPTIMIZE of D is no change; a validate older than the Delta log keeps reads the latest."""
    from botwatch import files as files_module
    from botwatch.delta_io import partition_changed_since
    from botwatch.features.activity import N_EVENTS

    wh = test_conf["warehouse"]
    copy = (1, ts(D, 9), "post", "ip1", "dev1", D)
    write_inputs(spark, wh, events=[copy, copy, (2, ts(D, 10), "like", "ip2", "dev2", D)])
    quiet = {"echo": lambda _: None}
    nightly.run_steps(spark, test_conf, D, ["validate"], **quiet)
    checked = json.loads(nightly.log_rows(spark, wh, D)["validate"]["summary"])["events_version"]
    late = [(99, ts(D, 11), "like", "ip9", "dev9", D), (2, ts(D, 12), "like", "ip2", "dev2", D)]
    write_table(spark.createDataFrame(late, INPUT_SCHEMAS[t.EVENTS]), wh, t.EVENTS, mode="append")

    def events_of_d(table: str, column: str, day_column: str) -> dict:
        rows = read_table(spark, wh, table).where(F.col(day_column) == F.lit(D)).select(t.ACCOUNT_ID, column)
        return {r[0]: r[1] for r in rows.collect()}

    with monkeypatch.context() as m:  # as if the log had dropped the commits since validate
        m.setattr(files_module, "exists", lambda path, spark_=None: "_delta_log" not in path)
        assert nightly.validated_events(spark, wh, D) is None
    got = nightly.run_steps(spark, test_conf, D, ["activity", "features"], **quiet)
    assert events_of_d(t.ACTIVITY_DAILY, N_EVENTS, t.DAY) == {1: 1, 2: 1}
    assert {k: v for k, v in events_of_d(t.FEATURES, f"{N_EVENTS}_1d", t.RUN_DATE).items() if v} == {1: 1, 2: 1}
    logged = nightly.log_rows(spark, wh, D)
    for step in ("activity", "features"):
        assert got[step][nightly.READ_VERSIONS] == {t.EVENTS: checked}
        assert logged[step]["input_versions"][t.EVENTS] == checked < nightly.table_version(spark, wh, t.EVENTS)

    again = nightly.run_steps(spark, test_conf, D, ["validate", "activity", "features"], **quiet)
    assert statuses(again) == {"validate": "ok", "activity": "ok", "features": "ok"}
    assert again["validate"]["quarantined"][t.EVENTS] == 1
    assert nightly.READ_VERSIONS not in again["activity"]
    assert events_of_d(t.ACTIVITY_DAILY, N_EVENTS, t.DAY) == {1: 1, 2: 2}
    # Nothing moved this time: validate's version is the one it read, and no step reads an older one.
    nightly.run_steps(spark, test_conf, D, ["validate"], force=True, **quiet)
    assert nightly.validated_events(spark, wh, D) is None
    checked = nightly.table_version(spark, wh, t.EVENTS)
    spark.sql(f"OPTIMIZE delta.`{t.table_path(wh, t.EVENTS)}` ZORDER BY ({t.ACCOUNT_ID})")
    assert partition_changed_since(spark, wh, t.EVENTS, checked, D.isoformat())  # it rewrote D's files
    assert nightly.validated_events(spark, wh, D) is None


def test_a_step_rerun_whose_validated_events_were_vacuumed_says_to_validate_again(spark, test_conf):
    """A late load, an OPTIMIZE, then a corrected export that replaced D's events after validate ran, then a VACUUM
    past the retention: a step-only rerun read D as validate checked it and failed deep in the step with a bare
    FileNotFoundException. It now says which files are gone and to validate D again, which works."""
    from botwatch.delta_io import files_removed_since
    from botwatch.features.activity import N_EVENTS
    from botwatch.maintenance import vacuum

    wh = test_conf["warehouse"]
    write_inputs(spark, wh, events=[(1, ts(D, 9), "post", "ip1", "dev1", D), (2, ts(D, 10), "like", "ip2", "dev2", D)])
    quiet = {"echo": lambda _: None}
    nightly.run_steps(spark, test_conf, D, ["validate"], **quiet)
    version = json.loads(nightly.log_rows(spark, wh, D)["validate"]["summary"])["events_version"]
    checked = {r[0] for r in read_table(spark, wh, t.EVENTS, version).where(F.col(t.EVENT_DATE) == F.lit(D))
               .select(F.input_file_name()).distinct().collect()}
    rows = [(2, ts(D, 12), "like", "ip2", "dev2", D)]
    write_table(spark.createDataFrame(rows, INPUT_SCHEMAS[t.EVENTS]), wh, t.EVENTS, mode="append")
    # An OPTIMIZE (no data change) is what removed the version's files here; the replace removes its output.
    spark.sql(f"OPTIMIZE delta.`{t.table_path(wh, t.EVENTS)}` ZORDER BY ({t.ACCOUNT_ID})")
    rows += [(1, ts(D, 9), "post", "ip1", "dev1", D), (1, ts(D, 11), "post", "ip1", "dev1", D)]
    write_table(spark.createDataFrame(rows, INPUT_SCHEMAS[t.EVENTS]), wh, t.EVENTS,
                replace_where=f"{t.EVENT_DATE} = '{D}'")
    # The late load's and OPTIMIZE's files came and went after the version: they are not the version's files.
    assert {f"file:{p}" for p in files_removed_since(spark, wh, t.EVENTS, version, D.isoformat())} == checked
    assert nightly.validated_events(spark, wh, D) == version  # the files are still there
    vacuum(spark, wh, t.EVENTS, 0)
    with pytest.raises(nightly.ValidatedEventsGoneError,
                       match=rf"VACUUM has deleted {len(checked)} of the files that version read .*"
                             rf"validate the date again first \(`botwatch run --date {D} --step validate`"):
        nightly.validated_events(spark, wh, D)
    with pytest.raises(nightly.StepFailedError) as failed:
        nightly.run_steps(spark, test_conf, D, ["activity"], **quiet)
    assert isinstance(failed.value.__cause__, nightly.ValidatedEventsGoneError)
    again = nightly.run_steps(spark, test_conf, D, ["validate", "activity"], **quiet)
    assert statuses(again) == {"validate": "ok", "activity": "ok"}
    got = read_table(spark, wh, t.ACTIVITY_DAILY).where(F.col(t.DAY) == F.lit(D)).select(t.ACCOUNT_ID, N_EVENTS)
    assert dict(map(tuple, got.collect())) == {1: 2, 2: 1}


def test_validate_refuses_a_session_outside_utc(spark, warehouse):
    """Partition D and the day cuts are UTC days: in another zone, D's early-hour events would read as
    ``event_date_mismatch`` and move out of ``events``."""
    from botwatch.spark import TIME_ZONE_KEY, SessionTimeZoneError, session_conf

    write_inputs(spark, warehouse)
    before = read_table(spark, warehouse, t.EVENTS).count()
    with session_conf(spark, {TIME_ZONE_KEY: "America/New_York"}), pytest.raises(SessionTimeZoneError):
        validate_inputs(spark, warehouse, D)
    assert read_table(spark, warehouse, t.EVENTS).count() == before
    assert not table_exists(spark, warehouse, t.QUARANTINE)


def test_quarantine_written_before_its_step_column_gets_it(spark, warehouse, monkeypatch):
    """A table of the four older columns: ingest adds ``step`` (old rows null) and replaces the old
    rows of its slice (they count as its own); validate's MERGE adds its rows beside them, except
    those an old row already holds."""
    old_schema = T.StructType(QUARANTINE_SCHEMA.fields[:4])
    other_day = D - dt.timedelta(days=3)
    old = spark.createDataFrame([("events", "bad_type", D, "{}"), ("edges", "self_follow", other_day, "{}")],
                                old_schema)
    write_table(old, warehouse, t.QUARANTINE)
    write_quarantine(spark.createDataFrame([("events", "null_key", D, "{}", "ingest")], QUARANTINE_SCHEMA),
                     warehouse, D, ["events"])
    got = read_table(spark, warehouse, t.QUARANTINE)
    assert got.schema.fieldNames() == QUARANTINE_SCHEMA.fieldNames()
    assert sorted(map(tuple, got.select(t.REASON, t.RUN_DATE, t.STEP).collect())) == [
        ("null_key", D, "ingest"), ("self_follow", other_day, None)]

    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
        t.table_path(warehouse, t.QUARANTINE))
    validate_rows = spark.createDataFrame([("labels", "label_not_binary", D, "{}", "validate"),
                                           ("events", "bad_type", D, "{}", "validate")],  # as an old row: not added
                                          QUARANTINE_SCHEMA)
    # Every date's validate adds to this one table: a MERGE that another's commit beats is retried.
    attempts = merges_losing(monkeypatch, 1)
    add_quarantine_rows(spark, warehouse, validate_rows)
    got = read_table(spark, warehouse, t.QUARANTINE)
    assert len(attempts) == 2 and sorted(map(tuple, got.select(t.REASON, t.STEP).collect()), key=str) == sorted(
        [("bad_type", None), ("self_follow", None), ("label_not_binary", "validate")], key=str)


def test_validate_moves_the_rows_it_counted_when_accounts_change_after_its_stop(spark, warehouse, monkeypatch):
    """The counts and the bad-share stop judged one read of the tables, the moves another: an incomplete
    accounts export landing after the stop passed had every event and label of its lost accounts moved as
    unknown_account (the stop never saw them), and validate reported one of each."""
    import botwatch.validate as validate_module

    copy = (1, ts(D, 9), "post", "ip1", "dev1", D)
    events = [copy, copy] + [(2, ts(D, 10, m), "like", "ip2", "dev2", D) for m in range(5)]
    labels = [(2, 0, "appeal", ts(dt.date(2025, 12, 1))), (1, 1, "psychic", ts(D, 8))]
    write_inputs(spark, warehouse, events=events, labels=labels)
    real, landed = validate_module._move_bad_rows, []
    only_account_3 = spark.createDataFrame([(3, ts(D, 3), "JP", True, 0.2, None, None)], INPUT_SCHEMAS[t.ACCOUNTS])

    def move_after_a_late_accounts_export(*args):
        if not landed:
            write_table(only_account_3, warehouse, t.ACCOUNTS, mode="overwrite")
            landed.append(True)
        return real(*args)

    monkeypatch.setattr(validate_module, "_move_bad_rows", move_after_a_late_accounts_export)
    got = validate_inputs(spark, warehouse, D)
    assert landed and got["quarantined"] == {t.EVENTS: 1, t.EDGES: 0, t.LABELS: 1}
    assert read_table(spark, warehouse, t.EVENTS).count() == 6 and read_table(spark, warehouse, t.LABELS).count() == 1
    moved = read_table(spark, warehouse, t.QUARANTINE).groupBy(t.TABLE, t.REASON).count().collect()
    assert sorted(map(tuple, moved)) == [(t.EVENTS, "duplicate_event", 1), (t.LABELS, "unknown_label_source", 1)]


def test_validate_stops_before_moving_a_day_that_is_mostly_bad(spark, warehouse):
    # The accounts export has not landed: most of D's events name accounts validate does not know.
    events = [(1, ts(D, 9, m), "post", "ip", "dev", D) for m in range(20)]
    events += [(500 + m, ts(D, 10, m), "post", "ip", "dev", D) for m in range(30)]
    write_inputs(spark, warehouse, events=events)
    bad_day = r"30 of the 50 events rows of 2026-01-12 are bad \(30 unknown_account\)"
    with pytest.raises(TooManyBadRowsError, match=bad_day):
        validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=50)
    assert read_table(spark, warehouse, t.EVENTS).count() == 50 and not table_exists(spark, warehouse, t.QUARANTINE)
    # Too few rows to judge by a share, or a share that is allowed: the bad rows move as usual.
    assert validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=51)["quarantined"]["events"] == 30
    assert read_table(spark, warehouse, t.EVENTS).count() == 20
    # A day whose events are all bad, however few, stops too: moving them all would score D without activity.
    all_bad = [(500 + m, ts(D, 10, m), "post", "ip", "dev", D) for m in range(3)]
    write_inputs(spark, warehouse, events=all_bad)
    with pytest.raises(NoEventsError, match=r"none of the 3 events of 2026-01-12 is good \(3 unknown_account\); "
                                            r"nothing was moved"):
        validate_inputs(spark, warehouse, D)
    assert read_table(spark, warehouse, t.EVENTS).count() == 3
    # A day emptied by an earlier validate (the 20 good events deleted upstream since) says where they went.
    write_inputs(spark, warehouse, events=[(1, ts(D, 9), "post", "ip", "dev", D + dt.timedelta(days=1))])
    with pytest.raises(NoEventsError, match="An earlier validate of the date moved 30 of its events to quarantine"):
        validate_inputs(spark, warehouse, D)
    # The day's load replayed three times: two thirds are copies, but one of each stays (nothing is missing);
    # its 10 events of unknown accounts are 10 bad of 30, however often copied (three times: 30 of 50).
    write_inputs(spark, warehouse, events=events[:30] * 3)
    got = validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=30)
    assert got["quarantined"]["events"] == 70 and read_table(spark, warehouse, t.EVENTS).count() == 20
    # Nor rows of the share: 8 good events twice and 12 of unknown accounts are 12 bad of 20, mostly bad.
    write_inputs(spark, warehouse, events=events[:8] * 2 + events[20:32])
    with pytest.raises(TooManyBadRowsError, match=r"12 of the 20 events rows of 2026-01-12 are bad \(12 "
                                                  r"unknown_account\), not counting 8 copies of other rows"):
        validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=20)
    write_inputs(spark, warehouse, events=events[:20])

    # Labels dated before D are checked each night too: a source renamed across the table (or accounts gone
    # from the export) would move the label history out. The same stop holds for them.
    labels = [(1, 1, "report", ts(D - dt.timedelta(days=1 + k % 30), 8)) for k in range(60)]
    labels += [(2, 0, "appeal", ts(D - dt.timedelta(days=40), 8)), (1, 1, "investigator", ts(D, 9))]
    write_table(spark.createDataFrame(labels, INPUT_SCHEMAS[t.LABELS]), warehouse, t.LABELS, mode="overwrite")
    late = r"60 of the 61 labels rows dated before 2026-01-12 are bad \(60 unknown_label_source\)"
    with pytest.raises(TooManyBadRowsError, match=late):
        validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=50)
    assert read_table(spark, warehouse, t.LABELS).count() == 62
    assert validate_inputs(spark, warehouse, D, max_bad_share=0.5, bad_share_min_rows=62)["quarantined"]["labels"] == 60


def test_validate_stops_when_accounts_is_not_one_row_per_account(spark, warehouse):
    # An accounts export appended instead of merged: account 2 again with a changed flag, 3 twice over.
    accounts = [
        (1, ts(dt.date(2025, 1, 1)), "US", False, 0.5, None, None),
        (2, ts(dt.date(2025, 6, 1)), "DE", False, 0.7, None, None),
        (2, ts(dt.date(2025, 6, 1)), "DE", True, 0.7, None, None),
        (3, ts(D, 3), "JP", True, 0.2, None, None),
        (3, ts(D, 3), "JP", True, 0.2, None, None),
        (3, ts(D, 3), "JP", True, 0.2, None, None),
    ]
    events = [(1, ts(D, 9), "post", "ip1", "dev1", D), (99, ts(D, 10), "like", "ip2", "dev2", D)]  # 99: unknown
    write_inputs(spark, warehouse, accounts=accounts, events=events)
    with pytest.raises(AccountGrainError, match=r"one row per account: 3 extra row\(s\) of repeated ids "
                                                r"\(first ids: \[2, 3\]\)\. Nothing was moved.*the newest "
                                                r"\(MERGE the export on account_id\).*not the newest"):
        validate_inputs(spark, warehouse, D)
    assert read_table(spark, warehouse, t.EVENTS).count() == 2 and not table_exists(spark, warehouse, t.QUARANTINE)
    # A row without an id (the table's schema let it in) is as wrong.
    nullable = T.StructType([T.StructField(f.name, f.dataType, True) for f in INPUT_SCHEMAS[t.ACCOUNTS].fields])
    write_table(spark.createDataFrame([accounts[0], (None, *accounts[1][1:])], nullable), warehouse, t.ACCOUNTS,
                overwrite_schema=True)
    with pytest.raises(AccountGrainError, match=r"one row per account: 1 row\(s\) without an account_id\. Nothing"):
        validate_inputs(spark, warehouse, D)
    # One row per account: validate goes on as usual.
    write_table(spark.createDataFrame(accounts[:2] + accounts[3:4], INPUT_SCHEMAS[t.ACCOUNTS]), warehouse, t.ACCOUNTS,
                overwrite_schema=True)
    assert validate_inputs(spark, warehouse, D)["quarantined"]["events"] == 1


def test_validate_says_what_is_wrong(spark, warehouse):
    with pytest.raises(TableMissingError, match="accounts"):
        validate_inputs(spark, warehouse, D)
    write_inputs(spark, warehouse)
    with pytest.raises(NoEventsError, match="no events for 2026-01-13"):
        validate_inputs(spark, warehouse, D + dt.timedelta(days=1))
    bad = read_table(spark, warehouse, t.LABELS).withColumn(t.LABEL, F.col(t.LABEL).cast("string"))
    write_table(bad, warehouse, t.LABELS, overwrite_schema=True)
    with pytest.raises(SchemaMismatchError, match="label is string, want int"):
        validate_inputs(spark, warehouse, D)


# ---------------------------------------------------------------- scores_latest

SCORES_SCHEMA = T.StructType([
    T.StructField(t.ACCOUNT_ID, T.LongType()), T.StructField(t.RUN_DATE, T.DateType()),
    T.StructField(t.STAGE1_SCORE, T.DoubleType()), T.StructField(t.STAGE2_SCORE, T.DoubleType()),
    T.StructField(t.SCORE, T.DoubleType()), T.StructField(t.DECISION, T.StringType()),
    T.StructField(t.MODEL_VERSION, T.StringType()),
])


def _two_days_of_scores(spark, warehouse, decision: str) -> tuple[dt.date, dt.date, list[tuple]]:
    """Scores of accounts 1-5 on D and of 2, 4, 6 on the next day, in ``scores``."""
    d1, d2 = D, D + dt.timedelta(days=1)
    rows = [(a, d1, a / 10, None, a / 10, "none", "v1") for a in range(1, 6)]
    rows += [(a, d2, a / 20, 0.5, a / 20 + 0.01, decision, "v2") for a in (2, 4, 6)]
    write_table(spark.createDataFrame(rows, SCORES_SCHEMA), warehouse, t.SCORES, partition_by=[t.RUN_DATE])
    return d1, d2, rows


def _publish_two_days(spark, warehouse, decision: str) -> tuple[dt.date, dt.date, list[tuple]]:
    """:func:`_two_days_of_scores`, both published in order."""
    d1, d2, rows = _two_days_of_scores(spark, warehouse, decision)
    publish_latest(spark, warehouse, d1)
    publish_latest(spark, warehouse, d2)
    return d1, d2, rows


def _latest_and_newest_per_account(spark, warehouse, rows) -> tuple[pd.DataFrame, pd.DataFrame]:
    latest = read_table(spark, warehouse, t.SCORES_LATEST).toPandas().sort_values(t.ACCOUNT_ID)
    ref = pd.DataFrame(rows, columns=SCORES_SCHEMA.names).sort_values(t.RUN_DATE).groupby(t.ACCOUNT_ID).tail(1)
    return latest, ref.sort_values(t.ACCOUNT_ID)


def test_scores_latest_keeps_each_accounts_newest_score(spark, warehouse):
    d1, d2, rows = _publish_two_days(spark, warehouse, "review")
    publish_latest(spark, warehouse, d1)  # rerunning an old date must not bring old scores back
    publish_latest(spark, warehouse, d2)
    latest, ref = _latest_and_newest_per_account(spark, warehouse, rows)
    assert latest[t.ACCOUNT_ID].tolist() == ref[t.ACCOUNT_ID].tolist() == [1, 2, 3, 4, 5, 6]
    assert latest[t.RUN_DATE].tolist() == ref[t.RUN_DATE].tolist()
    cols = list(SCORES_SCHEMA.names)
    pd.testing.assert_frame_equal(latest[cols].reset_index(drop=True), ref[cols].reset_index(drop=True),
                                  check_dtype=False)
    # Each MERGE read only its date's partition of scores (the first publish created the table).
    history = spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(warehouse, t.SCORES_LATEST)}`").collect()
    merges = sorted((h for h in history if h["operation"] == "MERGE"), key=lambda h: h["version"])
    assert [int(h["operationMetrics"]["numSourceRows"]) for h in merges] == [3, 5, 3]


def test_a_publish_whose_merge_loses_to_another_commit_is_retried(spark, warehouse, monkeypatch):
    """A backfill publishing another date can commit to scores_latest first: Delta fails the MERGE,
    which reads the table again and retries; one that keeps losing says to rerun the step."""
    d1, d2, rows = _two_days_of_scores(spark, warehouse, "review")
    publish_latest(spark, warehouse, d1)
    attempts = merges_losing(monkeypatch, 5)
    with pytest.raises(CommitConflictError, match=f"publishing the scores of {d2}: other runs kept committing to "
                                                  "scores_latest \\(5 attempts\\); rerun the publish step"):
        publish_latest(spark, warehouse, d2)
    latest = read_table(spark, warehouse, t.SCORES_LATEST)
    assert len(attempts) == 5 and latest.where(F.col(t.RUN_DATE) == d2).count() == 0
    attempts = merges_losing(monkeypatch, 1)
    assert publish_latest(spark, warehouse, d2) == {"published": 3}
    latest, ref = _latest_and_newest_per_account(spark, warehouse, rows)
    assert len(attempts) == 2
    cols = list(SCORES_SCHEMA.names)
    pd.testing.assert_frame_equal(latest[cols].reset_index(drop=True), ref[cols].reset_index(drop=True),
                                  check_dtype=False)


def test_a_rerun_that_no_longer_scores_an_account_takes_back_its_latest_row(spark, warehouse):
    """Rerunning D without accounts 4 (scored on d1 too) and 6 (only on D): 4 falls back to its d1 score,
    6 leaves; the table equals the newest score per account of what ``scores`` now holds."""
    d1, d2, rows = _publish_two_days(spark, warehouse, "action")
    rows = [r for r in rows if not (r[1] == d2 and r[0] in (4, 6))]
    write_table(spark.createDataFrame([r for r in rows if r[1] == d2], SCORES_SCHEMA), warehouse, t.SCORES,
                partition_by=[t.RUN_DATE], replace_where=f"{t.RUN_DATE} = '{d2}'")
    publish_latest(spark, warehouse, d2)
    latest, ref = _latest_and_newest_per_account(spark, warehouse, rows)
    assert latest[t.ACCOUNT_ID].tolist() == ref[t.ACCOUNT_ID].tolist() == [1, 2, 3, 4, 5]
    assert latest[t.RUN_DATE].tolist() == ref[t.RUN_DATE].tolist()
    assert latest[t.DECISION].tolist() == ref[t.DECISION].tolist() == ["none", "action", "none", "none", "none"]
    # A rerun of D that scores nobody takes back all of D's rows.
    write_table(spark.createDataFrame([], SCORES_SCHEMA), warehouse, t.SCORES, partition_by=[t.RUN_DATE],
                replace_where=f"{t.RUN_DATE} = '{d2}'")
    publish_latest(spark, warehouse, d2)
    assert sorted(map(tuple, read_table(spark, warehouse, t.SCORES_LATEST).select(t.ACCOUNT_ID, t.RUN_DATE)
                      .collect())) == [(a, d1) for a in range(1, 6)]


def test_scores_latest_carries_whether_each_decision_was_carried_out(spark, warehouse):
    # A table published before these columns existed gains them; accounts not scored since keep nulls.
    d1, d2 = D, D + dt.timedelta(days=1)
    old = [(a, d1, 0.9, None, 0.9, "action", "v1") for a in (1, 2, 3)]
    write_table(spark.createDataFrame(old, SCORES_SCHEMA), warehouse, t.SCORES, partition_by=[t.RUN_DATE])
    publish_latest(spark, warehouse, d1)
    flags = T.StructType([T.StructField(c, T.BooleanType()) for c in ("actioned", "holdout", "golden")])
    new_schema = T.StructType(SCORES_SCHEMA.fields + flags.fields)
    new = [(1, d2, 0.9, None, 0.9, "action", "v2", True, False, False),
           (2, d2, 0.9, None, 0.9, "action", "v2", False, True, False),
           (4, d2, 0.9, None, 0.9, "action", "v2", False, False, True)]
    write_table(spark.createDataFrame(new, new_schema), warehouse, t.SCORES, partition_by=[t.RUN_DATE],
                replace_where=f"{t.RUN_DATE} = '{d2}'", merge_schema=True)
    publish_latest(spark, warehouse, d2)
    got = {r[t.ACCOUNT_ID]: (r["actioned"], r["holdout"], r["golden"])
           for r in read_table(spark, warehouse, t.SCORES_LATEST).collect()}
    assert got == {1: (True, False, False), 2: (False, True, False), 3: (None, None, None), 4: (False, False, True)}


# ---------------------------------------------------------------- skip logic (tiny fake steps)

IN, MID, OUT = "fake_in", "fake_mid", "fake_out"


@pytest.fixture
def fake_pipeline(spark, monkeypatch, test_conf):
    """Two steps a (IN -> MID) and b (MID -> OUT) in place of the real ones; counts their calls."""
    calls: list[str] = []
    fail = {"a": False, "b": False, "wait_b": False}
    schema = T.StructType([T.StructField(t.RUN_DATE, T.DateType()), T.StructField("x", T.LongType())])

    def step_a(spark_, conf, run_date):
        calls.append("a")
        wh = conf["warehouse"]
        n = read_table(spark_, wh, IN).count()
        write_table(spark_.createDataFrame([(run_date, n)], schema), wh, MID, partition_by=[t.RUN_DATE],
                    replace_where=f"run_date = '{run_date}'")
        if fail["a"]:
            raise RuntimeError("injected")
        return {"n": n}

    def step_b(spark_, conf, run_date):
        calls.append("b")
        wh = conf["warehouse"]
        mid = read_table(spark_, wh, MID).where(F.col(t.RUN_DATE) == run_date).withColumn("x", F.col("x") * 2)
        write_table(mid, wh, OUT, partition_by=[t.RUN_DATE], replace_where=f"run_date = '{run_date}'")
        if fail["b"]:
            raise RuntimeError("injected")
        if fail["wait_b"]:
            raise NotEnoughLabelsError("injected: too few labels")
        return {}

    monkeypatch.setattr(nightly, "STEP_IO", {
        "a": nightly.StepIO((IN,), (MID,), (MID, t.RUN_DATE)),
        "b": nightly.StepIO((MID,), (OUT,), (OUT, t.RUN_DATE)),
    })
    monkeypatch.setattr(nightly, "NEEDS", {})
    monkeypatch.setitem(steps.STEPS, "a", step_a)
    monkeypatch.setitem(steps.STEPS, "b", step_b)
    monkeypatch.setattr(steps, "RUN_ORDER", ("a", "b"))
    write_table(spark.createDataFrame([(D, 1)], schema), test_conf["warehouse"], IN)
    return test_conf, calls, fail


def statuses(results: dict) -> dict:
    return {k: v["status"] for k, v in results.items()}


def test_a_change_is_seen_when_a_commit_lands_while_the_history_is_read(spark, warehouse, monkeypatch):
    """The latest version is read, then the history: a commit between the two (here an OPTIMIZE) must not
    push the data change just after the logged version out of the commits looked at."""
    df = spark.createDataFrame([(1,)], "x int")
    write_table(df, warehouse, t.FEATURES)  # version 0: what the step read
    write_table(df.union(df), warehouse, t.FEATURES)  # version 1: a data change
    spark.sql(f"OPTIMIZE delta.`{t.table_path(warehouse, t.FEATURES)}`")  # version 2, landing meanwhile
    assert nightly.table_version(spark, warehouse, t.FEATURES) == 2
    assert not nightly.data_changed_since(spark, warehouse, t.FEATURES, 2)
    monkeypatch.setattr(nightly, "table_version", lambda *a: 1)  # read before version 2 landed
    assert nightly.data_changed_since(spark, warehouse, t.FEATURES, 0)


def test_skip_logic_reruns_exactly_what_changed(spark, fake_pipeline):
    conf, calls, fail = fake_pipeline
    wh = conf["warehouse"]
    echoed: list[str] = []
    why: dict[str, str] = {}  # each step's reason to run, from the run's results

    def run(**kw):
        echoed.clear()
        results = nightly.run_steps(spark, conf, D, echo=echoed.append, **kw)
        why.clear()
        why.update({s: r[nightly.RAN_BECAUSE] for s, r in results.items() if r["status"] == "ok"})
        return statuses(results)

    def logged_reasons() -> dict:
        return {s: json.loads(r["summary"]).get(nightly.RAN_BECAUSE) for s, r in nightly.log_rows(spark, wh, D).items()
                if s != nightly.RUN_STEP}

    assert run() == {"a": "ok", "b": "ok"}
    assert why == {"a": "no finished run of it for this date", "b": "no finished run of it for this date"}
    assert run() == {"a": "skipped", "b": "skipped"}
    assert [line.split() for line in echoed] == [[s, "skipped", "(done,", "inputs", "and", "conf", "unchanged)"]
                                                 for s in ("a", "b")]
    assert calls == ["a", "b"]
    version_in, version_mid = (nightly.table_version(spark, wh, tb) for tb in (IN, MID))
    # Maintenance commits change no data: still skipped.
    spark.sql(f"OPTIMIZE delta.`{t.table_path(wh, MID)}`")
    assert run() == {"a": "skipped", "b": "skipped"}
    # A new input row: a reruns, rewrites MID, so b reruns too; each says which input changed since when
    # (the version its last run read, before the OPTIMIZE).
    write_table(spark.createDataFrame([(D, 2)], "run_date date, x long"), wh, IN, mode="append")
    assert run() == {"a": "ok", "b": "ok"}
    assert why == {"a": f"input {IN} changed since its version {version_in}",
                   "b": f"input {MID} changed since its version {version_mid}"}
    assert echoed[0].split()[:3] == ["a", "ok", "in"]
    assert f"(ran because input {IN} changed since its version {version_in})" in echoed[0]
    assert logged_reasons() == why  # operators find it in run_log too
    assert read_table(spark, wh, OUT).first()["x"] == 4
    # b's output for D deleted: only b reruns.
    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, t.table_path(wh, OUT)).delete(F.col(t.RUN_DATE) == D)
    assert run() == {"a": "skipped", "b": "ok"}
    assert why == {"b": f"its output for the date is missing from {OUT}"}
    # force reruns everything.
    assert run(force=True) == {"a": "ok", "b": "ok"}
    assert why == {"a": "forced", "b": "forced"} and logged_reasons() == why
    assert calls == ["a", "b", "a", "b", "b", "a", "b"]
    # A whole run is logged; the run log has one row per (date, step).
    log = read_table(spark, wh, t.RUN_LOG).toPandas()
    assert sorted(log["step"]) == ["_run", "a", "b"]
    assert nightly.date_finished(spark, wh, D)


def test_a_step_rewriting_its_input_reruns_when_another_writer_changed_it_meanwhile(spark, fake_pipeline,
                                                                                     monkeypatch):
    """validate rewrites events (its own input) and is keyed on the version after its own commits, those of
    blocks inside it too (features writes its partials as ``activity_daily``). A late load committed while
    it ran is no commit of its own: the step may not have seen those rows, so the next run redoes it."""
    conf, calls, _ = fake_pipeline
    wh = conf["warehouse"]
    key = "spark.databricks.delta.commitInfo.userMetadata"
    late = {"load": False}

    def a_rewriting_its_input(spark_, conf_, run_date):
        calls.append("a")
        rows = read_table(spark_, wh, IN).localCheckpoint()
        with commit_metadata(spark_, step="inner", run_date=run_date.isoformat()):
            write_table(rows, wh, IN)  # its own rewrite of its input
        if late["load"]:  # another writer's commit while the step runs (not under the step's metadata)
            mine = spark_.conf.get(key)
            spark_.conf.set(key, '{"step": "upstream"}')
            write_table(spark_.createDataFrame([(run_date, 9)], "run_date date, x long"), wh, IN, mode="append")
            spark_.conf.set(key, mine)
        write_table(spark_.createDataFrame([(run_date, rows.count())], "run_date date, x long"), wh, MID,
                    partition_by=[t.RUN_DATE], replace_where=f"run_date = '{run_date}'")
        return {}

    monkeypatch.setitem(nightly.STEP_IO, "a", nightly.StepIO((IN,), (IN, MID), (MID, t.RUN_DATE)))
    monkeypatch.setitem(steps.STEPS, "a", a_rewriting_its_input)

    def run() -> dict:
        results = nightly.run_steps(spark, conf, D, echo=lambda _: None)
        return {s: r.get(nightly.RAN_BECAUSE, r["status"]) for s, r in results.items()}

    assert run()["a"] == "no finished run of it for this date"
    assert run() == {"a": "skipped", "b": "skipped"}  # its own rewrite (in a block inside its own) is no change
    before_late = nightly.table_version(spark, wh, IN)
    late["load"] = True
    write_table(spark.createDataFrame([(D, 5)], "run_date date, x long"), wh, IN, mode="append")  # a reason to run
    changed = nightly.table_version(spark, wh, IN)
    assert run()["a"] == f"input {IN} changed since its version {before_late}"
    late["load"] = False
    # The late row landed while a ran: its log keeps the version before it ran, so a runs again.
    assert nightly.log_rows(spark, wh, D)["a"]["input_versions"][IN] == changed
    assert run()["a"] == f"input {IN} changed since its version {changed}"
    assert run() == {"a": "skipped", "b": "skipped"}
    assert read_table(spark, wh, IN).where(F.col("x") == 9).count() == 1


def test_commit_metadata_blocks_collect_the_metadata_of_blocks_inside_them():
    """A step's own commits are those under its block or a block inside it; an inner block with the same
    fields (features writes its table as ``features`` too) must not close the step's own."""

    class Conf(dict):
        def get(self, key, default=None):
            return super().get(key, default)

        def set(self, key, value):
            self[key] = value

    class Session:
        conf = Conf()

    key = "spark.databricks.delta.commitInfo.userMetadata"
    with commit_metadata(Session, step="features", run_date="2026-01-12") as mine:
        with commit_metadata(Session, step="features", run_date="2026-01-12") as inner:
            assert Session.conf[key] == '{"run_date": "2026-01-12", "step": "features"}'
        with commit_metadata(Session, step="activity_daily", run_date="2026-01-10"):
            pass
    assert inner == {'{"run_date": "2026-01-12", "step": "features"}'}
    assert mine == {'{"run_date": "2026-01-12", "step": "features"}',
                    '{"run_date": "2026-01-10", "step": "activity_daily"}'}
    assert Session.conf[key] == ""


def test_a_conf_change_reruns_the_steps_that_read_it(spark, fake_pipeline, monkeypatch):
    conf, calls, _ = fake_pipeline
    wh = conf["warehouse"]
    monkeypatch.setattr(nightly, "STEP_IO", {
        "a": nightly.StepIO((IN,), (MID,), (MID, t.RUN_DATE), conf=("validate",)),
        "b": nightly.StepIO((MID,), (OUT,), (OUT, t.RUN_DATE), conf=("monitoring.review_budget", "cascade")),
    })
    run = lambda c: statuses(nightly.run_steps(spark, c, D, echo=lambda _: None))  # noqa: E731
    done, both = {"a": "skipped", "b": "skipped"}, {"a": "ok", "b": "ok"}

    assert run(conf) == both and run(conf) == done
    # A knob neither step reads, and one that only changes how fast b runs: nothing reruns.
    assert run(conf.with_overrides(["run.lock_heartbeat_seconds=5", "cascade.batch_size=7"])) == done
    # b's knobs: b reruns alone (a's output is unchanged); going back reruns it again.
    assert run(conf.with_overrides(["monitoring.review_budget=7"])) == {"a": "skipped", "b": "ok"}
    b_log = json.loads(nightly.log_rows(spark, wh, D)["b"]["summary"])
    assert b_log[nightly.RAN_BECAUSE] == "its conf changed (monitoring.review_budget, cascade)"
    assert run(conf.with_overrides(["cascade.budget=0.5"])) == {"a": "skipped", "b": "ok"}
    assert run(conf) == {"a": "skipped", "b": "ok"}
    # a's section: a reruns and rewrites MID, so b reruns too.
    changed = conf.with_overrides(["validate.max_bad_share=0.3"])
    assert run(changed) == both
    assert calls == ["a", "b", "b", "b", "b", "a", "b"]
    # Backfill: D finished with `changed`, so under `conf` it is not done; the rerun redoes a, then b.
    assert nightly.date_finished(spark, wh, D, changed) and not nightly.date_finished(spark, wh, D, conf)
    assert nightly.backfill(spark, conf, D, D, echo=lambda _: None, progress=False) == {D: "done"}
    assert nightly.backfill(spark, conf, D, D, echo=lambda _: None, progress=False) == {D: "already done"}
    assert calls[7:] == ["a", "b"]
    # Rows logged before fingerprints were kept have none: trusted as before (no recompute on upgrade).
    logged = nightly.log_rows(spark, wh, D)
    for step in ("b", nightly.RUN_STEP):
        logged[step]["input_versions"].pop(nightly.CONF_KEY)
    nightly.write_log(spark, wh, D, logged)
    other = conf.with_overrides(["monitoring.review_budget=9"])
    assert nightly.date_finished(spark, wh, D, other) and run(other) == done
    assert calls[9:] == []


def test_a_heartbeat_that_would_let_the_lock_expire_is_refused(conf):
    """A beat every 600 s against an expiry of 540 s (0.15 h): another run of the date would take a live
    lock over; a beat of 0 would spin on the file system. Both refused, naming both knobs."""
    from botwatch.config import ConfigError

    assert nightly.lock_settings(conf) == (0.15, 30.0)
    for heartbeat in (600, 181, 0, -5):
        with pytest.raises(ConfigError, match="lock_heartbeat_seconds.*lock_stale_hours"):
            nightly.lock_settings(conf.with_overrides([f"run.lock_heartbeat_seconds={heartbeat}"]))
    assert nightly.lock_settings(conf.with_overrides(["run.lock_heartbeat_seconds=180"])) == (0.15, 180.0)


def test_conf_fingerprint_is_stable_across_processes_and_ignores_speed_knobs(conf):
    keys = ["features", "cascade", "train.golden_salt"]
    here = nightly.conf_fingerprint(conf, keys)
    # Another interpreter with another string-hash seed gets the same value (it is stored in run_log).
    code = ("import json, sys; from botwatch.config import Config; from botwatch import nightly; "
            f"print(nightly.conf_fingerprint(Config(json.load(sys.stdin), []), {keys!r}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(conf.to_dict(), default=str),
                           capture_output=True, text=True, check=True, env=env)
    assert int(other.stdout.strip()) == here and -2**63 <= here < 2**63
    speed = conf.with_overrides(["features.graph.salt_buckets=3", "cascade.partitions=9", "cascade.device=cpu"])
    assert nightly.conf_fingerprint(speed, keys) == here
    for setting in ("features.graph.hub_seed=5", "features.windows=[1, 7]", "cascade.budget=0.2",
                    "train.golden_salt=other"):
        assert nightly.conf_fingerprint(conf.with_overrides([setting]), keys) != here, setting
    # Every conf key the real steps name exists (a typo would fail every run), and so does every speed
    # knob (a typo there would silently make that knob rerun steps).
    assert isinstance(nightly.run_conf_fingerprint(conf), int)
    # A label source dropped from training (weight 0) is dropped from bot_neighbor_share too: features reruns.
    features_keys = nightly.STEP_IO["features"].conf
    assert nightly.conf_fingerprint(conf.with_overrides(["train.label_weights.propagated=0"]), features_keys) != \
        nightly.conf_fingerprint(conf, features_keys)
    assert [key for key in sorted(nightly.SPEED_ONLY_KEYS) if key not in conf] == []
    assert "cascade.no_such_knob" not in conf and "cascade.budget" in conf  # dotted lookups, as above


def test_failed_step_resumes_from_where_it_stopped(spark, fake_pipeline):
    conf, calls, fail = fake_pipeline
    fail["b"] = True
    with pytest.raises(nightly.StepFailedError, match="step 'b' failed for 2026-01-12: injected"):
        nightly.run_steps(spark, conf, D, echo=lambda _: None)
    assert not nightly.date_finished(spark, conf["warehouse"], D)
    fail["b"] = False
    assert statuses(nightly.run_steps(spark, conf, D, echo=lambda _: None)) == {"a": "skipped", "b": "ok"}
    assert calls == ["a", "b", "b"]
    # The lock was released after the failure, and each commit names its step and date.
    assert nightly.DateLock(spark, conf["warehouse"], D, stale_hours=12).current() is None
    history = spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(conf['warehouse'], OUT)}`").collect()
    assert [json.loads(h["userMetadata"]) for h in history] == [{"run_date": "2026-01-12", "step": "b"}] * 2


def test_backfill_runs_dates_in_order_and_skips_finished_ones(spark, fake_pipeline):
    conf, calls, fail = fake_pipeline
    d2 = D + dt.timedelta(days=2)
    seen: list[str] = []
    out = nightly.backfill(spark, conf, D, d2, echo=seen.append, progress=False)
    assert list(out) == [D, D + dt.timedelta(days=1), d2] and set(out.values()) == {"done"}
    again = nightly.backfill(spark, conf, D, d2, echo=seen.append, progress=False)
    assert set(again.values()) == {"already done"}
    assert calls == ["a", "b"] * 3
    mid = read_table(spark, conf["warehouse"], MID).orderBy(t.RUN_DATE).collect()
    assert [r[t.RUN_DATE] for r in mid] == list(out)


def test_a_finished_date_rerun_that_fails_or_waits_is_not_finished(spark, fake_pipeline):
    conf, calls, fail = fake_pipeline
    wh = conf["warehouse"]
    nightly.run_steps(spark, conf, D, echo=lambda _: None)
    assert nightly.date_finished(spark, wh, D)
    # A forced rerun rewrites a's output, then b fails: D is half rewritten, so not finished any more.
    fail["b"] = True
    with pytest.raises(nightly.StepFailedError):
        nightly.run_steps(spark, conf, D, force=True, echo=lambda _: None)
    assert not nightly.date_finished(spark, wh, D)
    # b now waits (too few labels): the run ends, but a backfill must come back to D.
    fail["b"], fail["wait_b"] = False, True
    assert statuses(nightly.run_steps(spark, conf, D, echo=lambda _: None)) == {"a": "skipped", "b": "waiting"}
    assert not nightly.date_finished(spark, wh, D)
    fail["wait_b"] = False
    assert nightly.backfill(spark, conf, D, D, echo=lambda _: None, progress=False) == {D: "done"}
    assert nightly.date_finished(spark, wh, D)
    b_log = json.loads(nightly.log_rows(spark, wh, D)["b"]["summary"])
    assert b_log[nightly.RAN_BECAUSE] == "its last run was waiting"
    # The first step of a forced rerun rewrites its output, then fails: no log write came after it.
    fail["a"] = True
    with pytest.raises(nightly.StepFailedError, match="step 'a' failed"):
        nightly.run_steps(spark, conf, D, force=True, echo=lambda _: None)
    assert not nightly.date_finished(spark, wh, D)
    fail["a"] = False
    assert nightly.backfill(spark, conf, D, D, echo=lambda _: None, progress=False) == {D: "done"}
    assert calls == ["a", "b", "a", "b", "b", "b", "a", "a", "b"]


# ---------------------------------------------------------------- the date lock


def test_second_run_for_a_date_fails_clearly_while_the_first_holds_the_lock(spark, fake_pipeline):
    conf, calls, fail = fake_pipeline
    wh = conf["warehouse"]
    with nightly.DateLock(spark, wh, D, stale_hours=12):
        with pytest.raises(nightly.RunLockedError, match="another run for 2026-01-12 is in progress"):
            nightly.run_steps(spark, conf, D, echo=lambda _: None)
        assert calls == [] and not table_exists(spark, wh, MID)
        # Other dates are not blocked.
        nightly.run_steps(spark, conf, D + dt.timedelta(days=1), echo=lambda _: None)
    assert statuses(nightly.run_steps(spark, conf, D, echo=lambda _: None)) == {"a": "ok", "b": "ok"}


def test_a_date_run_one_step_at_a_time_is_finished_when_every_step_is(spark, fake_pipeline):
    conf, calls, _ = fake_pipeline
    wh = conf["warehouse"]
    nightly.run_steps(spark, conf, D, ["a"], echo=lambda _: None)
    assert not nightly.date_finished(spark, wh, D)
    nightly.run_steps(spark, conf, D, ["b"], echo=lambda _: None)  # as the DAG's tasks run them
    assert nightly.date_finished(spark, wh, D)
    # a rerun alone changes b's input: D is not finished until b runs again.
    nightly.run_steps(spark, conf, D, ["a"], force=True, echo=lambda _: None)
    assert not nightly.date_finished(spark, wh, D)
    assert nightly.backfill(spark, conf, D, D, echo=lambda _: None, progress=False) == {D: "done"}
    assert calls == ["a", "b", "a", "b"] and nightly.date_finished(spark, wh, D)


def test_steps_run_in_pipeline_order_once_each(spark, fake_pipeline):
    conf, calls, _ = fake_pipeline
    assert list(nightly.run_steps(spark, conf, D, ["b", "a", "b"], echo=lambda _: None)) == ["a", "b"]
    assert calls == ["a", "b"]
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['c'\]"):
        nightly.run_steps(spark, conf, D, ["a", "c"], echo=lambda _: None)


def test_step_commands_go_through_the_runner_and_its_date_lock(spark, test_conf):
    from typer.testing import CliRunner

    from botwatch.cli import app

    assert steps.run_order(["score", "features", "activity"]) == [
        "activity", "features", "score_stage1", "score_stage2"]
    wh = test_conf["warehouse"]
    with nightly.DateLock(spark, wh, D, stale_hours=12):
        for command in ("features", "train", "score"):
            out = CliRunner().invoke(app, [command, "--date", D.isoformat(), "--warehouse", wh])
            assert out.exit_code == 3, (command, out.output)
            assert "another run for 2026-01-12 is in progress" in out.output
    # A step that waits did nothing: exit 1, not 0 (no champion to score with yet).
    out = CliRunner().invoke(app, ["score", "--date", D.isoformat(), "--warehouse", wh])
    assert out.exit_code == 1 and "score for 2026-01-12 is waiting (score_stage1: " in out.output, out.output


def test_a_failed_backfill_says_how_to_resume(fake_pipeline, monkeypatch):
    """Every error whose message says what to do is printed with the way to resume, not as a traceback."""
    from typer.testing import CliRunner

    from botwatch.cascade import CascadeConfigError
    from botwatch.cli import app
    from botwatch.config import ConfigError
    from botwatch.delta_io import CommitConflictError
    from botwatch.monitoring.review import ReviewConfigError
    from botwatch.scoring.cascade import MissingFeaturesError, StaleStage1ScoresError
    from botwatch.validate import EventsChangedError

    conf, _, _ = fake_pipeline
    for error in (ConfigError, MissingFeaturesError, StaleStage1ScoresError, CommitConflictError, ReviewConfigError,
                  CascadeConfigError, EventsChangedError):

        def broken(spark_, conf_, run_date, error=error):
            raise error(f"injected {error.__name__}: fix it")

        monkeypatch.setitem(steps.STEPS, "a", broken)
        for flags, advice in (([], "rerun the same backfill: finished dates are skipped"),
                              (["--force"], "rerun from the failed date (--start): with --force the same backfill")):
            out = CliRunner().invoke(app, ["backfill", "--start", D.isoformat(), "--end", D.isoformat(),
                                           "--warehouse", conf["warehouse"], *flags])
            assert out.exit_code == 1 and f"injected {error.__name__}" in out.output, out.output
            assert advice in out.output and isinstance(out.exception, SystemExit), out.output


def test_conf_problems_between_knobs_exit_2_before_anything_runs(tmp_path, capsys):
    """A time zone in spark.extra_conf (else found only building the session), a heartbeat against the
    lock's expiry (else found by the runner, after the demo simulated its platform), and a train, heavy, cascade
    (stage-2 inference too) or monitoring knob its step refuses (else found after a night's ingest, features and
    scores): exit 2 and the message, as for any conf problem, from every command and job, before anything is written."""
    import importlib.util

    from typer.testing import CliRunner

    from botwatch.cli import app
    from botwatch.config import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("simulate_job", PROJECT_ROOT / "jobs" / "simulate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    wh, day = str(tmp_path / "wh"), D.isoformat()
    for extra, says in (("spark.extra_conf.spark.sql.session.timeZone=Asia/Kolkata", "spark.sql.session.timeZone"),
                        ("run.lock_heartbeat_seconds=0", "run.lock_heartbeat_seconds"),
                        ("train.prevalence=autp", "train.prevalence must be 'auto'"),
                        ("monitoring.psi_soft=3", "monitoring.psi_soft (3.0) must be above 0 and at most"),
                        ("monitoring.strata_edges=[0,.nan,.nan]", "monitoring.strata_edges must list"),
                        ("heavy.dropout=1.5", "heavy.dropout must be in [0, 1), got 1.5"),
                        ("cascade.budget=1.5", "cascade.budget must be in [0, 1], got 1.5"),
                        ("cascade.device=gpu", "cascade.device must be one of ('auto', 'cpu', 'cuda'), got 'gpu'"),
                        ("train.xgb.subsample=1.5", "train.xgb.subsample must be in (0, 1], got 1.5")):
        for command in (["run", "--date", day], ["backfill", "--start", day, "--end", day], ["demo"],
                        ["simulate", "--accounts", "20", "--days", "1", "--seed", "1"]):
            out = CliRunner().invoke(app, [*command, "--warehouse", wh, "--set", extra])
            assert out.exit_code == 2 and says in out.output, (command, out.output)
        with pytest.raises(SystemExit) as exited:
            job.main(["--accounts", "20", "--days", "1", "--seed", "1", "--warehouse", wh, "--set", extra])
        assert exited.value.code == 2 and says in capsys.readouterr().err
    assert not os.path.exists(wh)


def test_start_up_checks_import_no_model_libraries():
    """Every command and job checks the train, heavy, cascade and monitoring knobs at start-up: that must not
    import pandas, numpy, torch, pyspark.ml or xgboost (about a second at each of a night's task starts), only
    what reading the conf and the run lock's settings need."""
    import subprocess
    import sys

    from botwatch.config import PROJECT_ROOT

    code = ("import sys; from botwatch.entry import load_checked_config; "
            "load_checked_config(sys.argv[1], ['monitoring.psi_soft=0.5']); "
            "print(sorted(m for m in ('pandas', 'numpy', 'pyspark.ml', 'xgboost', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "conf" / "base.yaml")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_concurrent_lock_attempts_exactly_one_wins(spark, warehouse):
    outcomes: list[str] = []
    barrier = threading.Barrier(3)

    def attempt():
        lock = nightly.DateLock(spark, warehouse, D, stale_hours=12)
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except nightly.RunLockedError:
            outcomes.append("lost")

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(outcomes) == ["lost", "lost", "won"]
    held = nightly.DateLock(spark, warehouse, D, stale_hours=12).current()
    assert held is not None and held[t.RUN_DATE] == D.isoformat()
    # A fresh lock is not taken over; a stale one (its run died) is; break_lock removes one at once.
    with pytest.raises(nightly.RunLockedError, match="lock held by"):
        nightly.DateLock(spark, warehouse, D, stale_hours=1).acquire()
    stale = nightly.DateLock(spark, warehouse, D, stale_hours=0)
    stale.acquire()
    assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == stale.holder
    assert nightly.break_lock(spark, warehouse, D)
    assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current() is None
    assert not nightly.break_lock(spark, warehouse, D)


@pytest.mark.parametrize("text", ["", '{"run_date": "2024-0'])
def test_a_lock_file_its_run_died_writing_expires_like_any_other(spark, warehouse, text):
    """A driver killed between creating the lock file and writing it leaves it empty (or cut short):
    it is held while fresh and taken over once stale, not locked for good."""
    path = files.local_path(nightly._lock_path(warehouse, D))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        out.write(text)
    with pytest.raises(nightly.RunLockedError, match="unreadable-lock-file"):
        nightly.DateLock(spark, warehouse, D, stale_hours=12).acquire()
    two_days_ago = time.time() - 48 * 3600
    os.utime(path, (two_days_ago, two_days_ago))
    with nightly.DateLock(spark, warehouse, D, stale_hours=12) as lock:
        assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == lock.holder
    assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current() is None
    with open(path, "w") as out:
        out.write(text)
    assert nightly.break_lock(spark, warehouse, D) and not os.path.exists(path)  # `botwatch unlock` frees it too


def test_two_runs_taking_over_one_stale_lock_never_both_hold_it(spark, warehouse, monkeypatch):
    """B sees the dead run's lock, and is about to delete it when A takes it over; B then deletes the
    lock file. Only one of them may end up holding the date."""
    dead = nightly.DateLock(spark, warehouse, D, stale_hours=12)
    dead.acquire()  # a run that died; with stale_hours=0 its lock is stale at once
    b_at_delete, a_done = threading.Event(), threading.Event()
    delete = nightly._delete_file

    def paused_delete(spark_, path):
        if threading.current_thread().name == "B" and path.endswith(f"{D.isoformat()}.json"):
            b_at_delete.set()
            a_done.wait(timeout=60)
        return delete(spark_, path)

    monkeypatch.setattr(nightly, "_delete_file", paused_delete)
    won: dict[str, str] = {}

    def attempt(name: str) -> None:
        lock = nightly.DateLock(spark, warehouse, D, stale_hours=0)
        try:
            lock.acquire()
            won[name] = lock.holder
        except nightly.RunLockedError:
            pass

    b = threading.Thread(target=attempt, args=("B",), name="B")
    b.start()
    assert b_at_delete.wait(timeout=60)
    attempt("A")
    a_done.set()
    b.join(timeout=60)
    assert len(won) == 1, won
    assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == next(iter(won.values()))


def test_a_lock_released_during_an_attempt_or_a_dead_contenders_marker_does_not_block(spark, warehouse,
                                                                                       monkeypatch):
    """A holder that releases between a contender's failed create and its read of the lock: the
    contender tries again instead of exiting 3 on a free date. A contender killed inside a takeover
    leaves its marker: once older than the lock's expiry (and ``MARKER_EXPIRY``) it no longer blocks."""
    lock_path = nightly._lock_path(warehouse, D)
    create = nightly._create_exclusive
    refused: list[str] = []

    def released_meanwhile(spark_, path, payload):
        if path == lock_path and not refused:
            refused.append(path)  # the holder still had it here, and releases before the read
            return False
        return create(spark_, path, payload)

    monkeypatch.setattr(nightly, "_create_exclusive", released_meanwhile)
    with nightly.DateLock(spark, warehouse, D, stale_hours=12) as lock:
        assert refused and nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == lock.holder
    monkeypatch.undo()

    dead = nightly.DateLock(spark, warehouse, D, stale_hours=12)
    dead.acquire()
    dead._stop.set()  # its run died: no more beats
    marker = files.local_path(f"{lock_path}.takeover-{nightly._file_safe(dead.holder)}")
    with open(marker, "w") as out:
        out.write("{}")
    with pytest.raises(nightly.RunLockedError):  # a fresh marker: a takeover in progress
        nightly.DateLock(spark, warehouse, D, stale_hours=0).acquire()
    two_days_ago = time.time() - 48 * 3600
    os.utime(marker, (two_days_ago, two_days_ago))
    taker = nightly.DateLock(spark, warehouse, D, stale_hours=0)
    taker.acquire()
    assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == taker.holder
    assert not os.path.exists(marker)
    taker.release()


def test_a_takeover_creates_only_file_names_hdfs_accepts(spark, warehouse, monkeypatch):
    """HDFS refuses ':' in a path component (DFSUtil.isValidName), and a holder is ``host:hex``:
    the takeover marker names the dead holder without it."""
    dead = nightly.DateLock(spark, warehouse, D, stale_hours=12)
    dead.acquire()
    created: list[str] = []
    create = nightly._create_exclusive

    def recorded(spark_, path, payload):
        created.append(path)
        return create(spark_, path, payload)

    monkeypatch.setattr(nightly, "_create_exclusive", recorded)
    nightly.DateLock(spark, warehouse, D, stale_hours=0).acquire()
    assert any(".takeover-" in p for p in created) and ":" in dead.holder
    assert [p for p in created if ":" in p.removeprefix("file:").rsplit("/", 1)[-1]] == []


def test_a_run_whose_lock_is_taken_over_stops_before_its_next_write(spark, fake_pipeline, monkeypatch):
    """Step a runs while this run's lock goes stale and another run takes it over: a is not logged
    as done, b never runs, and the other run's lock is left alone."""
    conf, calls, _ = fake_pipeline
    wh = conf["warehouse"]
    other = nightly.DateLock(spark, wh, D, stale_hours=0)  # sees any lock as stale
    step_a = steps.STEPS["a"]

    def a_then_taken_over(spark_, conf_, run_date):
        out = step_a(spark_, conf_, run_date)
        other.acquire()
        return out

    monkeypatch.setitem(steps.STEPS, "a", a_then_taken_over)
    with pytest.raises(nightly.RunLockLostError, match=f"taken over by {other.holder}"):
        nightly.run_steps(spark, conf, D, echo=lambda _: None)
    assert calls == ["a"]
    assert "a" not in nightly.log_rows(spark, wh, D)
    assert nightly.DateLock(spark, wh, D, stale_hours=12).current()["holder"] == other.holder
    other.release()


def test_a_killed_runs_lock_expires_and_a_live_runs_never_does(spark, warehouse):
    """A run touches its lock while it holds it (run.lock_heartbeat_seconds), so however long it runs
    the lock stays fresh. Killed, it stops: once the lock is untouched for run.lock_stale_hours the next
    run (Airflow's retry of the killed task) takes the date over, with no `botwatch unlock`."""
    stale_hours = 4 / 3600
    holder = subprocess.Popen([sys.executable, "-c", (
        "import datetime, time; from botwatch.nightly import DateLock; "
        f"lock = DateLock(None, {warehouse!r}, datetime.date.fromisoformat({D.isoformat()!r}), {stale_hours}, 0.2); "
        "lock.acquire(); print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = nightly.DateLock(spark, warehouse, D, stale_hours=stale_hours)
        first = lock.current()
        time.sleep(6)  # longer than the stale time: only the heartbeat keeps the lock fresh
        assert lock.current()["beat_at"] > first["beat_at"]
        with pytest.raises(nightly.RunLockedError, match="last refreshed"):
            lock.acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(6)
    successor = nightly.DateLock(spark, warehouse, D, stale_hours=stale_hours, heartbeat_seconds=0.2)
    successor.acquire()
    assert successor.current()["holder"] == successor.holder
    successor.release()
    assert successor.current() is None


def test_lock_through_hadoop_file_system(spark, warehouse, monkeypatch):
    """Warehouses on HDFS or ADLS take the lock through Hadoop's FileSystem (create without overwrite);
    here Hadoop's local file system stands in for them."""
    monkeypatch.setattr(files, "local_path", lambda path: None)
    uri = f"file://{warehouse}"
    first = nightly.DateLock(spark, uri, D, stale_hours=12)
    first.acquire()
    with pytest.raises(nightly.RunLockedError, match="another run for 2026-01-12 is in progress"):
        nightly.DateLock(spark, uri, D, stale_hours=12).acquire()
    assert nightly.DateLock(spark, uri, D, stale_hours=12).current()["holder"] == first.holder
    before = first.current()["beat_at"]
    time.sleep(0.05)
    first.beat()  # the heartbeat, through Hadoop's create with overwrite
    assert first.current()["beat_at"] > before
    first.release()
    assert nightly.DateLock(spark, uri, D, stale_hours=12).current() is None
    assert not nightly.break_lock(spark, uri, D)
    assert os.listdir(os.path.join(warehouse, t.RUN_LOCK)) == []  # no heartbeat file left behind


def test_a_lock_file_released_between_a_contenders_calls_reads_as_gone(spark, tmp_path, monkeypatch):
    """On HDFS or S3A the holder may delete its lock between a contender's existence check and its read (or
    its status call): that is "no file" (the contender tries again), not a Java FileNotFoundException."""
    monkeypatch.setattr(files, "local_path", lambda path: None)
    target = tmp_path / "lock.json"

    class Releasing:  # Hadoop's file system, whose file goes just before each call
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            def call(*args):
                if target.exists() and name in ("open", "getFileStatus"):
                    target.unlink()
                return getattr(self.fs, name)(*args)
            return call

    for module in (files, nightly):
        real = module.hadoop_fs
        monkeypatch.setattr(module, "hadoop_fs", lambda session, path, real=real: (
            Releasing(real(session, path)[0]), real(session, path)[1]))
    uri = f"file://{target}"
    target.write_text("{}")
    with pytest.raises(FileNotFoundError):
        files.read_bytes(uri, spark)
    target.write_text("{}")
    assert nightly._read_file(spark, uri) is None
    target.write_text("{}")
    assert nightly._modified_at(spark, uri) is None


def test_model_artifacts_reach_any_file_system_spark_reaches(spark, tmp_path):
    """Model artifacts, ``cascade.json`` and reports go through Spark's Hadoop file systems when the
    warehouse is not on a local disk: through fsspec, ``s3a://`` failed without s3fs and ``abfss://`` was
    unknown. Hadoop's viewfs mounted on a local folder stands in for them (fsspec knows no viewfs either)."""
    from botwatch.cascade import choice_for, record_choice, stored_choices

    root = tmp_path / "store"
    mount = f"bw{uuid.uuid4().hex[:8]}"  # Hadoop caches a file system per scheme and authority
    spark._jsc.hadoopConfiguration().set(f"fs.viewfs.mounttable.{mount}.link./wh", f"file://{root}")
    directory = f"viewfs://{mount}/wh/models/stage1_xgb/3"
    registry.write_artifact(directory, "model.json", b"\x00raw")
    registry.write_artifact(directory, "features.json", {"features": ["a"]})
    assert registry.read_artifact(directory, "model.json", binary=True) == b"\x00raw"
    assert registry.read_artifact(directory, "features.json") == {"features": ["a"]}
    assert (root / "models" / "stage1_xgb" / "3" / "model.json").read_bytes() == b"\x00raw"
    assert stored_choices(directory) is None  # FileNotFoundError when absent, as on a local disk
    record_choice(directory, {"heavy_version": 2, "chosen_on": D, "threshold": 0.4})
    assert choice_for(stored_choices(directory), 2, D)["threshold"] == 0.4
    assert files.exists(f"{directory}/cascade.json", spark) and not files.exists(f"{directory}/nope", spark)


def test_a_warehouse_path_with_no_scheme_is_where_hadoops_default_file_system_puts_it(spark, tmp_path):
    """On a cluster whose ``fs.defaultFS`` is HDFS, ``/wh`` is a path there: the tables go there, so the
    run lock and the model artifacts must too (on the driver's disk, two hosts each held "the" lock and
    the next night's driver found no model). A viewfs default mounted on a local folder stands in."""
    root = tmp_path / "store"
    mount = f"bw{uuid.uuid4().hex[:8]}"
    hadoop = spark._jsc.hadoopConfiguration()
    before = hadoop.get("fs.defaultFS")
    hadoop.set(f"fs.viewfs.mounttable.{mount}.link./wh", f"file://{root}")
    hadoop.set("fs.defaultFS", f"viewfs://{mount}/")
    try:
        assert files.local_path("/wh/x") is None
        lock = nightly.DateLock(spark, "/wh", D, stale_hours=12)
        lock.acquire()
        assert (root / t.RUN_LOCK / f"{D}.json").exists()
        assert nightly.DateLock(spark, "/wh", D, stale_hours=12).current()["holder"] == lock.holder
        lock.release()
        registry.write_artifact("/wh/models/stage1_xgb/1", "features.json", {"features": ["a"]})
        assert json.loads((root / "models" / "stage1_xgb" / "1" / "features.json").read_text()) == {
            "features": ["a"]}
    finally:
        hadoop.set("fs.defaultFS", before)
    assert files.local_path("/wh/x") == "/wh/x"


def test_the_heartbeat_needs_no_file_system_that_sets_modification_times(spark, warehouse, monkeypatch):
    """Hadoop's default ``FileSystem.setTimes`` does nothing (object stores): a heartbeat that set the
    lock file's time left a live run's lock stale after run.lock_stale_hours, and another run took it
    over. Setting a file's time does nothing here either; only new files' times move."""
    monkeypatch.setattr(nightly.os, "utime", lambda *a, **k: None)
    # 20 heartbeats to a stale time: a beat delayed by a busy machine (2 cores, Spark running) stays fresh.
    stale_hours = 4 / 3600
    live = nightly.DateLock(spark, warehouse, D, stale_hours=stale_hours, heartbeat_seconds=0.2)
    live.acquire()
    try:
        time.sleep(8)  # twice the stale time: only the heartbeat keeps the lock fresh
        with pytest.raises(nightly.RunLockedError, match="last refreshed"):
            nightly.DateLock(spark, warehouse, D, stale_hours=stale_hours).acquire()
        assert nightly.DateLock(spark, warehouse, D, stale_hours=12).current()["holder"] == live.holder
    finally:
        live.release()
    successor = nightly.DateLock(spark, warehouse, D, stale_hours=stale_hours)
    successor.acquire()
    successor.release()
    assert os.listdir(os.path.join(warehouse, t.RUN_LOCK)) == []


# ---------------------------------------------------------------- the real run on the platform

CHECKED_TABLES = (t.ACTIVITY_DAILY, t.FEATURES, t.SCORES, t.SCORES_LATEST, t.QUARANTINE, t.MODEL_REGISTRY,
                  t.EVENTS, t.LABELS, t.EDGES, t.REVIEW_QUEUE, t.METRICS, t.DRIFT)
KEYS = {
    t.ACTIVITY_DAILY: (t.ACCOUNT_ID, t.DAY), t.FEATURES: (t.ACCOUNT_ID, t.RUN_DATE),
    t.SCORES: (t.ACCOUNT_ID, t.RUN_DATE), t.SCORES_LATEST: (t.ACCOUNT_ID,), t.RUN_LOG: (t.RUN_DATE, "step"),
    t.MODEL_REGISTRY: (t.MODEL_NAME, t.VERSION),
}


def checksum(spark, warehouse: str, table: str) -> str:
    """SHA-256 of the table's rows in a canonical order (pandas, independent of Spark's hashing)."""
    if not table_exists(spark, warehouse, table):
        return "absent"
    df = read_table(spark, warehouse, table)
    df = df.drop(*[c for c in ("artifact_path",) if c in df.columns])  # warehouse-specific path
    return canonical_rows(df)[1]


def checksums(spark, warehouse: str) -> dict[str, str]:
    return {table: checksum(spark, warehouse, table) for table in CHECKED_TABLES}


@pytest.fixture(scope="module")
def full_run(spark, dag_run, tmp_path_factory):
    """One uninterrupted run of the platform's last feature date, as Airflow ran it (``dag_run``:
    every step a spark-submit), in a private copy; (conf, date, checksums, {step: run-log row}, what its
    failed tasks printed)."""
    conf, day, states = dag_run
    wh = copy_warehouse(conf["warehouse"], tmp_path_factory.mktemp("full") / "wh")
    logged = nightly.log_rows(spark, wh, day)
    # A failed task shows in the run log as a missing step; what it printed says why.
    return conf.with_overrides([f"warehouse={wh}"]), day, checksums(spark, wh), logged, states["failed_output"]


@pytest.mark.timeout(DAG_WAIT_TIMEOUT_S)  # the first of this file's tests to wait for the whole run
def test_an_earlier_date_is_never_scored_with_a_model_trained_after_it(spark, full_run):
    # The run trained and promoted the first champion on its date; an earlier date had none.
    conf, day, _, _, _ = full_run
    wh = conf["warehouse"]
    champ = registry.champion(spark, wh, "stage1_xgb")
    assert champ is not None and champ[t.RUN_DATE] == day
    earlier = [r[0] for r in read_table(spark, wh, t.FEATURES).where(F.col(t.RUN_DATE) < day)
               .select(t.RUN_DATE).distinct().collect()]
    assert earlier, "the platform has feature dates before the run's"
    with pytest.raises(registry.NoChampionError, match=f"as of {max(earlier)}"):
        steps.score_stage1_step(spark, conf, max(earlier))


# Waits for the whole run (and, run alone, the platform); the default 900 s also counts fixtures' setup.
@pytest.mark.timeout(DAG_WAIT_TIMEOUT_S)
def test_full_run_then_a_rerun_and_a_failed_then_resumed_rerun_change_nothing(spark, full_run, monkeypatch):
    """The run (Airflow's, one spark-submit per step) writes every step; a rerun in process skips
    everything; a forced rerun that a failure interrupts midway (after score_stage1 wrote its
    partition), then resumes, leaves every table as the uninterrupted run did, keys unique. (One
    forced rerun serves both the rerun and the failure-then-rerun checks: each step runs exactly
    once more.)"""
    conf, day, sums, results, failed_output = full_run
    wh = conf["warehouse"]
    # Every step ok, and the date finished although each step ran as its own task ("_run").
    assert statuses(results) == {s: "ok" for s in (*steps.RUN_ORDER, nightly.RUN_STEP)}, failed_output
    n = read_table(spark, wh, t.FEATURES).where(F.col(t.RUN_DATE) == day).count()
    assert read_table(spark, wh, t.SCORES).where(F.col(t.RUN_DATE) == day).count() == n > 0
    assert read_table(spark, wh, t.SCORES_LATEST).count() == n
    assert statuses(nightly.run_steps(spark, conf, day, echo=lambda _: None)) == {s: "skipped" for s in steps.RUN_ORDER}
    # A lost report is a reason to rerun monitor (as `botwatch report` advises), and only monitor.
    from botwatch.monitoring.run import report_path

    os.remove(report_path(wh, day))
    logged = nightly.log_rows(spark, wh, day)
    missing = nightly.rerun_reason(spark, wh, conf, "monitor", day, logged["monitor"])
    assert missing == "its report for the date is missing"
    assert nightly.rerun_reason(spark, wh, conf, "publish", day, logged["publish"]) is None

    real = steps.STEPS["score_stage1"]

    def crash_after_writing(spark_, conf_, run_date):
        real(spark_, conf_, run_date)  # the scores partition is written, then the process dies
        raise RuntimeError("injected crash")

    monkeypatch.setitem(steps.STEPS, "score_stage1", crash_after_writing)
    with pytest.raises(nightly.StepFailedError) as failed:
        nightly.run_steps(spark, conf, day, force=True, echo=lambda _: None)
    # The cause first: a longer message is cut in CI's excerpt.
    assert "'score_stage1'" in str(failed.value), f"{failed.value.__cause__!r:.600} in {failed.value}"
    monkeypatch.setitem(steps.STEPS, "score_stage1", real)
    resumed = statuses(nightly.run_steps(spark, conf, day, echo=lambda _: None))
    assert resumed == {"validate": "skipped", "activity": "skipped", "features": "skipped", "train": "skipped",
                       "score_stage1": "ok", "score_stage2": "ok", "publish": "ok", "monitor": "ok"}
    assert checksums(spark, wh) == sums and os.path.exists(report_path(wh, day))
    for table, keys in KEYS.items():
        df = read_table(spark, wh, table)
        assert df.count() == df.select(*keys).distinct().count(), table
    # DESCRIBE HISTORY reads as a run log: each write names its step and the date.
    for table, step in ((t.FEATURES, "features"), (t.SCORES_LATEST, "publish")):
        meta = [json.loads(h["userMetadata"]) for h in
                spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(wh, table)}`").collect() if h["userMetadata"]]
        assert {"run_date": day.isoformat(), "step": step} in meta


# ---------------------------------------------------------------- notebooks (papermill, on the run's tables)

# Each notebook's kernel starts its own small Spark JVM for a few queries (see run_notebook).
NOTEBOOK_SETS = ["spark.master=local[2]", "spark.driver_memory=2g", "spark.shuffle_partitions=4",
                 "spark.ui_enabled=false", "spark.log_level=ERROR"]
# What a notebook's traceback says when its kernel's Spark JVM is gone.
JVM_GONE = ("Py4JNetworkError", "Connection refused", "Answer from Java side is empty")


def run_notebook(name: str, out, parameters: dict, crash_dir, capfd) -> None:
    """Execute ``notebooks/{name}`` with papermill in a fresh kernel, whose own Spark JVM runs C1-only
    (short-lived) and writes any crash log into ``crash_dir``.

    Once in CI that JVM died mid-notebook and left no trace of why (a Py4J "connection refused"),
    failing a run whose notebook code was fine. So a notebook whose JVM died is run once more (the
    backfill resumes: finished steps are skipped), after a warning that carries the JVM's crash log
    and the last of its stderr; any other error, or a second death, fails the test."""
    import warnings
    from pathlib import Path

    import papermill as pm

    repo = Path(__file__).resolve().parents[1]
    java_options = f"{JAVA_OPTIONS} -XX:ErrorFile={crash_dir}/hs_err_%p.log"
    sets = [*NOTEBOOK_SETS, "spark.extra_conf=" + json.dumps({"spark.driver.extraJavaOptions": java_options})]
    for attempt in (1, 2):
        try:
            pm.execute_notebook(str(repo / "notebooks" / name), str(out), cwd=str(repo),
                                parameters={**parameters, "sets": sets}, kernel_name="python3", progress_bar=False)
            return
        except pm.PapermillExecutionError as exc:
            if attempt == 2 or not any(s in str(exc) for s in JVM_GONE):
                raise
            crash = "".join(f.read_text()[:3000] for f in Path(crash_dir).glob("hs_err_*.log")) or "none"
            stderr = capfd.readouterr().err[-3000:]
            warnings.warn(f"{name}: the kernel's Spark JVM died ({exc.ename}); running it once more. "
                          f"JVM crash log: {crash}\nstderr tail: {stderr}", stacklevel=1)


def test_notebooks_execute_on_the_runs_tables(spark, platform, full_run, tmp_path, capfd):
    pconf, dates = platform
    conf, day, _, _, _ = full_run
    wh = copy_warehouse(conf["warehouse"], tmp_path / "wh")
    wconf = conf.with_overrides([f"warehouse={wh}"])
    # An earlier scored date, so labels arrive after scoring (PR curve) and scores_latest has history.
    nightly.run_steps(spark, wconf, dates[-2], ["score_stage1", "publish"], echo=lambda _: None)

    first = day - dt.timedelta(days=1)
    run_notebook("backfill.ipynb", tmp_path / "backfill.out.ipynb",
                 {"start": first.isoformat(), "end": day.isoformat(), "conf": "conf/local.yaml", "warehouse": wh,
                  "steps": "validate, activity"}, tmp_path, capfd)  # text, as papermill's -p passes it
    logged = nightly.log_rows(spark, wh, first)
    assert {s: logged[s]["status"] for s in ("validate", "activity")} == {"validate": "ok", "activity": "ok"}

    out = tmp_path / "tour.out.ipynb"
    run_notebook("analyst_tour.ipynb", out, {"conf": "conf/local.yaml", "warehouse": wh, "top_n": 5}, tmp_path, capfd)
    text = out.read_text()
    assert "PR-AUC (average precision) on new labels" in text
    assert f"latest scored date: {day}" in text

