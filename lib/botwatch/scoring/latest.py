"""``scores_latest``: one row per account, its most recent score, kept by the publish step.

One MERGE keyed on ``account_id`` whose source is only D's partition of ``scores`` (a partition
filter: the cost is one day's scores, not the history). A row is replaced only by a score of the
same or a later run date, so rerunning an old date never overwrites a newer score, and rerunning D
leaves the table as it was. An account whose newest row is D's but whom a rerun of D no longer scores
(deleted, quarantined) falls back to its newest earlier score, or leaves the table: the table is then
what it would be had D's first run scored what the rerun did.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.delta_io import read_table, retried_commit, table_exists, write_table

LATEST_COLUMNS = (t.ACCOUNT_ID, t.RUN_DATE, t.STAGE1_SCORE, t.STAGE2_SCORE, t.SCORE, t.DECISION, t.MODEL_VERSION)
# Whether a decision was carried out, and why not (exploration holdout, golden set): whoever enforces
# from this table must see them.
OPTIONAL_COLUMNS = ("reason_codes", "actioned", "holdout", "golden")


def publish_latest(spark: SparkSession, warehouse: str, run_date: dt.date) -> dict:
    """MERGE D's scores into ``scores_latest``; returns the number of D's scores offered."""
    scores = read_table(spark, warehouse, t.SCORES)
    cols = [*LATEST_COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in scores.columns]]
    today = scores.where(F.col(t.RUN_DATE) == F.lit(run_date)).select(*cols)
    n = today.count()
    if not table_exists(spark, warehouse, t.SCORES_LATEST):
        if n:
            write_table(today, warehouse, t.SCORES_LATEST)
        return {"published": n}
    from delta.tables import DeltaTable

    def commit() -> None:
        target = DeltaTable.forPath(spark, t.table_path(warehouse, t.SCORES_LATEST))
        # Rows D wrote before that D's scores no longer hold: such an account's newest earlier score
        # takes its place (one lookup in the history, only when there are such rows).
        dropped = (
            target.toDF().where(F.col(t.RUN_DATE) == F.lit(run_date)).select(t.ACCOUNT_ID)
            .join(today.select(t.ACCOUNT_ID), t.ACCOUNT_ID, "left_anti")
        )
        source, rerun = today, bool(dropped.take(1))
        if rerun:
            newest = Window.partitionBy(t.ACCOUNT_ID).orderBy(F.col(t.RUN_DATE).desc())
            source = today.unionByName(
                scores.where(F.col(t.RUN_DATE) < F.lit(run_date)).join(dropped, t.ACCOUNT_ID, "left_semi")
                .withColumn("_newest", F.row_number().over(newest)).where("_newest = 1").select(*cols)
            )
        on_d = f"l.{t.RUN_DATE} = DATE'{run_date}'"
        merge = (
            target.alias("l")
            .merge(source.alias("s"), f"l.{t.ACCOUNT_ID} = s.{t.ACCOUNT_ID}")
            .withSchemaEvolution()  # tables published before a column existed gain it
            .whenMatchedUpdateAll(condition=f"s.{t.RUN_DATE} >= l.{t.RUN_DATE} OR {on_d}")
            .whenNotMatchedInsertAll(condition=f"s.{t.RUN_DATE} = DATE'{run_date}'")
        )
        if rerun:  # only then: the nightly MERGE stays a plain upsert
            merge = merge.whenNotMatchedBySourceDelete(condition=on_d)
        merge.execute()

    # Another writer's commit (a backfill publishing another date) fails a MERGE: it is read again and retried.
    retried_commit(commit, f"publishing the scores of {run_date}", t.SCORES_LATEST, "rerun the publish step")
    return {"published": n}
