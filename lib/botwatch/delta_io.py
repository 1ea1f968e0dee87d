"""Reading and writing the warehouse's Delta tables, always by path.

Nightly writes replace exactly one partition (``replaceWhere``) and carry the run date and
step in Delta's commit metadata, so ``DESCRIBE HISTORY`` reads as a run log.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession

from botwatch.config import is_uri
from botwatch.tables import table_path

T_ = TypeVar("T_")


class TableMissingError(FileNotFoundError):
    """A Delta table the step needs does not exist yet."""


class CommitConflictError(RuntimeError):
    """Other writers kept committing to a table before this run's commit could; rerun the step."""


def commit_conflicts() -> tuple[type[Exception], ...]:
    """Delta's exceptions for a commit that lost to another writer's (they share no Python base class)."""
    from delta.exceptions import (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
        MetadataChangedException,
        ProtocolChangedException,
    )

    return (ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
            ConcurrentTransactionException, ConcurrentWriteException, MetadataChangedException,
            ProtocolChangedException)


def retried_commit(commit: Callable[[], T_], what: str, table: str, advice: str, attempts: int = 5, *,
                   also: tuple[type[Exception], ...] = (),
                   error: type[CommitConflictError] = CommitConflictError) -> T_:
    """``commit()``, again while another writer's commit to ``table`` beats it (or it raises one of
    ``also``); ``error`` after ``attempts``. Every caller's commit is safe to repeat: it reads the
    table afresh each time."""
    for attempt in range(attempts):
        try:
            return commit()
        except (*also, *commit_conflicts()):  # type: ignore[misc]
            if attempt == attempts - 1:
                raise error(f"{what}: other runs kept committing to {table} ({attempts} attempts); {advice}") from None
    raise AssertionError("unreachable")


def table_exists(spark: SparkSession, warehouse: str, table: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, table_path(warehouse, table))


def add_missing_column(spark: SparkSession, warehouse: str, table: str, column: str, sql_type: str) -> None:
    """Give a table written before ``column`` existed that column (null in its rows); nothing when the table
    is missing or has it. Another run adding it first ("already exists", or Delta's concurrent-change
    error) is no error."""
    def lacks_it() -> bool:
        return table_exists(spark, warehouse, table) and column not in read_table(spark, warehouse, table).columns

    if lacks_it():
        try:
            spark.sql(f"ALTER TABLE delta.`{table_path(warehouse, table)}` ADD COLUMNS (`{column}` {sql_type})")
        except Exception:
            if lacks_it():
                raise


def read_table(spark: SparkSession, warehouse: str, table: str, version: int | None = None) -> DataFrame:
    path = table_path(warehouse, table)
    if not table_exists(spark, warehouse, table):
        raise TableMissingError(
            f"Delta table '{table}' not found at {path}. Create the inputs with `botwatch simulate` "
            "or `botwatch ingest`, or run the step that writes it."
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def table_version(spark: SparkSession, warehouse: str, table: str) -> int:
    """The table's latest Delta version; -1 when the table does not exist."""
    if not table_exists(spark, warehouse, table):
        return -1
    path = table_path(warehouse, table)
    try:
        # Delta's own log handle: reads the last commit's number without running a Spark job.
        delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(  # type: ignore[union-attr]
            spark._jsparkSession, path)
        defaults = (getattr(delta_log, "update$default$2")(), getattr(delta_log, "update$default$3")())
        return int(delta_log.update(False, *defaults).version())
    except Exception:  # an internal API: fall back to the public (slower) history
        from delta.tables import DeltaTable

        return int(DeltaTable.forPath(spark, path).history(1).first()["version"])  # type: ignore[index]


# Delta operations that rewrite files without changing the data: not a reason to rerun a step.
MAINTENANCE_OPERATIONS = ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES")


def data_commits(spark: SparkSession, warehouse: str, table: str, after: int, current: int) -> DataFrame:
    """``table``'s history rows (``version``, ``operation``, ``userMetadata``...) of the data-changing commits
    after version ``after``; ``current``: its latest version as read by the caller."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    # A few commits more than asked: one that lands after ``current`` was read would push the oldest
    # wanted one out of the newest ``current - after``.
    history = DeltaTable.forPath(spark, table_path(warehouse, table)).history(current - after + 16)
    return history.where((F.col("version") > after) & ~F.col("operation").isin(*MAINTENANCE_OPERATIONS))


# The part of a commit's log entries that says which partitions it touched, and whether it changed data.
_LOG_ACTIONS = ("add struct<path: string, partitionValues: map<string,string>, dataChange: boolean>, "
                "remove struct<path: string, partitionValues: map<string,string>, dataChange: boolean>")


class LogCleanedError(RuntimeError):
    """A commit asked about is older than the Delta log keeps (``delta.logRetentionDuration``, 30 days)."""


def _partition_actions(spark: SparkSession, warehouse: str, table: str, version: int, value: str,
                       data_only: bool) -> DataFrame | None:
    """The add and remove actions of the commits after ``version`` that touch a partition whose value is
    ``value`` (``data_only``: of changed data), read from those commits' own log entries; None when there are
    no such commits. :class:`LogCleanedError` when the log no longer holds them."""
    from pyspark.sql import functions as F

    from botwatch import files

    current = table_version(spark, warehouse, table)
    if current <= version:
        return None
    log = f"{table_path(warehouse, table)}/_delta_log"
    commits = [f"{log}/{v:020d}.json" for v in range(version + 1, current + 1)]
    if not files.exists(commits[0], spark):  # the log drops its oldest commits first
        raise LogCleanedError(f"the Delta log of {table_path(warehouse, table)} no longer holds version {version + 1}")
    actions = spark.read.schema(_LOG_ACTIONS).json(commits)
    touched = [F.exists(F.map_values(F.col(f"{a}.partitionValues")), lambda v: v == F.lit(value))
               & (F.col(f"{a}.dataChange") if data_only else F.lit(True)) for a in ("add", "remove")]
    return actions.where(touched[0] | touched[1])


def partition_changed_since(spark: SparkSession, warehouse: str, table: str, version: int, value: str,
                            data_only: bool = False) -> bool:
    """Whether a commit after ``version`` added or removed a file of a partition whose value is ``value``
    (``data_only``: a file of changed data, not OPTIMIZE's rewrite of the same rows).
    Read from those commits' own log entries: a history row does not say which partitions an append touched,
    and another partition's commits (the next day's events landing) are no change of this one. Any partition
    column's value counts: under Delta column mapping the log names columns by their physical names.
    :class:`LogCleanedError` when the log no longer holds those commits."""
    actions = _partition_actions(spark, warehouse, table, version, value, data_only)
    return actions is not None and actions.limit(1).count() > 0


def files_removed_since(spark: SparkSession, warehouse: str, table: str, version: int, value: str) -> list[str]:
    """The files of ``version`` in a partition whose value is ``value`` that later commits removed (a replace of
    the partition, OPTIMIZE's rewrite), as full paths: reading that version needs them, and VACUUM deletes them
    once older than its retention."""
    from pyspark.sql import functions as F

    actions = _partition_actions(spark, warehouse, table, version, value, data_only=False)
    if actions is None:
        return []
    rows = actions.select(F.col("add.path").alias("added"), F.col("remove.path").alias("removed")).collect()
    added = {r["added"] for r in rows if r["added"] is not None}
    # A file added after the version (a late load) and removed again was never one of its files.
    paths = sorted({r["removed"] for r in rows if r["removed"] is not None} - added)
    root = table_path(warehouse, table)
    # The log keeps paths relative to the table (URL-encoded) unless a file lies outside it.
    return [p if is_uri(p) or p.startswith("/") else f"{root}/{unquote(p)}" for p in paths]


# For each open commit_metadata block, the userMetadata its commits carry (its own, and nested blocks').
_OPEN_BLOCKS: list[set[str]] = []


@contextmanager
def commit_metadata(spark: SparkSession, **fields: str) -> Iterator[set[str]]:
    """Attach ``fields`` (e.g. run_date, step) as Delta userMetadata to commits in this block. Yields the
    set of userMetadata texts this block's commits carry: its own and those of blocks inside it (the
    features step writes its partials as ``activity_daily``), filled in as they open."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    previous = spark.conf.get(key, "")
    text = json.dumps(fields, sort_keys=True)
    for used in _OPEN_BLOCKS:
        used.add(text)
    mine = {text}
    _OPEN_BLOCKS.append(mine)
    spark.conf.set(key, text)
    try:
        yield mine
    finally:
        # By identity: an inner block with the same fields holds an equal set.
        del _OPEN_BLOCKS[next(i for i, b in enumerate(_OPEN_BLOCKS) if b is mine)]
        spark.conf.set(key, previous or "")


def write_table(
    df: DataFrame,
    warehouse: str,
    table: str,
    *,
    mode: str = "overwrite",
    partition_by: Sequence[str] = (),
    replace_where: str | None = None,
    overwrite_schema: bool = False,
    merge_schema: bool = False,
) -> None:
    """Write ``df`` as the Delta table ``<warehouse>/<table>``.

    With ``replace_where`` only the matching rows (one partition) are replaced: rerunning a date
    never duplicates. ``mode="append"`` is for the few logs that are append-only by design.
    """
    writer = df.write.format("delta").mode(mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where)
    if merge_schema:  # new columns (e.g. a new account attribute) join the table's schema
        writer = writer.option("mergeSchema", "true")
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    elif mode == "overwrite" and replace_where is None:
        writer = writer.option("overwriteSchema", "true")
    writer.save(table_path(warehouse, table))


Materialize = Callable[[str, DataFrame], DataFrame]


@contextmanager
def scratch_frames(spark: SparkSession, warehouse: str, label: str) -> Iterator[Materialize]:
    """Yield ``materialize(name, df)``: writes ``df`` once to Parquet in a folder of its own under the
    session's checkpoint dir (``spark.checkpoint.dir``, else ``<warehouse>/_checkpoints``) and returns
    it read back. The folder is deleted when the block ends, failed or not.

    Why: a frame several consumers share is otherwise planned, optimised and shipped once per
    consumer (each keeps the whole lineage down to the table scans; ``cache()`` does not cut it).
    Read back from files, each consumer's plan starts at a scan; a lost executor rereads the file
    (a reliable checkpoint, unlike ``localCheckpoint``)."""
    root = (spark.conf.get("spark.checkpoint.dir", None) or f"{warehouse}/_checkpoints").rstrip("/")
    folder = f"{root}/{label}-{uuid.uuid4().hex}"
    # A killed driver never reaches the finally below: its folder is swept by a later run.
    _delete_stale_scratch(spark, root)

    def materialize(name: str, df: DataFrame) -> DataFrame:
        path = f"{folder}/{name}"
        df.write.mode("error").parquet(path)
        # The schema given: an empty frame may leave no file to infer it from.
        return spark.read.schema(df.schema).parquet(path)

    try:
        yield materialize
    finally:
        delete_path(spark, folder)


SCRATCH_MAX_AGE_HOURS = 24  # far longer than any step runs
_SCRATCH_NAME = re.compile(r".+-[0-9a-f]{32}")  # <label>-<uuid hex>; Spark's own checkpoint folders have dashes


def _delete_stale_scratch(spark: SparkSession, root: str) -> None:
    """Delete scratch folders under ``root`` unchanged for :data:`SCRATCH_MAX_AGE_HOURS`: neither the
    folder nor any file in it is newer. The files decide because object stores (S3A) give every
    folder the time 0: by the folder's own time another run's folder in use would go."""
    fs, jpath = hadoop_fs(spark, root)
    if not fs.exists(jpath):
        return
    cutoff_ms = (time.time() - SCRATCH_MAX_AGE_HOURS * 3600) * 1000
    for status in fs.listStatus(jpath):
        path = status.getPath()
        if not (status.isDirectory() and _SCRATCH_NAME.fullmatch(path.getName())):
            continue
        if status.getModificationTime() >= cutoff_ms:
            continue
        files = fs.listFiles(path, True)
        in_use = False
        while files.hasNext() and not in_use:
            in_use = files.next().getModificationTime() >= cutoff_ms
        if not in_use:
            fs.delete(path, True)


def delete_path(spark: SparkSession, path: str) -> None:
    """Delete a file or folder (recursively) on any Hadoop file system; nothing there is fine."""
    fs, jpath = hadoop_fs(spark, path)
    fs.delete(jpath, True)


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """The Hadoop ``FileSystem`` that holds ``path`` (local, HDFS, object stores) and the path as a
    Hadoop ``Path``, both py4j objects of the driver's JVM."""
    jpath = spark._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
    return jpath.getFileSystem(spark._jsc.hadoopConfiguration()), jpath  # type: ignore[union-attr]
