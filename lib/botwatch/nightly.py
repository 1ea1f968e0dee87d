"""The nightly run for one logical date D (``botwatch run``, the jobs, the DAG and backfill all use it).

* **Skip logic.** After each step the ``run_log`` Delta table (MERGE keyed on run_date + step)
  records the Delta versions of the step's input tables. A step is skipped when its log row says
  ``ok``, its output for D is there, and none of its inputs had a data-changing commit since
  (OPTIMIZE and VACUUM commits do not count). So a failed run resumes where it stopped, and a
  rerun of a finished date does nothing. ``force=True`` runs every step again.
* **Run log in the tables.** Every step runs inside :func:`botwatch.delta_io.commit_metadata`, so
  each Delta commit carries ``{"run_date", "step"}`` and ``DESCRIBE HISTORY`` reads as a run log.
* **One run per date.** A lock row per date in the ``run_lock`` Delta table, taken with a MERGE
  on a table with ``delta.isolationLevel = Serializable``: of two runs for the same date, Delta's
  optimistic concurrency lets exactly one commit; the other fails with :class:`RunLockedError`.
  The lock lives in the warehouse itself, so it holds wherever the Delta log's commits are atomic
  (local disk, HDFS, ADLS, GCS; on S3 with the DynamoDB LogStore, as Delta itself requires for
  concurrent writers). A file lock would only hold on one machine. Every step writes with one Delta
  commit per table, so the losing run leaves no table torn.
* **Waiting, not failing.** A young platform has too few labels to train (``train`` waits) and no
  champion to score with (the scoring steps and those after them wait). Waiting steps are logged
  with the reason and rerun next time; they do not fail the run.
"""
from __future__ import annotations

import datetime as dt
import json
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.config import Config, warehouse_path
from botwatch.delta_io import commit_metadata, read_table, table_exists

STATUS_OK = "ok"
STATUS_WAITING = "waiting"
RUN_STEP = "_run"  # the log row of a whole run (all its steps ok or waiting)

# Delta operations that rewrite files without changing the data: not a reason to rerun a step.
MAINTENANCE_OPERATIONS = ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES")

RUN_LOG_SCHEMA = T.StructType(
    [
        T.StructField(t.RUN_DATE, T.DateType(), False),
        T.StructField("step", T.StringType(), False),
        T.StructField("status", T.StringType(), False),
        T.StructField("input_versions", T.MapType(T.StringType(), T.LongType()), True),
        T.StructField("summary", T.StringType(), True),
        T.StructField("run_id", T.StringType(), True),
        T.StructField("started_at", T.TimestampType(), True),
        T.StructField("finished_at", T.TimestampType(), True),
    ]
)

LOCK_SCHEMA = T.StructType(
    [
        T.StructField(t.RUN_DATE, T.DateType(), False),
        T.StructField("holder", T.StringType(), False),
        T.StructField("host", T.StringType(), True),
        T.StructField("acquired_at", T.TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class StepIO:
    """The tables a step reads (its skip key) and writes; ``output`` is (table, date column) of
    its output for D, checked before a skip (None: the run log row is the output)."""

    inputs: tuple[str, ...]
    writes: tuple[str, ...]
    output: tuple[str, str] | None = None


# The drift alert train reads is the previous date's (metrics of D are written later in the run),
# so ``metrics`` is not one of train's inputs: otherwise monitor(D) would invalidate train(D).
STEP_IO: dict[str, StepIO] = {
    "validate": StepIO((t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS), (t.QUARANTINE, t.EVENTS, t.EDGES, t.LABELS)),
    "activity": StepIO((t.ACCOUNTS, t.EVENTS), (t.ACTIVITY_DAILY,), (t.ACTIVITY_DAILY, t.DAY)),
    "features": StepIO(
        (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.ACTIVITY_DAILY), (t.ACTIVITY_DAILY, t.FEATURES),
        (t.FEATURES, t.RUN_DATE),
    ),
    "train": StepIO((t.FEATURES, t.LABELS, t.MODEL_REGISTRY), (t.MODEL_REGISTRY,)),
    "score_stage1": StepIO((t.FEATURES, t.MODEL_REGISTRY), (t.SCORES,), (t.SCORES, t.RUN_DATE)),
    "score_stage2": StepIO(
        (t.SCORES, t.FEATURES, t.EVENTS, t.EDGES, t.MODEL_REGISTRY), (t.SCORES, t.EMBEDDING_CACHE),
        (t.SCORES, t.RUN_DATE),
    ),
    "publish": StepIO((t.SCORES,), (t.SCORES_LATEST,)),
    "monitor": StepIO((t.SCORES, t.FEATURES, t.LABELS, t.MODEL_REGISTRY), (t.METRICS, t.DRIFT, t.REVIEW_QUEUE)),
}

# A step waits when the step it needs is waiting (nothing was scored: nothing to publish or monitor).
NEEDS = {"score_stage2": "score_stage1", "publish": "score_stage1", "monitor": "score_stage1"}


class RunLockedError(RuntimeError):
    """Another run holds the lock of this date."""


class StepFailedError(RuntimeError):
    """A step of the run raised; the message names the step and the date, the cause is chained."""


def _waiting_errors() -> tuple[type[Exception], ...]:
    from botwatch.registry import NoChampionError
    from botwatch.training import NotEnoughLabelsError

    return (NotEnoughLabelsError, NoChampionError)


# ---------------------------------------------------------------- table versions


def table_version(spark: SparkSession, warehouse: str, table: str) -> int:
    """The table's latest Delta version; -1 when the table does not exist."""
    if not table_exists(spark, warehouse, table):
        return -1
    path = t.table_path(warehouse, table)
    try:
        # Delta's own log handle: reads the last commit's number without running a Spark job.
        delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
        defaults = (getattr(delta_log, "update$default$2")(), getattr(delta_log, "update$default$3")())
        return int(delta_log.update(False, *defaults).version())
    except Exception:  # an internal API: fall back to the public (slower) history
        from delta.tables import DeltaTable

        return DeltaTable.forPath(spark, path).history(1).first()["version"]


def data_changed_since(spark: SparkSession, warehouse: str, table: str, version: int) -> bool:
    """Whether ``table`` had a data-changing commit after ``version`` (maintenance ignored)."""
    current = table_version(spark, warehouse, table)
    if current == version:
        return False
    if version < 0 or current < version:
        return True  # created, or recreated, since
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, t.table_path(warehouse, table)).history(current - version)
    changes = history.where((F.col("version") > version) & ~F.col("operation").isin(*MAINTENANCE_OPERATIONS))
    return changes.limit(1).count() > 0


def output_present(spark: SparkSession, warehouse: str, output: tuple[str, str] | None, run_date: dt.date) -> bool:
    if output is None:
        return True
    table, column = output
    if not table_exists(spark, warehouse, table):
        return False
    return read_table(spark, warehouse, table).where(F.col(column) == F.lit(run_date)).limit(1).count() > 0


# ---------------------------------------------------------------- run log


def log_rows(spark: SparkSession, warehouse: str, run_date: dt.date) -> dict[str, dict]:
    """``{step: row}`` of the run log for D."""
    if not table_exists(spark, warehouse, t.RUN_LOG):
        return {}
    rows = read_table(spark, warehouse, t.RUN_LOG).where(F.col(t.RUN_DATE) == F.lit(run_date)).collect()
    return {r["step"]: r.asDict() for r in rows}


def _merge_rows(spark: SparkSession, warehouse: str, table: str, schema: T.StructType, rows: list[tuple],
                run_date: dt.date, key: str, **table_properties: str) -> None:
    """MERGE ``rows`` into a small run_date-partitioned table, creating it on first use."""
    from delta.tables import DeltaTable

    ensure_table(spark, warehouse, table, schema, **table_properties)
    source = spark.createDataFrame(rows, schema)
    # The literal date keeps the MERGE's read to one partition: runs of other dates never conflict.
    cond = f"l.{t.RUN_DATE} = DATE'{run_date.isoformat()}' AND l.{t.RUN_DATE} = s.{t.RUN_DATE}"
    if key:
        cond += f" AND l.{key} = s.{key}"
    target = DeltaTable.forPath(spark, t.table_path(warehouse, table))
    target.alias("l").merge(source.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()


def ensure_table(spark: SparkSession, warehouse: str, table: str, schema: T.StructType, **properties: str) -> None:
    """Create an empty run_date-partitioned Delta table if there is none (a creation race is fine)."""
    if table_exists(spark, warehouse, table):
        return
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(t.table_path(warehouse, table)).addColumns(schema)
    builder = builder.partitionedBy(t.RUN_DATE)
    for key, value in properties.items():
        builder = builder.property(key, value)
    try:
        builder.execute()
    except Exception:
        if not table_exists(spark, warehouse, table):  # someone else created it first: fine
            raise


def write_log(spark: SparkSession, warehouse: str, run_date: dt.date, step: str, status: str,
              versions: dict[str, int], summary: dict, run_id: str, started: dt.datetime) -> None:
    row = (run_date, step, status, versions, json.dumps(summary, default=str, sort_keys=True), run_id, started,
           dt.datetime.now(dt.UTC).replace(tzinfo=None))
    with commit_metadata(spark, step="run_log", run_date=run_date.isoformat()):
        _merge_rows(spark, warehouse, t.RUN_LOG, RUN_LOG_SCHEMA, [row], run_date, "step")


def date_finished(spark: SparkSession, warehouse: str, run_date: dt.date) -> bool:
    """Whether a whole run of D has finished (its ``_run`` log row is ok)."""
    row = log_rows(spark, warehouse, run_date).get(RUN_STEP)
    return row is not None and row["status"] == STATUS_OK


# ---------------------------------------------------------------- the lock


def _is_conflict(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(word in text for word in ("Concurrent", "ProtocolChanged", "MetadataChanged", "already exists"))


class DateLock:
    """The lock of one run date (a row of ``run_lock``); use as a context manager."""

    def __init__(self, spark: SparkSession, warehouse: str, run_date: dt.date, stale_hours: float):
        self.spark, self.warehouse, self.run_date, self.stale_hours = spark, warehouse, run_date, stale_hours
        self.holder = f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"

    def acquire(self) -> None:
        from delta.tables import DeltaTable

        spark, run_date = self.spark, self.run_date
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        stale = now - dt.timedelta(hours=self.stale_hours)
        try:
            with commit_metadata(spark, step="lock", run_date=run_date.isoformat()):
                ensure_table(spark, self.warehouse, t.RUN_LOCK, LOCK_SCHEMA, **{"delta.isolationLevel": "Serializable"})
                source = spark.createDataFrame([(run_date, self.holder, socket.gethostname(), now)], LOCK_SCHEMA)
                cond = f"l.{t.RUN_DATE} = DATE'{run_date.isoformat()}' AND l.{t.RUN_DATE} = s.{t.RUN_DATE}"
                merged = (
                    DeltaTable.forPath(spark, t.table_path(self.warehouse, t.RUN_LOCK)).alias("l")
                    .merge(source.alias("s"), cond)
                    # A lock older than run.lock_stale_hours belongs to a run that died: take it over.
                    .whenMatchedUpdateAll(condition=F.col("l.acquired_at") < F.lit(stale))
                    .whenNotMatchedInsertAll()
                    .execute()
                    .first()
                )
        except Exception as exc:
            if _is_conflict(exc):
                raise RunLockedError(
                    f"another run for {run_date} took the lock at the same moment (Delta refused this one's "
                    "commit); let it finish, then rerun the date if needed"
                ) from exc
            raise
        # The MERGE wrote our row (inserted, or took over a stale lock): ours, no read needed.
        if merged is not None and merged["num_affected_rows"] == 1:
            return
        held = self.current()
        if held is None or held["holder"] != self.holder:
            raise RunLockedError(
                f"another run for {run_date} is in progress (lock held by {held and held['holder']} since "
                f"{held and held['acquired_at']} UTC). Wait for it to finish. If no such run is alive (it was "
                f"killed), the lock expires after run.lock_stale_hours={self.stale_hours}, or remove it now with "
                f"`botwatch unlock --date {run_date}`."
            )

    def current(self) -> dict | None:
        rows = (
            read_table(self.spark, self.warehouse, t.RUN_LOCK)
            .where(F.col(t.RUN_DATE) == F.lit(self.run_date)).collect()
        )
        return rows[0].asDict() if rows else None

    def release(self) -> None:
        from delta.tables import DeltaTable

        with commit_metadata(self.spark, step="unlock", run_date=self.run_date.isoformat()):
            DeltaTable.forPath(self.spark, t.table_path(self.warehouse, t.RUN_LOCK)).delete(
                (F.col(t.RUN_DATE) == F.lit(self.run_date)) & (F.col("holder") == F.lit(self.holder))
            )

    def __enter__(self) -> DateLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def break_lock(spark: SparkSession, warehouse: str, run_date: dt.date) -> bool:
    """Remove D's lock whoever holds it (for a run that was killed). Returns whether there was one."""
    if not table_exists(spark, warehouse, t.RUN_LOCK):
        return False
    from delta.tables import DeltaTable

    lock = DateLock(spark, warehouse, run_date, 0)
    held = lock.current() is not None
    DeltaTable.forPath(spark, t.table_path(warehouse, t.RUN_LOCK)).delete(F.col(t.RUN_DATE) == F.lit(run_date))
    return held


# ---------------------------------------------------------------- the run


def _input_versions(spark: SparkSession, warehouse: str, tables: Sequence[str]) -> dict[str, int]:
    return {table: table_version(spark, warehouse, table) for table in tables}


def should_skip(spark: SparkSession, warehouse: str, step: str, run_date: dt.date, logged: dict | None) -> bool:
    """Skip ``step`` for D: logged ok, its output for D present, no input changed since."""
    if logged is None or logged["status"] != STATUS_OK:
        return False
    io = STEP_IO[step]
    recorded = logged["input_versions"] or {}
    if set(recorded) != set(io.inputs):
        return False
    if not output_present(spark, warehouse, io.output, run_date):
        return False
    return not any(data_changed_since(spark, warehouse, table, recorded[table]) for table in io.inputs)


def run_steps(
    spark: SparkSession,
    conf: Config,
    run_date: dt.date,
    steps: Sequence[str] | None = None,
    *,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run ``steps`` (default: the whole RUN_ORDER) for D under D's lock; return ``{step: result}``.

    Each result has ``status`` (ok / skipped / waiting), ``seconds`` and the step's summary.
    A step that raises stops the run with :class:`StepFailedError` (the log keeps what finished).
    """
    import time

    from botwatch import steps as step_fns

    warehouse = warehouse_path(conf)
    order = list(steps or step_fns.RUN_ORDER)
    unknown = [s for s in order if s not in STEP_IO]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; the run's steps are {list(step_fns.RUN_ORDER)}")
    whole_run = list(order) == list(step_fns.RUN_ORDER)
    run_id = uuid.uuid4().hex[:12]
    results: dict[str, dict] = {}
    started_run = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with DateLock(spark, warehouse, run_date, float(conf["run.lock_stale_hours"])):
        logged = log_rows(spark, warehouse, run_date)
        for step in order:
            t0 = time.perf_counter()
            needed = NEEDS.get(step)
            needed_status = results.get(needed, logged.get(needed, {})).get("status") if needed else None
            if needed_status == STATUS_WAITING:
                results[step] = {"status": STATUS_WAITING, "reason": f"{needed} is waiting", "seconds": 0.0}
                echo(f"  {step:13s} waiting ({needed} is waiting)")
                continue
            if not force and should_skip(spark, warehouse, step, run_date, logged.get(step)):
                results[step] = {"status": "skipped", "seconds": time.perf_counter() - t0}
                echo(f"  {step:13s} skipped (done, inputs unchanged)")
                continue
            io = STEP_IO[step]
            before = _input_versions(spark, warehouse, io.inputs)
            started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            try:
                with commit_metadata(spark, step=step, run_date=run_date.isoformat()):
                    summary = step_fns.STEPS[step](spark, conf, run_date)
                status = STATUS_OK
            except _waiting_errors() as exc:
                summary, status = {"reason": str(exc)}, STATUS_WAITING
            except Exception as exc:
                raise StepFailedError(f"step '{step}' failed for {run_date}: {exc}") from exc
            # A step that rewrites one of its inputs (validate moves bad rows out) is keyed on the result.
            own = [tb for tb in io.inputs if tb in io.writes]
            versions = {**before, **_input_versions(spark, warehouse, own)}
            write_log(spark, warehouse, run_date, step, status, versions, summary, run_id, started)
            results[step] = {"status": status, "seconds": time.perf_counter() - t0, **summary}
            echo(f"  {step:13s} {status} in {results[step]['seconds']:.1f}s {json.dumps(summary, default=str)[:200]}")
        if whole_run:
            write_log(spark, warehouse, run_date, RUN_STEP, STATUS_OK, {},
                      {s: r["status"] for s, r in results.items()}, run_id, started_run)
    return results


def backfill(
    spark: SparkSession,
    conf: Config,
    start: dt.date,
    end: dt.date,
    *,
    steps: Sequence[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[dt.date, str]:
    """``run_steps`` for each date from ``start`` to ``end``, in order; dates whose whole run
    finished before are skipped (so a failed backfill resumes; with ``steps``, each finished step
    is skipped by the run's own skip logic). Shows a progress bar with ETA."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    warehouse = warehouse_path(conf)
    dates = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    outcome: dict[dt.date, str] = {}
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("backfill {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(str(start), total=len(dates))
        for day in dates:
            bar.update(task, description=str(day))
            if not force and steps is None and date_finished(spark, warehouse, day):
                outcome[day] = "already done"
                echo(f"{day}: already done, skipped")
            else:
                echo(f"{day}: running")
                results = run_steps(spark, conf, day, steps, force=force, echo=echo)
                outcome[day] = "waiting" if any(r["status"] == STATUS_WAITING for r in results.values()) else "done"
            bar.advance(task)
    return outcome
