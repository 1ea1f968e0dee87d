"""Scheduled Delta maintenance, run by the publish step: OPTIMIZE with Z-order on ``account_id``
(compacts the day's small files and clusters lookups by account) and VACUUM with the retention
of conf ``maintenance``.

OPTIMIZE of a date-partitioned table touches D's partition only (it is final once published);
``scores_latest`` is compacted whole. VACUUM deletes files older than the retention, so Delta time
travel reaches back only that far. Both are Delta commits that change no data: the run's skip
logic ignores them (:data:`botwatch.nightly.MAINTENANCE_OPERATIONS`).
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession

from botwatch import tables as t
from botwatch.delta_io import commit_metadata, table_exists

DELTA_MIN_RETENTION_HOURS = 168  # Delta refuses a shorter VACUUM retention unless its check is off


def scheduled(run_date: dt.date, every_days: int) -> bool:
    """Whether D is a maintenance day: every ``every_days`` days counted from 0001-01-01 (0: never)."""
    return every_days > 0 and run_date.toordinal() % every_days == 0


def _partition_column(spark: SparkSession, path: str) -> str | None:
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    cols = list(detail["partitionColumns"] or [])
    return cols[0] if cols else None


def optimize(spark: SparkSession, warehouse: str, table: str, run_date: dt.date) -> None:
    path = t.table_path(warehouse, table)
    part = _partition_column(spark, path)
    where = f" WHERE {part} = '{run_date.isoformat()}'" if part in (t.RUN_DATE, t.DAY) else ""
    spark.sql(f"OPTIMIZE delta.`{path}`{where} ZORDER BY ({t.ACCOUNT_ID})")


def vacuum(spark: SparkSession, warehouse: str, table: str, retention_hours: float) -> None:
    path = t.table_path(warehouse, table)
    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    if retention_hours < DELTA_MIN_RETENTION_HOURS:
        # Asked for explicitly in conf: a short retention breaks time travel and readers of old snapshots.
        previous = spark.conf.get(key, "true")
        spark.conf.set(key, "false")
        try:
            spark.sql(f"VACUUM delta.`{path}` RETAIN {retention_hours} HOURS")
        finally:
            spark.conf.set(key, previous)
    else:
        spark.sql(f"VACUUM delta.`{path}` RETAIN {retention_hours} HOURS")


def maintain(spark: SparkSession, warehouse: str, run_date: dt.date, params: dict) -> dict:
    """OPTIMIZE and VACUUM ``params['tables']`` when D is on their schedule; returns what ran."""
    done: dict[str, list[str]] = {"optimized": [], "vacuumed": []}
    tables = [tb for tb in params["tables"] if table_exists(spark, warehouse, tb)]
    with commit_metadata(spark, step="maintenance", run_date=run_date.isoformat()):
        if scheduled(run_date, params["optimize_every_days"]):
            for table in tables:
                optimize(spark, warehouse, table, run_date)
                done["optimized"].append(table)
        if scheduled(run_date, params["vacuum_every_days"]):
            for table in tables:
                vacuum(spark, warehouse, table, params["vacuum_retention_hours"])
                done["vacuumed"].append(table)
    return done
