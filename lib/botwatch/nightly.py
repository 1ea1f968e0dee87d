"""The nightly run for one logical date D (``botwatch run``, the jobs, the DAG and backfill all use it).

* **Skip logic.** After each step the ``run_log`` Delta table (one row per run_date + step; the
  run rewrites D's partition, which its lock makes its own) records the Delta versions of the
  step's input tables and a fingerprint of the conf it reads (:attr:`StepIO.conf`). A step is
  skipped when its log row says ``ok``, its output for D is there, none of its inputs had a
  data-changing commit since (OPTIMIZE and VACUUM commits do not count) and its conf is the same
  (knobs in :data:`SPEED_ONLY_KEYS` aside). So a failed run resumes where it stopped, a rerun of a
  finished date does nothing, and a rerun after a conf change redoes the steps that read it.
  ``force=True`` runs every step again.
* **Run log in the tables.** Every step runs inside :func:`botwatch.delta_io.commit_metadata`, so
  each Delta commit carries ``{"run_date", "step"}`` and ``DESCRIBE HISTORY`` reads as a run log.
* **One run per date.** A lock file per date, ``<warehouse>/run_lock/<D>.json``, created only if
  absent: of two runs for the same date exactly one creates it; the other fails with
  :class:`RunLockedError`. This is the primitive Delta's own commits rest on (put-if-absent of the
  next log file), so the lock holds wherever Delta's concurrent writers do: local disk
  (``O_CREAT | O_EXCL``) and Hadoop file systems whose create-without-overwrite is atomic (HDFS,
  ADLS). Not on S3 (S3A checks, then writes), where Delta itself needs the DynamoDB LogStore for
  concurrent writers. It lives in the warehouse, not on one machine, and it costs two file
  operations where a lock row in a Delta table cost two commits (1.5-3 s each on 2 cores). Every
  step writes with one Delta commit per table, so the losing run leaves no table torn. While it
  holds the lock, a run rewrites a small heartbeat file beside it (``<D>.json.beat-<holder>``) every
  ``run.lock_heartbeat_seconds`` (a new file's modification time is set by any file system, where
  setting an old one's is not: Hadoop's default ``setTimes`` does nothing); a lock whose files were
  not written for ``run.lock_stale_hours`` belongs to a run that died (killed, lost its worker) and
  is taken over, so Airflow's retry of a killed task runs instead of failing on it.
* **D's events as validate left them.** The activity, features and score_stage2 steps read D's events as
  of the version validate checked (:func:`validated_events`) and key their log rows on it: events of D that
  land after validate (a late load) wait for the next run, whose validate checks them first.
* **Waiting, not failing.** A young platform has too few labels to train (``train`` waits) and no
  champion to score with (the scoring steps and those after them wait). Waiting steps are logged
  with the reason and rerun next time; they do not fail the run.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import files
from botwatch import tables as t
from botwatch.config import Config, ConfigError, warehouse_path
from botwatch.delta_io import (
    LogCleanedError,
    commit_metadata,
    data_commits,
    files_removed_since,
    hadoop_fs,
    partition_changed_since,
    read_table,
    table_exists,
    table_version,
    write_table,
)

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_WAITING = "waiting"
RUN_STEP = "_run"  # the log row of a whole run: ok when every step is ok or skipped, else waiting

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


# The run log's ``input_versions`` entry that holds the fingerprint of a step's conf (no table starts with "_").
CONF_KEY = "_conf"
# The key, in a step's run-log summary, of why the step ran (see rerun_reason).
RAN_BECAUSE = "ran_because"
# The key, in a step's summary, of the inputs it read at an older version than the latest ({table: version}):
# its skip key keeps those, so a change it did not read reruns it.
READ_VERSIONS = "read_versions"
# Knobs that change how fast a step runs, not what it writes: a change to them reruns nothing.
SPEED_ONLY_KEYS = frozenset({
    "features.graph.salt_buckets", "heavy.device", "heavy.num_threads", "cascade.batch_size", "cascade.device",
    "cascade.torch_threads", "cascade.partitions", "cascade.embedding_cache", "simulate.accounts_per_partition",
})


@dataclass(frozen=True)
class StepIO:
    """The tables a step reads (its skip key) and writes; ``output`` is (table, date column) of
    its output for D, checked before a skip (None: the run log row is the output); ``conf`` the
    conf sections or dotted keys its output depends on (also its skip key); ``output_file`` (what
    it is, and its path from the warehouse and D) a file it writes for D, also checked before a skip."""

    inputs: tuple[str, ...]
    writes: tuple[str, ...]
    output: tuple[str, str] | None = None
    conf: tuple[str, ...] = ()
    output_file: tuple[str, Callable[[str, dt.date], str]] | None = None


def _report_path(warehouse: str, run_date: dt.date) -> str:
    from botwatch.monitoring.run import report_path  # pandas and the monitoring code: only when asked

    return report_path(warehouse, run_date)


# Scoring reads the golden set's definition from train (botwatch.steps._scoring_params).
_SCORING_CONF = ("scoring", "train.golden_share", "train.golden_salt")
# The drift alert train reads is the previous date's (metrics of D are written later in the run),
# so ``metrics`` is not one of train's inputs: otherwise monitor(D) would invalidate train(D).
STEP_IO: dict[str, StepIO] = {
    "validate": StepIO((t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS), (t.QUARANTINE, t.EVENTS, t.EDGES, t.LABELS),
                       conf=("validate",)),
    "activity": StepIO((t.ACCOUNTS, t.EVENTS), (t.ACTIVITY_DAILY,), (t.ACTIVITY_DAILY, t.DAY)),
    "features": StepIO(
        (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.ACTIVITY_DAILY), (t.ACTIVITY_DAILY, t.FEATURES),
        (t.FEATURES, t.RUN_DATE), conf=("features", "train.label_weights"),  # weight 0 drops a source there too
    ),
    "train": StepIO((t.FEATURES, t.LABELS, t.MODEL_REGISTRY), (t.MODEL_REGISTRY,), conf=("train", "heavy", "cascade")),
    "score_stage1": StepIO((t.FEATURES, t.MODEL_REGISTRY), (t.SCORES,), (t.SCORES, t.RUN_DATE),
                           conf=(*_SCORING_CONF, "cascade.enabled", "cascade.budget")),
    "score_stage2": StepIO(
        (t.SCORES, t.FEATURES, t.EVENTS, t.EDGES, t.MODEL_REGISTRY), (t.SCORES, t.EMBEDDING_CACHE),
        (t.SCORES, t.RUN_DATE), conf=(*_SCORING_CONF, "cascade"),
    ),
    "publish": StepIO((t.SCORES,), (t.SCORES_LATEST,)),
    "monitor": StepIO((t.SCORES, t.FEATURES, t.LABELS, t.MODEL_REGISTRY), (t.METRICS, t.DRIFT, t.REVIEW_QUEUE),
                      conf=("monitoring",), output_file=("report", _report_path)),
}

# A step waits when the step it needs is waiting (nothing was scored: nothing to publish or monitor).
NEEDS = {"score_stage2": "score_stage1", "publish": "score_stage1", "monitor": "score_stage1"}


class RunLockedError(RuntimeError):
    """Another run holds the lock of this date."""


class RunLockLostError(RunLockedError):
    """This run's lock of its date was taken over (it went unrefreshed past ``run.lock_stale_hours``):
    the run stops before its next write, so two runs never write one date at once."""


class ValidatedEventsGoneError(RuntimeError):
    """D's events as validate checked them can no longer be read: a later load replaced them and VACUUM has
    since deleted their files. Validate D again, then rerun the step."""


class StepFailedError(RuntimeError):
    """A step of the run raised; the message names the step and the date, the cause is chained."""


def _waiting_errors() -> tuple[type[Exception], ...]:
    from botwatch.registry import NoChampionError
    from botwatch.training import NotEnoughLabelsError

    return (NotEnoughLabelsError, NoChampionError)


# ---------------------------------------------------------------- what a step's output depends on


def conf_fingerprint(conf: Config, keys: Sequence[str]) -> int:
    """A 64-bit fingerprint of the conf values under ``keys`` (sections or dotted keys), leaving out
    :data:`SPEED_ONLY_KEYS`; stored in the run log, so it must not change between Python processes."""
    return _fingerprint({key: _without_speed_only(key, conf[key]) for key in keys})


def section_fingerprint(section: str, values: dict[str, Any]) -> int:
    """:func:`conf_fingerprint` of one conf section given as its values (e.g. the simulator's ``params``)."""
    return _fingerprint({section: _without_speed_only(section, values)})


def _fingerprint(values: dict[str, Any]) -> int:
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _without_speed_only(key: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: _without_speed_only(f"{key}.{k}", v) for k, v in value.items() if f"{key}.{k}" not in SPEED_ONLY_KEYS}


def run_conf_fingerprint(conf: Config) -> int:
    """The fingerprint of every conf key a step of the whole run reads (kept in the ``_run`` row)."""
    from botwatch import steps as step_fns

    keys = dict.fromkeys(k for s in step_fns.RUN_ORDER for k in STEP_IO[s].conf)
    return conf_fingerprint(conf, list(keys))


# ---------------------------------------------------------------- table versions


def data_changed_since(spark: SparkSession, warehouse: str, table: str, version: int) -> bool:
    """Whether ``table`` had a data-changing commit after ``version`` (maintenance ignored)."""
    current = table_version(spark, warehouse, table)
    if current == version:
        return False
    if version < 0 or current < version:
        return True  # created, or recreated, since
    return data_commits(spark, warehouse, table, version, current).limit(1).count() > 0


def versions_after_own_commits(spark: SparkSession, warehouse: str, tables: Sequence[str], before: dict[str, int],
                               mine: set[str]) -> dict[str, int]:
    """The skip key of the inputs a step rewrites (validate moves bad rows out of events, edges, labels):
    each table's version after the step's own commits (userMetadata in ``mine``, from
    :func:`botwatch.delta_io.commit_metadata`); but where another writer changed the table while the step
    ran (a late load), its version before the step, so that the next run redoes it: the step may not
    have seen those rows."""
    versions = {}
    for table in tables:
        after, since = table_version(spark, warehouse, table), before.get(table, -1)
        changed_by_others = after != since and data_commits(spark, warehouse, table, since, after).where(
            F.col("userMetadata").isNull() | ~F.col("userMetadata").isin(*mine)).limit(1).count() > 0
        versions[table] = since if changed_by_others else after
    return versions


def validated_events(spark: SparkSession, warehouse: str, run_date: dt.date) -> int | None:
    """The events table's version whose rows of D validate checked (its run-log summary's ``events_version``),
    when D's events changed since (a late load after validate): the activity, features and score_stage2 steps
    read D's events as of it. None (read the latest) when they did not change (OPTIMIZE's rewrite is no change), or
    validate has not run ok for D, or its version is older than the Delta log keeps (warned: a whole run
    of the date validates again). :class:`ValidatedEventsGoneError` when VACUUM has deleted files of that version."""
    row = log_rows(spark, warehouse, run_date).get("validate")
    version = json.loads(row["summary"] or "{}").get("events_version") if row and row["status"] == STATUS_OK else None
    if version is None:
        return None
    try:
        if not partition_changed_since(spark, warehouse, t.EVENTS, version, run_date.isoformat(), data_only=True):
            return None
    except LogCleanedError as exc:
        log.warning("events of %s: %s, so whether they changed after validate checked them is unknown: the latest "
                    "are read (`botwatch run --date %s` validates them again)", run_date, exc, run_date)
        return None
    gone = [p for p in files_removed_since(spark, warehouse, t.EVENTS, version, run_date.isoformat())
            if not files.exists(p, spark)]
    if gone:  # else the read as of that version fails deep in the step with a bare FileNotFoundException
        raise ValidatedEventsGoneError(
            f"events of {run_date} changed after validate checked them (version {version}), and VACUUM has deleted "
            f"{len(gone)} of the files that version read (e.g. {gone[0]}): validate the date again first "
            f"(`botwatch run --date {run_date} --step validate`, or the whole run `botwatch run --date {run_date}`)")
    log.warning("events of %s changed after validate checked them (version %s): read as of that version until the "
                "next run of the date validates the new rows", run_date, version)
    return int(version)


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


def log_row(run_date: dt.date, step: str, status: str, versions: dict[str, int], summary: dict, run_id: str,
            started: dt.datetime) -> dict:
    """One run-log row (``RUN_LOG_SCHEMA``) for a step that just finished. ``started`` is naive UTC.

    Its times are timezone-aware: PySpark stores a naive datetime as the driver host's local time,
    so on a host outside UTC the table (read in UTC) showed them shifted by its offset."""
    return {
        t.RUN_DATE: run_date, "step": step, "status": status, "input_versions": versions,
        "summary": json.dumps(summary, default=str, sort_keys=True), "run_id": run_id,
        "started_at": started.replace(tzinfo=dt.UTC) if started.tzinfo is None else started,
        "finished_at": dt.datetime.now(dt.UTC),
    }


def write_log(spark: SparkSession, warehouse: str, run_date: dt.date, rows: dict[str, dict]) -> None:
    """Write D's partition of the run log: ``rows`` is every step's row of D (``{step: row}``).

    The run holds D's lock, so it owns that partition: one ``replaceWhere`` overwrite of a few rows
    is a single write, where a MERGE would first scan the partition to find the row it replaces.
    """
    names = RUN_LOG_SCHEMA.fieldNames()
    source = spark.createDataFrame([tuple(r[n] for n in names) for r in rows.values()], RUN_LOG_SCHEMA)
    with commit_metadata(spark, step="run_log", run_date=run_date.isoformat()):
        write_table(source.coalesce(1), warehouse, t.RUN_LOG, partition_by=[t.RUN_DATE],
                    replace_where=f"{t.RUN_DATE} = DATE'{run_date.isoformat()}'")


def date_finished(spark: SparkSession, warehouse: str, run_date: dt.date, conf: Config | None = None) -> bool:
    """Whether a whole run of D has finished (its ``_run`` log row is ok) and, when ``conf`` is
    given, with the same conf (:func:`run_conf_fingerprint`)."""
    row = log_rows(spark, warehouse, run_date).get(RUN_STEP)
    if row is None or row["status"] != STATUS_OK:
        return False
    logged_conf = (row["input_versions"] or {}).get(CONF_KEY)  # none in rows logged before it was kept
    return conf is None or logged_conf is None or logged_conf == run_conf_fingerprint(conf)


# ---------------------------------------------------------------- the lock


def _lock_path(warehouse: str, run_date: dt.date) -> str:
    return f"{t.table_path(warehouse, t.RUN_LOCK)}/{run_date.isoformat()}.json"


def _jvm(spark: SparkSession) -> Any:
    """The driver's py4j gateway (typed optional by pyspark; always there on a classic session)."""
    return spark._jvm


def _create_exclusive(spark: SparkSession, path: str, payload: str) -> bool:
    """Create ``path`` holding ``payload`` if no file is there; whether this call created it."""
    local = files.local_path(path)
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as out:
            out.write(payload)
        return True
    fs, jpath = hadoop_fs(spark, path)
    try:
        out = fs.create(jpath, False)
    except Exception as exc:  # py4j wraps Hadoop's FileAlreadyExistsException
        if "FileAlreadyExists" in str(exc) or fs.exists(jpath):
            return False
        raise
    out.write(bytearray(payload.encode()))
    out.close()
    return True


def _read_file(spark: SparkSession, path: str) -> str | None:
    try:
        return files.read_bytes(path, spark).decode()
    except FileNotFoundError:
        return None


def _delete_file(spark: SparkSession, path: str) -> bool:
    local = files.local_path(path)
    if local is not None:
        try:
            os.remove(local)
            return True
        except FileNotFoundError:
            return False
    fs, jpath = hadoop_fs(spark, path)
    return bool(fs.delete(jpath, False))




def _parsed_lock(text: str) -> dict | None:
    """A lock file's JSON with ``acquired_at`` as a datetime; None when it is empty or cut short."""
    try:
        held = json.loads(text)
        held["acquired_at"] = dt.datetime.fromisoformat(held["acquired_at"])
        held["holder"]  # noqa: B018 - a file without a holder is as unreadable
    except (ValueError, KeyError, TypeError):
        return None
    return held


def _file_safe(holder: str) -> str:
    # the holder is host:hex, and HDFS refuses ':' in a file name
    return re.sub(r"[^A-Za-z0-9._-]", "_", holder)


def _beat_path(lock_path: str, holder: str) -> str:
    return f"{lock_path}.beat-{_file_safe(holder)}"


def _modified_at(spark: SparkSession, path: str) -> dt.datetime | None:
    """``path``'s modification time (naive UTC), or None when there is no such file."""
    local = files.local_path(path)
    if local is not None:
        try:
            seconds = os.stat(local).st_mtime
        except FileNotFoundError:
            return None
    else:
        fs, jpath = hadoop_fs(spark, path)
        try:
            seconds = fs.getFileStatus(jpath).getModificationTime() / 1000
        except Exception as exc:  # gone, also between a check and the call: the holder released
            if files.not_found(exc):
                return None
            raise
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


# A takeover marker at least this old (and older than the lock's expiry) is a dead contender's.
MARKER_EXPIRY = dt.timedelta(minutes=10)


def lock_settings(conf: Config) -> tuple[float, float]:
    """``run.lock_stale_hours`` and ``run.lock_heartbeat_seconds``, checked against each other: a beat must land
    well inside the expiry (the next run of the date would take a live lock over), and a beat of 0 would
    loop on the file system without a pause."""
    stale_hours, heartbeat = float(conf["run.lock_stale_hours"]), float(conf["run.lock_heartbeat_seconds"])
    if not 0 < heartbeat <= stale_hours * 3600 / 3:
        raise ConfigError(
            f"run.lock_heartbeat_seconds={heartbeat:g} must be above 0 and at most a third of run.lock_stale_hours="
            f"{stale_hours:g} ({stale_hours * 3600 / 3:g} s): a lock unrefreshed for run.lock_stale_hours is taken "
            "over by the next run of its date")
    return stale_hours, heartbeat


class DateLock:
    """The lock of one run date (the file ``run_lock/<D>.json``); use as a context manager.

    While held, a daemon thread rewrites the holder's heartbeat file every ``heartbeat_seconds``
    (:meth:`beat`); a lock whose newest file is older than ``stale_hours`` is from a run that died
    and is taken over."""

    def __init__(self, spark: SparkSession, warehouse: str, run_date: dt.date, stale_hours: float,
                 heartbeat_seconds: float = 30.0):
        self.spark, self.warehouse, self.run_date, self.stale_hours = spark, warehouse, run_date, stale_hours
        self.heartbeat_seconds = heartbeat_seconds
        self.holder = f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        self.path = _lock_path(warehouse, run_date)
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def acquire(self) -> None:
        self._take()
        self._stop.clear()
        self._beating = threading.Thread(target=self._beat_until_released, daemon=True,
                                         name=f"run-lock-heartbeat-{self.run_date}")
        self._beating.start()

    def _take(self) -> None:
        """Create the lock file, or take over a stale one; else raise :class:`RunLockedError`."""
        # A few tries: the holder may release between a failed create and the read of its lock, and
        # a contender that died mid-takeover leaves a marker that must expire.
        for _ in range(3):
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            payload = json.dumps({t.RUN_DATE: self.run_date.isoformat(), "holder": self.holder,
                                  "host": socket.gethostname(), "acquired_at": now.isoformat()})
            if _create_exclusive(self.spark, self.path, payload):
                return
            held = self.current()
            if held is None:
                continue  # released meanwhile: try again
            stale_before = now - dt.timedelta(hours=self.stale_hours)
            if held["beat_at"] >= stale_before:
                break
            # Not refreshed for run.lock_stale_hours: its run died. Take it over. Of the runs that saw
            # this same stale lock, only the one that creates its takeover marker may delete it: a
            # check-then-delete let a slow contender delete the lock another had just taken over. A
            # holder that is alive after all has beaten since, so the lock differs from ``held``.
            marker = f"{self.path}.takeover-{_file_safe(held['holder'])}"
            if _create_exclusive(self.spark, marker, payload):
                try:
                    if self.current() == held:
                        _delete_file(self.spark, self.path)
                        _delete_file(self.spark, _beat_path(self.path, held["holder"]))
                    if _create_exclusive(self.spark, self.path, payload):
                        return
                finally:
                    _delete_file(self.spark, marker)
            else:
                # A takeover takes seconds: a marker older than the lock's expiry (and MARKER_EXPIRY)
                # is a contender's that was killed inside it, and would block the date for good.
                made = _modified_at(self.spark, marker)
                if made is not None and made < min(stale_before, now - MARKER_EXPIRY):
                    _delete_file(self.spark, marker)
                    continue
            break
        held = self.current()
        raise RunLockedError(
            f"another run for {self.run_date} is in progress (lock held by {held and held['holder']} since "
            f"{held and held['acquired_at']} UTC, last refreshed {held and held['beat_at']} UTC). Wait for it "
            f"to finish. A run that died stops refreshing its lock, which then expires after "
            f"run.lock_stale_hours={self.stale_hours}; to free it now, `botwatch unlock --date {self.run_date}`."
        )

    def check(self) -> None:
        """Raise :class:`RunLockLostError` unless this lock still holds its date."""
        held = self.current()
        if held is None or held["holder"] != self.holder:
            how = "it was removed (`botwatch unlock`, or a takeover after" if held is None else \
                f"taken over by {held['holder']} (after"
            raise RunLockLostError(
                f"the lock of {self.run_date} is no longer this run's ({self.holder}): {how} "
                f"it went unrefreshed for run.lock_stale_hours={self.stale_hours}: a long pause of "
                "this process, or a file system that hung). This run stops before writing more; the other run, if "
                f"any, redoes what it needs. Check that run, then rerun {self.run_date} if it did not finish."
            )

    def _beat_until_released(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                held = self.current()
                if held is None or held["holder"] != self.holder:
                    return  # released, or taken over while this process could not beat
                self.beat()
            except Exception as exc:  # a file system hiccup: the next beat tries again
                log.warning("run lock %s: heartbeat failed: %s", self.path, exc)

    def beat(self) -> None:
        """Rewrite this holder's heartbeat file (the lock file itself is never rewritten: a holder that
        lost the lock must not write over the new holder's)."""
        files.write_bytes(_beat_path(self.path, self.holder),
                          dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat().encode(), self.spark)

    def current(self) -> dict | None:
        """The lock's holder, host, ``acquired_at`` and ``beat_at`` (when the lock or its holder's
        heartbeat file was last written; naive UTC datetimes); None when free."""
        text = _read_file(self.spark, self.path)
        created = _modified_at(self.spark, self.path)
        if text is None or created is None:
            return None
        # Empty or cut short: its run died between creating and writing it (or is doing so now).
        # Held since the file's time, so it expires like any other lock.
        held = _parsed_lock(text) or {"holder": "unreadable-lock-file", "acquired_at": created}
        beat = _modified_at(self.spark, _beat_path(self.path, held["holder"]))
        held["beat_at"] = max(created, beat) if beat is not None else created
        return held

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join(timeout=60)
            self._beating = None
        held = self.current()
        if held is not None and held["holder"] == self.holder:
            _delete_file(self.spark, self.path)
        _delete_file(self.spark, _beat_path(self.path, self.holder))

    def __enter__(self) -> DateLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def break_lock(spark: SparkSession, warehouse: str, run_date: dt.date) -> bool:
    """Remove D's lock whoever holds it (for a run that was killed). Returns whether there was one."""
    path = _lock_path(warehouse, run_date)
    held = _parsed_lock(_read_file(spark, path) or "")  # None: free, or a cut-short file with no holder to name
    if held is not None:
        _delete_file(spark, _beat_path(path, held["holder"]))
    return _delete_file(spark, path)


# ---------------------------------------------------------------- the run


def _input_versions(spark: SparkSession, warehouse: str, tables: Sequence[str]) -> dict[str, int]:
    return {table: table_version(spark, warehouse, table) for table in tables}


def step_versions(spark: SparkSession, warehouse: str, conf: Config, step: str) -> dict[str, int]:
    """The skip key a step's log row keeps: its inputs' Delta versions and its conf's fingerprint."""
    io = STEP_IO[step]
    versions = _input_versions(spark, warehouse, io.inputs)
    return {**versions, CONF_KEY: conf_fingerprint(conf, io.conf)} if io.conf else versions


def rerun_reason(spark: SparkSession, warehouse: str, conf: Config, step: str, run_date: dt.date,
                 logged: dict | None) -> str | None:
    """Why ``step`` must run for D, or None when it may be skipped: logged ok, its output for D
    present, the same conf and no input changed since. Operators read the reason in the run's
    output and in the step's ``run_log`` summary (``ran_because``).

    A row logged before conf fingerprints were kept has none and is trusted, as it was then: an
    upgrade must not recompute every date a backfill passes over."""
    if logged is None:
        return "no finished run of it for this date"
    if logged["status"] != STATUS_OK:
        return f"its last run was {logged['status']}"
    io = STEP_IO[step]
    recorded = dict(logged["input_versions"] or {})
    logged_conf = recorded.pop(CONF_KEY, None)
    if set(recorded) != set(io.inputs):
        return f"it reads other tables than when it ran ({', '.join(io.inputs)})"
    if io.conf and logged_conf is not None and logged_conf != conf_fingerprint(conf, io.conf):
        return f"its conf changed ({', '.join(io.conf)})"
    if io.output is not None and not output_present(spark, warehouse, io.output, run_date):
        return f"its output for the date is missing from {io.output[0]}"
    if io.output_file is not None and not files.exists(io.output_file[1](warehouse, run_date), spark):
        return f"its {io.output_file[0]} for the date is missing"
    for table in io.inputs:
        if data_changed_since(spark, warehouse, table, recorded[table]):
            return f"input {table} changed since its version {recorded[table]}"
    return None


def should_skip(spark: SparkSession, warehouse: str, conf: Config, step: str, run_date: dt.date,
                logged: dict | None) -> bool:
    """Skip ``step`` for D: :func:`rerun_reason` finds no reason to run it."""
    return rerun_reason(spark, warehouse, conf, step, run_date, logged) is None


def run_steps(
    spark: SparkSession,
    conf: Config,
    run_date: dt.date,
    steps: Sequence[str] | None = None,
    *,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run ``steps`` (default: the whole RUN_ORDER; groups such as ``score`` expanded; always in
    RUN_ORDER) for D under D's lock; return ``{step: result}``.

    Each result has ``status`` (ok / skipped / waiting), ``seconds`` and the step's summary.
    A step that raises stops the run with :class:`StepFailedError` (the log keeps what finished).
    """
    import time

    from botwatch import steps as step_fns

    warehouse = warehouse_path(conf)
    order = step_fns.run_order(steps or step_fns.RUN_ORDER)
    whole_run = list(order) == list(step_fns.RUN_ORDER)
    run_id = uuid.uuid4().hex[:12]
    results: dict[str, dict] = {}
    started_run = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    run_key = {CONF_KEY: run_conf_fingerprint(conf)}  # the "_run" row's: the whole run's conf
    with DateLock(spark, warehouse, run_date, *lock_settings(conf)) as lock:
        logged = log_rows(spark, warehouse, run_date)
        for step in order:
            lock.check()  # a lock lost while the last step ran: stop before this one writes
            t0 = time.perf_counter()
            needed = NEEDS.get(step)
            needed_status = results.get(needed, logged.get(needed, {})).get("status") if needed else None
            if needed_status == STATUS_WAITING:
                results[step] = {"status": STATUS_WAITING, "reason": f"{needed} is waiting", "seconds": 0.0}
                echo(f"  {step:13s} waiting ({needed} is waiting)")
                continue
            reason = "forced" if force else rerun_reason(spark, warehouse, conf, step, run_date, logged.get(step))
            if reason is None:
                results[step] = {"status": "skipped", "seconds": time.perf_counter() - t0}
                echo(f"  {step:13s} skipped (done, inputs and conf unchanged)")
                continue
            # This step changes D's tables: until it logs again, neither it nor D counts as done. Stored
            # before it runs: a step that fails after some of its writes must leave no "ok" of its own (it
            # would be skipped) and no "_run: ok" (a backfill would skip a half-rewritten date).
            if [logged.pop(s) for s in (RUN_STEP, step) if s in logged]:
                write_log(spark, warehouse, run_date, logged)
            io = STEP_IO[step]
            before = step_versions(spark, warehouse, conf, step)
            started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            mine: set[str] = set()
            try:
                with commit_metadata(spark, step=step, run_date=run_date.isoformat()) as mine:
                    summary = step_fns.STEPS[step](spark, conf, run_date)
                status = STATUS_OK
            except _waiting_errors() as exc:
                summary, status = {"reason": str(exc)}, STATUS_WAITING
            except Exception as exc:
                raise StepFailedError(f"step '{step}' failed for {run_date}: {exc}") from exc
            lock.check()  # its writes may have met another run's: never logged as done
            # A step that rewrites one of its inputs (validate moves bad rows out) is keyed on the result.
            own = [tb for tb in io.inputs if tb in io.writes]
            versions = {**before, **versions_after_own_commits(spark, warehouse, own, before, mine),
                        **summary.get(READ_VERSIONS, {})}
            kept = {**summary, RAN_BECAUSE: reason}  # what run_log and the caller get
            logged[step] = log_row(run_date, step, status, versions, kept, run_id, started)
            write_log(spark, warehouse, run_date, logged)
            results[step] = {"status": status, "seconds": time.perf_counter() - t0, **kept}
            echo(f"  {step:13s} {status} in {results[step]['seconds']:.1f}s (ran because {reason}) "
                 f"{json.dumps(summary, default=str)[:200]}")
        if whole_run:
            summary = {s: r["status"] for s, r in results.items()}
            # A run with a waiting step is not finished: backfill comes back to it (its done steps skip).
            status = STATUS_WAITING if STATUS_WAITING in summary.values() else STATUS_OK
            logged[RUN_STEP] = log_row(run_date, RUN_STEP, status, run_key, summary, run_id, started_run)
            write_log(spark, warehouse, run_date, logged)
        elif RUN_STEP not in logged and finished_by_steps(spark, warehouse, conf, run_date, logged):
            # Run one step at a time (the DAG's tasks, `botwatch score`): D is finished once every step is.
            summary = {s: STATUS_OK for s in step_fns.RUN_ORDER}
            logged[RUN_STEP] = log_row(run_date, RUN_STEP, STATUS_OK, run_key, summary, run_id, started_run)
            write_log(spark, warehouse, run_date, logged)
    return results


def finished_by_steps(spark: SparkSession, warehouse: str, conf: Config, run_date: dt.date, logged: dict) -> bool:
    """Whether every step of the run is logged ok for D and still current: its output there, its conf
    the same and none of its inputs changed since (a step rerun alone, with --force, leaves the ones
    after it stale)."""
    from botwatch import steps as step_fns

    if any(logged.get(s, {}).get("status") != STATUS_OK for s in step_fns.RUN_ORDER):
        return False  # cheap first: no table versions read until every step has run
    return all(should_skip(spark, warehouse, conf, s, run_date, logged[s]) for s in step_fns.RUN_ORDER)


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
            if not force and steps is None and date_finished(spark, warehouse, day, conf):
                outcome[day] = "already done"
                echo(f"{day}: already done, skipped")
            else:
                echo(f"{day}: running")
                results = run_steps(spark, conf, day, steps, force=force, echo=echo)
                outcome[day] = "waiting" if any(r["status"] == STATUS_WAITING for r in results.values()) else "done"
            bar.advance(task)
    return outcome
