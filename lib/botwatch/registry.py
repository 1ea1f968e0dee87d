"""The model registry: a ``model_registry`` Delta table plus artifacts under
``<warehouse>/models/<name>/<version>/`` (model, feature list, threshold, calibration, training
window, metrics, code version).

Stages: ``challenger`` (just trained), ``champion`` (the one that scores), ``retired``. A
challenger is promoted only through :func:`promotion_decision`; a refusal is recorded with its
reason, and the champion keeps scoring.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import __version__, files
from botwatch import tables as t
from botwatch.delta_io import (
    CommitConflictError,
    add_missing_column,
    read_table,
    retried_commit,
    table_exists,
    table_version,
    write_table,
)
from botwatch.tables import table_path

CHAMPION, CHALLENGER, RETIRED = t.MODEL_STAGES
PROMOTED_AT = "promoted_at"
T_ = TypeVar("T_")
PLACEHOLDER_REASON = "registering: artifacts being written (a failed run leaves this)"
LOST_RACE = "rerun the training to compare against it"  # ends the refusal of a gate pass another run beat
# A gate pass recorded before its promotion; the promotion's commit replaces it with the gate's reason.
PROMOTION_PENDING = "passed the gate; promotion not committed (a failed run leaves this)"

REGISTRY_SCHEMA = T.StructType(
    [
        T.StructField(t.MODEL_NAME, T.StringType(), False),
        T.StructField(t.VERSION, T.IntegerType(), False),
        T.StructField(t.STAGE, T.StringType(), False),
        T.StructField(t.RUN_DATE, T.DateType(), True),
        T.StructField("created_at", T.TimestampType(), True),
        T.StructField("metrics", T.MapType(T.StringType(), T.DoubleType()), True),
        T.StructField("artifact_path", T.StringType(), True),
        T.StructField("threshold", T.DoubleType(), True),
        T.StructField("train_start", T.DateType(), True),
        T.StructField("train_end", T.DateType(), True),
        T.StructField("code_version", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
        # When the version last became champion (null: never, or promoted before this column existed).
        T.StructField(PROMOTED_AT, T.TimestampType(), True),
    ]
)


class NoChampionError(LookupError):
    """No champion model is registered yet: train one first (`botwatch train --date D`)."""


@dataclass
class ModelRecord:
    model_name: str
    version: int
    stage: str
    run_date: dt.date
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_path: str = ""
    threshold: float | None = None
    train_start: dt.date | None = None
    train_end: dt.date | None = None
    code_version: str = __version__
    reason: str = ""
    created_at: dt.datetime | None = None
    promoted_at: dt.datetime | None = None

    def row(self) -> tuple:
        # NaN metrics are stored as null-free numbers: Delta maps keep doubles, NaN included.
        return (
            self.model_name, self.version, self.stage, self.run_date,
            # Aware (UTC): PySpark would store a naive datetime as the driver host's local time.
            self.created_at or dt.datetime.combine(self.run_date, dt.time(), tzinfo=dt.UTC),
            {k: float(v) for k, v in self.metrics.items()}, self.artifact_path,
            None if self.threshold is None else float(self.threshold),
            self.train_start, self.train_end, self.code_version, self.reason, self.promoted_at,
        )


def artifact_dir(warehouse: str, model_name: str, version: int) -> str:
    return f"{warehouse.rstrip('/')}/models/{model_name}/{version}"


def write_artifact(directory: str, name: str, data: bytes | str | dict) -> str:
    """Write one file of a model's artifacts (a dict as JSON) on the warehouse's file system (:mod:`botwatch.files`)."""
    path = f"{directory}/{name}"
    payload = json.dumps(data, indent=2, sort_keys=True, default=str) if isinstance(data, dict) else data
    files.write_bytes(path, payload if isinstance(payload, bytes) else payload.encode())
    return path


def read_artifact(directory: str, name: str, binary: bool = False):
    """One artifact file: bytes, text, or parsed JSON for ``*.json``; FileNotFoundError when absent."""
    data = files.read_bytes(f"{directory}/{name}")
    return data if binary else json.loads(data) if name.endswith(".json") else data.decode()


def records(spark: SparkSession, warehouse: str, model_name: str | None = None) -> list[dict]:
    if not table_exists(spark, warehouse, t.MODEL_REGISTRY):
        return []
    df = read_table(spark, warehouse, t.MODEL_REGISTRY)
    if model_name:
        df = df.where(F.col(t.MODEL_NAME) == model_name)
    return [r.asDict(recursive=True) for r in df.orderBy(t.VERSION).collect()]


def next_version(spark: SparkSession, warehouse: str, model_name: str) -> int:
    return max((r[t.VERSION] for r in records(spark, warehouse, model_name)), default=0) + 1


class RegistryMovedError(Exception):
    """The registry got a commit between reading it and committing a decision based on it (retried)."""


class RegistryConflictError(CommitConflictError):
    """Other runs kept winning the registry commits this run tried (reserving a version, recording or
    promoting one); rerun the training."""


def reserve_version(spark: SparkSession, warehouse: str, model_name: str, run_date: dt.date,
                    attempts: int = 5) -> int:
    """A version number of ``model_name`` that no other run holds, registered at once as a
    ``challenger`` placeholder (its record is completed by :func:`upsert`). Taking
    :func:`next_version` and registering later let two trainings finishing together share a number:
    the second overwrote the first's artifacts and record, a champion's included. The insert is
    insert-only, and Delta fails one of two concurrent ones, so a taken number is retried with the next."""
    def attempt() -> int:
        version = next_version(spark, warehouse, model_name)
        placeholder = ModelRecord(model_name, version, CHALLENGER, run_date, reason=PLACEHOLDER_REASON)
        if not _insert_new(spark, warehouse, placeholder):
            raise RegistryMovedError(f"version {version} of '{model_name}' was taken by another run")
        return version

    return _retried(attempt, f"reserving a version of '{model_name}'", attempts)


def _insert_new(spark: SparkSession, warehouse: str, record: ModelRecord) -> bool:
    """Insert ``record`` unless its (name, version) exists; whether it was inserted."""
    if not table_exists(spark, warehouse, t.MODEL_REGISTRY):
        # Created empty: of two runs creating it, both appends of nothing are harmless (or one fails
        # and retries); the version itself is only ever taken through the MERGE below.
        write_table(spark.createDataFrame([], REGISTRY_SCHEMA), warehouse, t.MODEL_REGISTRY, mode="append")
    row = _merge_record(spark, warehouse, record, update=False).first()
    return row is not None and bool(row["num_inserted_rows"])


def _merge_record(spark: SparkSession, warehouse: str, record: ModelRecord, update: bool) -> DataFrame:
    """MERGE ``record`` into the registry keyed on (name, version): insert it when new, replace the
    row when ``update``. Returns Delta's metrics row."""
    from delta.tables import DeltaTable

    add_missing_column(spark, warehouse, t.MODEL_REGISTRY, PROMOTED_AT, "TIMESTAMP")  # a registry from before it
    df = spark.createDataFrame([record.row()], REGISTRY_SCHEMA)
    merge = DeltaTable.forPath(spark, table_path(warehouse, t.MODEL_REGISTRY)).alias("r").merge(
        df.alias("n"), f"r.{t.MODEL_NAME} = n.{t.MODEL_NAME} AND r.{t.VERSION} = n.{t.VERSION}")
    if update:
        merge = merge.whenMatchedUpdateAll()
    return merge.whenNotMatchedInsertAll().execute()


def champion(spark: SparkSession, warehouse: str, model_name: str, as_of: dt.date | None = None) -> dict | None:
    """The champion; with ``as_of``, one trained on or before that date: the champion when it was,
    else the one promoted last (``promoted_at``) of the versions ever promoted (the retired ones:
    only champions are retired) that were trained by then. A rerun of an old date then never scores
    with a model trained on labels observed after it, and a rollback (an older version promoted by
    hand) keeps taking effect after later promotions: the version rolled back was promoted before it."""
    return champion_among(records(spark, warehouse, model_name), as_of)


_NEVER = dt.datetime.min


def champion_among(found: list[dict], as_of: dt.date | None = None) -> dict | None:
    """:func:`champion` among one model's ``found`` :func:`records` (read once for many dates)."""
    current = [r for r in found if r[t.STAGE] == CHAMPION]
    if as_of is None or (current and current[-1][t.RUN_DATE] <= as_of):
        return current[-1] if current else None
    then = [r for r in found if r[t.STAGE] == RETIRED and r[t.RUN_DATE] <= as_of]
    # Versions promoted before promoted_at was recorded count as promoted first, in training order
    # (then the latest trained was the one promoted last: the gate never promotes an older model).
    return max(then, key=lambda r: (r.get(PROMOTED_AT) or _NEVER, r[t.RUN_DATE], r[t.VERSION]), default=None)


def trained_on(spark: SparkSession, warehouse: str, model_name: str, run_date: dt.date) -> dict | None:
    """The latest version of ``model_name`` whose training on ``run_date`` finished and was decided
    (promoted or refused), else None. A placeholder of a training that failed, a gate pass whose
    promotion never committed, and a refusal only because another run promoted first do not count:
    those trainings are to be run again."""
    done = [r for r in records(spark, warehouse, model_name)
            if r[t.RUN_DATE] == run_date and r["reason"] not in (PLACEHOLDER_REASON, PROMOTION_PENDING)
            and not (r["reason"] or "").endswith(LOST_RACE)]
    return done[-1] if done else None


def _retried(commit: Callable[[], T_], what: str, attempts: int) -> T_:
    return retried_commit(commit, what, t.MODEL_REGISTRY, "rerun the training", attempts,
                          also=(RegistryMovedError,), error=RegistryConflictError)


def upsert(spark: SparkSession, warehouse: str, record: ModelRecord, attempts: int = 5) -> None:
    """Insert or update one model version (MERGE keyed on name and version; retried when another
    run's registry commit wins: the registry is one small unpartitioned table, so any two commits
    to it conflict)."""
    if not table_exists(spark, warehouse, t.MODEL_REGISTRY):
        write_table(spark.createDataFrame([record.row()], REGISTRY_SCHEMA), warehouse, t.MODEL_REGISTRY,
                    mode="overwrite")
        return
    _retried(lambda: _merge_record(spark, warehouse, record, update=True),
             f"recording version {record.version} of '{record.model_name}'", attempts)


def newer_champion(current: dict | None, run_date: dt.date) -> str | None:
    """``current`` champion's description when it was trained after ``run_date`` (else None)."""
    if current is None or current[t.RUN_DATE] <= run_date:
        return None
    return f"version {current[t.VERSION]}, trained on {current[t.RUN_DATE]}"


@dataclass
class PromotionDecision:
    promote: bool
    reason: str


def promotion_decision(
    challenger_pr_auc: float,
    canary_pr_auc: float,
    champion_pr_auc: float | None,
    tolerance: float,
    *,
    challenger_threshold: float | None = None,
    champion: dict | None = None,
    run_date: dt.date | None = None,
    challenger_vs_champion: float | None = None,
) -> PromotionDecision:
    """The gate, on the golden set: never promote a model worse than the champion (beyond
    ``tolerance``) or one that does not beat the canary (both at PR-AUC 1.0 passes). With the
    ``champion``'s registry record: a model with no operating threshold (``challenger_threshold``
    None: none reached the target precision on validation, it would action nobody) never replaces a
    champion that has one, and a model trained for ``run_date`` never replaces a champion trained
    after it (a rerun of an earlier date). ``challenger_vs_champion``: the challenger's PR-AUC on the
    golden rows the champion was scored on, where those are fewer (a champion trained with another
    golden split), compared with ``champion_pr_auc`` in place of ``challenger_pr_auc``."""
    import math

    newer = newer_champion(champion, run_date) if run_date is not None else None
    if newer is not None:
        return PromotionDecision(
            False, f"the champion ({newer}) was trained after this run's date: a rerun of an earlier date "
            "never replaces it"
        )
    if math.isnan(challenger_pr_auc):
        return PromotionDecision(False, "challenger has no golden-set PR-AUC (no golden labels with both classes)")
    if champion is not None and champion.get("threshold") is not None and challenger_threshold is None:
        return PromotionDecision(
            False, "challenger has no operating threshold (no threshold reached the target precision on validation: "
            "it would action nobody) and the champion has one"
        )
    # Both perfect: the golden set cannot tell them apart, and "beat" could never be met.
    if not (challenger_pr_auc > canary_pr_auc or challenger_pr_auc == canary_pr_auc == 1.0):
        return PromotionDecision(
            False, f"golden PR-AUC {challenger_pr_auc:.4f} does not beat the canary's {canary_pr_auc:.4f}"
        )
    ours, rows = challenger_pr_auc, "golden PR-AUC"
    if challenger_vs_champion is not None:
        ours, rows = challenger_vs_champion, "PR-AUC on the golden rows the champion never trained on"
    if (
        champion_pr_auc is not None and not math.isnan(champion_pr_auc)
        and not ours >= champion_pr_auc - tolerance
    ):
        return PromotionDecision(
            False,
            f"{rows} {ours:.4f} is worse than the champion's {champion_pr_auc:.4f} "
            f"by more than the tolerance {tolerance}",
        )
    return PromotionDecision(True, "passed the gate: beats the canary and is not worse than the champion")


# ``promote``'s default: no expectation about the current champion (a manual promotion or rollback).
ANY_CHAMPION = object()


def promote(spark: SparkSession, warehouse: str, model_name: str, version: int, reason: str,
            expected_champion: int | None | object = ANY_CHAMPION, attempts: int = 5) -> bool:
    """Make ``version`` the champion and retire the previous one, in one commit: scoring never sees
    no champion (or two), and a crash leaves the old champion in place. The champion's ``promoted_at``
    is the commit's time (what :func:`champion` as of a date orders promotions by).

    With ``expected_champion`` (the version the gate compared against; None: there was none), nothing
    changes and False is returned when another run has promoted a different champion since: this
    model was never compared with it. A commit beaten by another run's is retried after reading the
    champion again, so two trainings finishing together never both promote."""
    from delta.tables import DeltaTable

    add_missing_column(spark, warehouse, t.MODEL_REGISTRY, PROMOTED_AT, "TIMESTAMP")

    def attempt() -> bool:
        read_at = table_version(spark, warehouse, t.MODEL_REGISTRY)
        found = records(spark, warehouse, model_name)
        if not any(r[t.VERSION] == version for r in found):
            # The update would retire the champion and crown nobody.
            raise ValueError(f"no version {version} of '{model_name}' in {warehouse}/model_registry to promote")
        current = next((r[t.VERSION] for r in reversed(found) if r[t.STAGE] == CHAMPION), None)
        if expected_champion is not ANY_CHAMPION and current not in (expected_champion, version):
            return False
        if table_version(spark, warehouse, t.MODEL_REGISTRY) != read_at:
            # Another run committed while the champion was read: the update would start from its
            # snapshot, without a conflict, and retire a champion this model was never compared with.
            raise RegistryMovedError
        new = F.col(t.VERSION) == version
        DeltaTable.forPath(spark, table_path(warehouse, t.MODEL_REGISTRY)).update(
            (F.col(t.MODEL_NAME) == model_name) & (new | (F.col(t.STAGE) == CHAMPION)),
            {
                t.STAGE: F.when(new, F.lit(CHAMPION)).otherwise(F.lit(RETIRED)),
                "reason": F.when(new, F.lit(reason)).otherwise(F.lit(f"replaced by version {version}")),
                # The champion retired was promoted after every other version: one promoted before
                # promoted_at existed (a rollback, say) gets a time just before its successor's.
                PROMOTED_AT: F.when(new, F.current_timestamp()).otherwise(
                    F.coalesce(F.col(PROMOTED_AT), F.current_timestamp() - F.expr("INTERVAL 1 MICROSECOND"))),
            },
        )
        return True

    return _retried(attempt, f"promoting version {version} of '{model_name}'", attempts)


def register(spark: SparkSession, warehouse: str, record: ModelRecord, decision: PromotionDecision,
             compared_with: dict | None) -> PromotionDecision:
    """Record a trained ``record`` with the gate's ``decision`` and promote it when the gate passed
    and the champion is still ``compared_with`` (the champion's record the gate read, or None).
    Returns the decision that took effect: a pass becomes a refusal, with its reason recorded, when
    another run promoted a model meanwhile (rerun the training to compare against that one)."""
    record = replace(record, reason=decision.reason if not decision.promote else PROMOTION_PENDING)
    upsert(spark, warehouse, record)
    if not decision.promote:
        return decision
    expected = None if compared_with is None else compared_with[t.VERSION]
    if promote(spark, warehouse, record.model_name, record.version, decision.reason, expected_champion=expected):
        return decision
    now = champion(spark, warehouse, record.model_name)
    refused = PromotionDecision(False, (
        f"passed the gate against {'no champion' if expected is None else f'version {expected}'}, but "
        f"{'no champion' if now is None else f'version {now[t.VERSION]}'} is the champion since (another run): "
        f"not promoted; {LOST_RACE}"
    ))
    upsert(spark, warehouse, replace(record, reason=refused.reason))
    return refused
