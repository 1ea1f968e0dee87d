"""Scheduled Delta maintenance (the publish step's OPTIMIZE ... ZORDER and VACUUM) on a small table."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import urlparse

from chispa import assert_df_equality

from botwatch import tables as t
from botwatch.delta_io import read_table, write_table
from botwatch.maintenance import LISTING_PARALLELISM_KEY, RETENTION_CHECK_KEY, listing_parallelism, maintain

D = dt.date(2026, 1, 18)  # D.toordinal() % 7 == 0: a maintenance date every 7 days
OTHER = D - dt.timedelta(days=6)  # the first date since the last maintenance date (D - 7)
PREVIOUS = D - dt.timedelta(days=7)  # compacted by the last maintenance run
PARAMS = {"tables": [t.SCORES, "not_written_yet"], "optimize_every_days": 7, "vacuum_every_days": 7,
          "vacuum_retention_hours": 0, "vacuum_listing_parallelism": None}


def _parquet_files(warehouse: str, day: dt.date) -> list[Path]:
    return sorted((Path(warehouse) / t.SCORES / f"{t.RUN_DATE}={day.isoformat()}").glob("*.parquet"))


def _write_day(spark, warehouse: str, day: dt.date, offset: float) -> None:
    rows = [(i, day, i / 100 + offset) for i in range(60)]
    df = spark.createDataFrame(rows, f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date, {t.SCORE} double").repartition(4)
    write_table(df, warehouse, t.SCORES, partition_by=[t.RUN_DATE], replace_where=f"{t.RUN_DATE} = '{day}'")


def test_maintenance_zorders_the_dates_since_the_last_vacuums_old_files_and_changes_no_data(spark, tmp_path):
    wh = str(tmp_path / "wh")
    _write_day(spark, wh, PREVIOUS, 0.0)
    _write_day(spark, wh, OTHER, 0.0)
    _write_day(spark, wh, D, 0.0)
    _write_day(spark, wh, D, 0.5)  # a rerun of D: its first files are no longer referenced
    before = read_table(spark, wh, t.SCORES)
    expected = spark.createDataFrame(before.collect(), before.schema)
    previous_files = _parquet_files(wh, PREVIOUS)
    assert len(_parquet_files(wh, D)) == 8 and len(_parquet_files(wh, OTHER)) == 4 and len(previous_files) == 4

    assert maintain(spark, wh, D + dt.timedelta(days=1), PARAMS) == {"optimized": [], "vacuumed": []}
    spark.conf.set(LISTING_PARALLELISM_KEY, "10000")
    done = maintain(spark, wh, D, PARAMS)
    assert done == {"optimized": [t.SCORES], "vacuumed": [t.SCORES]}  # tables not yet written are skipped

    assert_df_equality(read_table(spark, wh, t.SCORES), expected, ignore_row_order=True)
    # D's and D-6's partitions compacted into one file each and the replaced ones deleted; D-7's, which
    # the last maintenance date covered, untouched.
    assert len(_parquet_files(wh, D)) == 1 and len(_parquet_files(wh, OTHER)) == 1
    assert _parquet_files(wh, PREVIOUS) == previous_files
    history = spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(wh, t.SCORES)}`").collect()
    optimize = next(h for h in history if h["operation"] == "OPTIMIZE")
    assert json.loads(optimize["operationParameters"]["zOrderBy"]) == [t.ACCOUNT_ID]
    assert D.isoformat() in optimize["operationParameters"]["predicate"]
    assert OTHER.isoformat() in optimize["operationParameters"]["predicate"]
    assert json.loads(optimize["userMetadata"]) == {"run_date": D.isoformat(), "step": "maintenance"}
    assert {"VACUUM START", "VACUUM END"} <= {h["operation"] for h in history}
    # VACUUM's own settings are put back (the short retention is allowed only inside the call).
    assert spark.conf.get(LISTING_PARALLELISM_KEY) == "10000"
    assert spark.conf.get(RETENTION_CHECK_KEY, "true") == "true"


def test_vacuum_lists_with_a_few_tasks_per_core_unless_configured(spark):
    assert listing_parallelism(spark, None) == 4 * spark.sparkContext.defaultParallelism
    assert listing_parallelism(spark, 32) == 32


def test_the_default_schedule_also_cleans_the_tables_the_run_rewrites_internally(spark, tmp_path):
    """The rolled window state drops a day each night and stage 2 MERGEs into the embedding cache:
    both leave unreferenced files that only VACUUM deletes, so conf's default list names them."""
    from botwatch.config import load_config

    wh = str(tmp_path / "wh")
    for day in (OTHER, D):
        state = spark.createDataFrame([(i, day, 1.0) for i in range(20)],
                                      f"{t.ACCOUNT_ID} long, {t.RUN_DATE} date, x double")
        write_table(state, wh, t.ACTIVITY_WINDOW, partition_by=[t.RUN_DATE],
                    replace_where=f"{t.RUN_DATE} >= '{OTHER}'")  # drops OTHER's state, as the roll drops old days
        cache = spark.createDataFrame([(i, float(day.day)) for i in range(20)], f"{t.ACCOUNT_ID} long, e double")
        write_table(cache, wh, t.EMBEDDING_CACHE, mode="overwrite")
    params = {**load_config().section("maintenance"), "vacuum_retention_hours": 0}
    done = maintain(spark, wh, D, params)
    for tb in (t.ACTIVITY_WINDOW, t.EMBEDDING_CACHE):
        assert tb in done["vacuumed"]
        live = read_table(spark, wh, tb)
        # only the files of the table as it is now are left
        assert set((Path(wh) / tb).rglob("*.parquet")) == {Path(urlparse(f).path) for f in live.inputFiles()}
        assert live.count() == 20


def test_tables_the_inputs_replace_are_vacuumed_and_event_partitions_optimized_by_date(spark, tmp_path):
    """Ingest replaces accounts whole and validate rewrites a day of events: without VACUUM every night
    would leave another copy on disk. Events are partitioned by event_date: OPTIMIZE must touch only the
    recent days, not rewrite the largest table whole."""
    from botwatch.config import load_config

    wh = str(tmp_path / "wh")
    for day in (PREVIOUS, D, D):  # D written twice: a rerun of validate
        events = spark.createDataFrame([(i, day) for i in range(30)], f"{t.ACCOUNT_ID} long, {t.EVENT_DATE} date")
        write_table(events.repartition(3), wh, t.EVENTS, partition_by=[t.EVENT_DATE],
                    replace_where=f"{t.EVENT_DATE} = '{day}'")
        accounts = spark.createDataFrame([(i, day.day) for i in range(30)], f"{t.ACCOUNT_ID} long, n int")
        write_table(accounts, wh, t.ACCOUNTS, mode="overwrite")
    previous_files = sorted((Path(wh) / t.EVENTS / f"{t.EVENT_DATE}={PREVIOUS}").glob("*.parquet"))
    defaults = {**load_config().section("maintenance"), "vacuum_retention_hours": 0}
    assert set(defaults["vacuum_only_tables"]) >= {t.EVENTS, t.ACCOUNTS, t.EDGES, t.LABELS, t.RUN_LOG}
    assert maintain(spark, wh, D, defaults) == {"optimized": [], "vacuumed": [t.EVENTS, t.ACCOUNTS]}
    for tb in (t.EVENTS, t.ACCOUNTS):
        live = read_table(spark, wh, tb)
        assert set((Path(wh) / tb).rglob("*.parquet")) == {Path(urlparse(f).path) for f in live.inputFiles()}
    assert read_table(spark, wh, t.ACCOUNTS).count() == 30 and read_table(spark, wh, t.EVENTS).count() == 60

    done = maintain(spark, wh, D, {**defaults, "tables": [t.EVENTS]})
    assert done["optimized"] == [t.EVENTS] and done["vacuumed"].count(t.EVENTS) == 1
    history = spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(wh, t.EVENTS)}`").collect()
    predicate = next(h for h in history if h["operation"] == "OPTIMIZE")["operationParameters"]["predicate"]
    assert t.EVENT_DATE in predicate and D.isoformat() in predicate
    assert sorted((Path(wh) / t.EVENTS / f"{t.EVENT_DATE}={PREVIOUS}").glob("*.parquet")) == previous_files
    assert len(list((Path(wh) / t.EVENTS / f"{t.EVENT_DATE}={D}").glob("*.parquet"))) == 1


def test_an_optimize_that_loses_to_another_dates_commit_is_tried_again(spark, tmp_path, monkeypatch):
    """A rerun of D-3 replacing files the OPTIMIZE of D compacts: Delta refuses the OPTIMIZE's commit. It
    changes no data, so it runs again instead of failing D's publish after D was published."""
    from delta.exceptions import ConcurrentDeleteReadException

    wh = str(tmp_path / "wh")
    _write_day(spark, wh, OTHER, 0.0)
    _write_day(spark, wh, D, 0.0)
    expected = spark.createDataFrame(read_table(spark, wh, t.SCORES).collect(), read_table(spark, wh, t.SCORES).schema)
    real_sql, optimizes = spark.sql, []

    def sql(statement, *args, **kwargs):
        if statement.startswith("OPTIMIZE"):
            optimizes.append(statement)
            if len(optimizes) == 1:
                raise ConcurrentDeleteReadException("injected: another writer removed a file this read")
        return real_sql(statement, *args, **kwargs)

    monkeypatch.setattr(spark, "sql", sql)
    assert maintain(spark, wh, D, {**PARAMS, "vacuum_every_days": 0}) == {"optimized": [t.SCORES], "vacuumed": []}
    assert len(optimizes) == 2
    for day in (D, OTHER):  # compacted: one file each in the table now (the old ones await VACUUM)
        assert len(read_table(spark, wh, t.SCORES).where(f"{t.RUN_DATE} = '{day}'").inputFiles()) == 1
    assert_df_equality(read_table(spark, wh, t.SCORES), expected, ignore_row_order=True)
