"""Scheduled Delta maintenance, run by the publish step: OPTIMIZE with Z-order on ``account_id``
(compacts small files and clusters lookups by account) and VACUUM with the retention of conf
``maintenance``.

OPTIMIZE of a date-partitioned table (``run_date``, ``day``, ``event_date``) touches the partitions of
the dates since the last maintenance date, D-k+1 ... D for ``optimize_every_days`` k (published, so
final; the schedule's windows tile the calendar, so every date is compacted once); ``scores_latest``
is compacted whole. VACUUM deletes files older than the retention, so Delta time travel reaches back
only that far; it lists files with a few tasks per core (:func:`listing_parallelism`), not Spark's
default 10,000. The tables of ``vacuum_only_tables`` (the inputs ingest and validate replace) are
vacuumed, not compacted. Both are Delta commits that change no data: the run's skip logic ignores
them (:data:`botwatch.delta_io.MAINTENANCE_OPERATIONS`).
"""
from __future__ import annotations

import datetime as dt
from typing import cast

from pyspark.sql import Row, SparkSession

from botwatch import tables as t
from botwatch.delta_io import commit_metadata, retried_commit, table_exists
from botwatch.spark import session_conf

DELTA_MIN_RETENTION_HOURS = 168  # Delta refuses a shorter VACUUM retention unless its check is off
RETENTION_CHECK_KEY = "spark.databricks.delta.retentionDurationCheck.enabled"
LISTING_PARALLELISM_KEY = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
DATE_PARTITIONS = (t.RUN_DATE, t.DAY, t.EVENT_DATE)  # OPTIMIZE touches only recent partitions of these


def scheduled(run_date: dt.date, every_days: int) -> bool:
    """Whether D is a maintenance day: every ``every_days`` days counted from 0001-01-01 (0: never)."""
    return every_days > 0 and run_date.toordinal() % every_days == 0


def _partition_column(spark: SparkSession, path: str) -> str | None:
    detail = cast(Row, spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first())  # always one row
    cols = list(detail["partitionColumns"] or [])
    return cols[0] if cols else None


def optimize(spark: SparkSession, warehouse: str, table: str, run_date: dt.date, days: int = 1) -> None:
    """OPTIMIZE ... ZORDER BY account_id the ``days`` dates up to D (the whole table if not date-partitioned)."""
    path = t.table_path(warehouse, table)
    part = _partition_column(spark, path)
    first = run_date - dt.timedelta(days=days - 1)
    where = f" WHERE {part} BETWEEN '{first.isoformat()}' AND '{run_date.isoformat()}'" if part in (
        DATE_PARTITIONS) else ""
    statement = f"OPTIMIZE delta.`{path}`{where} ZORDER BY ({t.ACCOUNT_ID})"
    # Another date's run may rewrite files it compacts (a rerun's scores, the embedding cache's MERGE):
    # it changes no data, so it is simply tried again on the table as it now is.
    retried_commit(lambda: spark.sql(statement), f"compacting {table} on {run_date}", table,
                   "rerun the publish step")


def listing_parallelism(spark: SparkSession, configured: int | None) -> int:
    """Tasks VACUUM lists the table's files with: conf ``maintenance.vacuum_listing_parallelism``,
    or 4 per core of the session. VACUUM otherwise takes Spark's partition-discovery parallelism
    (10,000 by default): 10,000 tiny tasks, 20-38 s a table on 2 cores against 2.5 s with 8."""
    return int(configured) if configured else 4 * spark.sparkContext.defaultParallelism


def vacuum(spark: SparkSession, warehouse: str, table: str, retention_hours: float,
           parallelism: int | None = None) -> None:
    path = t.table_path(warehouse, table)
    settings = {LISTING_PARALLELISM_KEY: str(listing_parallelism(spark, parallelism))}
    if retention_hours < DELTA_MIN_RETENTION_HOURS:
        # Asked for explicitly in conf: a short retention breaks time travel and readers of old snapshots.
        settings[RETENTION_CHECK_KEY] = "false"
    with session_conf(spark, settings):
        spark.sql(f"VACUUM delta.`{path}` RETAIN {retention_hours} HOURS")


def maintain(spark: SparkSession, warehouse: str, run_date: dt.date, params: dict) -> dict:
    """OPTIMIZE and VACUUM ``params['tables']``, and VACUUM ``params['vacuum_only_tables']``, when D is on
    their schedule; returns what ran."""
    done: dict[str, list[str]] = {"optimized": [], "vacuumed": []}
    tables = [tb for tb in params["tables"] if table_exists(spark, warehouse, tb)]
    vacuum_only = [tb for tb in params.get("vacuum_only_tables") or []
                   if tb not in tables and table_exists(spark, warehouse, tb)]
    with commit_metadata(spark, step="maintenance", run_date=run_date.isoformat()):
        if scheduled(run_date, params["optimize_every_days"]):
            for table in tables:
                optimize(spark, warehouse, table, run_date, days=params["optimize_every_days"])
                done["optimized"].append(table)
        if scheduled(run_date, params["vacuum_every_days"]):
            for table in tables + vacuum_only:
                vacuum(spark, warehouse, table, params["vacuum_retention_hours"],
                       params.get("vacuum_listing_parallelism"))
                done["vacuumed"].append(table)
    return done
