"""The simulator's entry points: build the platform's tables, or build and write them to the warehouse."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from botwatch import schemas
from botwatch import tables as t
from botwatch.delta_io import commit_metadata, read_table, table_exists, write_table
from botwatch.simulate import attributes
from botwatch.simulate.accounts import accounts_table, profile, truth_table
from botwatch.simulate.events import events_table
from botwatch.simulate.graph import edges_table
from botwatch.simulate.labels import labels_table
from botwatch.simulate.plan import SimulationParamsError, make_plan
from botwatch.tables import table_path

TABLE_SCHEMAS: dict[str, T.StructType] = {
    t.ACCOUNTS: schemas.ACCOUNTS_SCHEMA,
    t.EVENTS: schemas.EVENTS_SCHEMA,
    t.EDGES: schemas.EDGES_SCHEMA,
    t.LABELS: schemas.LABELS_SCHEMA,
    t.TRUTH: schemas.TRUTH_SCHEMA,
}
PARTITION_BY = {t.EVENTS: (t.EVENT_DATE,)}
# Tables the nightly run derives from the inputs: a new platform under them would be mixed with them.
DERIVED_TABLES = (t.ACTIVITY_DAILY, t.FEATURES, t.MODEL_REGISTRY, t.SCORES, t.RUN_LOG)


class WarehouseInUseError(SimulationParamsError):
    """The warehouse holds runs on another platform: simulate into a new warehouse, or delete it first."""


def _platform_meta(seed: int, accounts: int, days: int, start_date: dt.date, params: dict[str, Any]) -> dict[str, str]:
    """What identifies a simulated platform (kept in the commit metadata of the tables it writes)."""
    from botwatch.nightly import section_fingerprint  # leaves out speed-only knobs (accounts_per_partition)

    # The conf's start_date is only the argument's default: the argument, recorded on its own, is what was used.
    knobs = {k: v for k, v in params.items() if k != "start_date"}
    return {"step": "simulate", "seed": str(seed), "accounts": str(accounts), "days": str(days),
            "start_date": start_date.isoformat(), "params": str(section_fingerprint("simulate", knobs))}


def _describe(meta: dict[str, str]) -> str:
    return (f"the platform simulated with seed {meta.get('seed')}, {meta.get('accounts')} accounts x "
            f"{meta.get('days')} days from {meta.get('start_date')}")


def refuse_other_platform(spark: SparkSession, warehouse: str, meta: dict[str, str]) -> None:
    """Raise :class:`WarehouseInUseError` when ``warehouse`` holds tables the nightly run derived
    from other inputs than the platform ``meta`` describes: its activity partials, features,
    models and run log would be reused for the new platform (a champion trained on D is "fresh",
    a finished date is skipped). The same platform again (a rerun of ``make demo``) is fine."""
    derived = [name for name in DERIVED_TABLES if table_exists(spark, warehouse, name)]
    if not derived:
        return
    previous = None
    if table_exists(spark, warehouse, t.TRUTH):
        from delta.tables import DeltaTable

        last = DeltaTable.forPath(spark, table_path(warehouse, t.TRUTH)).history(1).first()
        previous = json.loads(last["userMetadata"]) if last is not None and last["userMetadata"] else None
    # Tables written before the conf digest was kept: compare what they have.
    if previous is not None and all(meta.get(k) == v for k, v in previous.items()):
        return
    came_from = _describe(previous) if previous else "inputs that were not simulated (botwatch ingest?)"
    raise WarehouseInUseError(
        f"{warehouse} holds {', '.join(derived)} built from {came_from}; simulating {_describe(meta)}"
        f"{' with another simulate conf' if previous and _describe(previous) == _describe(meta) else ''} there "
        "would mix the two (the old platform's activity partials, models and finished dates reused). Simulate "
        f"into a new warehouse (--warehouse, or --set warehouse=...) or delete {warehouse} first.")


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Columns of ``schema``, in its order and with its types."""
    return df.select(*[df[f.name].cast(f.dataType).alias(f.name) for f in schema.fields])


def written_rows(spark: SparkSession, warehouse: str, table: str) -> int:
    """Rows written by the table's last commit (Delta's operation metrics; a count when absent)."""
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, table_path(warehouse, table)).history(1).collect()
    metrics = (last[0]["operationMetrics"] or {}) if last else {}
    if "numOutputRows" in metrics:
        return int(metrics["numOutputRows"])
    return read_table(spark, warehouse, table).count()


def check_params(*, accounts: int, days: int, seed: int, start_date: dt.date, params: dict[str, Any]) -> None:
    """Raise :class:`SimulationParamsError` when the arguments or ``params`` cannot make a platform."""
    make_plan(accounts, days, seed, start_date, params)


def simulate_platform(
    spark: SparkSession,
    *,
    accounts: int,
    days: int,
    seed: int,
    start_date: dt.date,
    params: dict[str, Any],
) -> dict[str, DataFrame]:
    """The synthetic platform's tables as lazy DataFrames: accounts, events, edges, labels, truth.

    ``params`` is the ``simulate`` section of the conf (``conf.section("simulate")``). The same
    arguments give the same tables, whatever the partitioning.

    >>> tables = simulate_platform(spark, accounts=1000, days=7, seed=1,
    ...                            start_date=dt.date(2026, 1, 5), params=conf.section("simulate"))  # doctest: +SKIP
    """
    plan = make_plan(accounts, days, seed, start_date, params)
    prof = profile(spark, plan)
    edges = edges_table(plan, prof)
    accounts_df = attributes.with_attributes(plan, prof, accounts_table(prof), edges)
    return {
        t.ACCOUNTS: conform(accounts_df, attributes.accounts_schema(plan, schemas.ACCOUNTS_SCHEMA)),
        t.EVENTS: conform(events_table(plan, prof), schemas.EVENTS_SCHEMA),
        t.EDGES: conform(edges, schemas.EDGES_SCHEMA),
        t.LABELS: conform(labels_table(plan, prof, edges), schemas.LABELS_SCHEMA),
        t.TRUTH: conform(truth_table(prof), schemas.TRUTH_SCHEMA),
    }


def write_platform(
    spark: SparkSession,
    warehouse: str,
    *,
    accounts: int,
    days: int,
    seed: int,
    start_date: dt.date,
    params: dict[str, Any],
) -> dict[str, int]:
    """Simulate and write every table to ``<warehouse>/<table>`` (full overwrite); return row counts.

    Rerunning with the same arguments rewrites the same tables. A warehouse whose nightly runs were
    on another platform is refused (:func:`refuse_other_platform`). ``labels`` are built from the
    ``edges`` just written rather than regenerating the graph.
    """
    plan = make_plan(accounts, days, seed, start_date, params)
    meta = _platform_meta(seed, accounts, days, start_date, params)
    refuse_other_platform(spark, warehouse, meta)
    # Every table starts from the profile: compute it once (generated code per query stays small too).
    prof = profile(spark, plan).persist(StorageLevel.MEMORY_AND_DISK)
    # Accounts come after the edges: their attributes depend on who follows whom.
    built = {
        t.TRUTH: truth_table(prof),
        t.EVENTS: events_table(plan, prof),
        t.EDGES: edges_table(plan, prof),
    }
    counts: dict[str, int] = {}
    with commit_metadata(spark, **meta):
        for table, df in built.items():
            write_table(conform(df, TABLE_SCHEMAS[table]), warehouse, table, partition_by=PARTITION_BY.get(table, ()))
            counts[table] = written_rows(spark, warehouse, table)
        edges = read_table(spark, warehouse, t.EDGES)
        accounts_df = attributes.with_attributes(plan, prof, accounts_table(prof), edges)
        schema = attributes.accounts_schema(plan, schemas.ACCOUNTS_SCHEMA)
        write_table(conform(accounts_df, schema), warehouse, t.ACCOUNTS)
        counts[t.ACCOUNTS] = written_rows(spark, warehouse, t.ACCOUNTS)
        labels = labels_table(plan, prof, read_table(spark, warehouse, t.EDGES))
        write_table(conform(labels, schemas.LABELS_SCHEMA), warehouse, t.LABELS)
        counts[t.LABELS] = written_rows(spark, warehouse, t.LABELS)
    prof.unpersist()
    return {table: counts[table] for table in (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.TRUTH)}
