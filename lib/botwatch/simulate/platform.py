"""The simulator's entry points: build the platform's tables, or build and write them to the warehouse."""
from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from botwatch import schemas
from botwatch import tables as t
from botwatch.delta_io import commit_metadata, read_table, write_table
from botwatch.simulate import attributes
from botwatch.simulate.accounts import accounts_table, profile, truth_table
from botwatch.simulate.events import events_table
from botwatch.simulate.graph import edges_table
from botwatch.simulate.labels import labels_table
from botwatch.simulate.plan import make_plan
from botwatch.tables import table_path

TABLE_SCHEMAS: dict[str, T.StructType] = {
    t.ACCOUNTS: schemas.ACCOUNTS_SCHEMA,
    t.EVENTS: schemas.EVENTS_SCHEMA,
    t.EDGES: schemas.EDGES_SCHEMA,
    t.LABELS: schemas.LABELS_SCHEMA,
    t.TRUTH: schemas.TRUTH_SCHEMA,
}
PARTITION_BY = {t.EVENTS: (t.EVENT_DATE,)}


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

    Rerunning with the same arguments rewrites the same tables. ``labels`` are built from the
    ``edges`` just written rather than regenerating the graph.
    """
    plan = make_plan(accounts, days, seed, start_date, params)
    # Every table starts from the profile: compute it once (generated code per query stays small too).
    prof = profile(spark, plan).persist(StorageLevel.MEMORY_AND_DISK)
    # Accounts come after the edges: their attributes depend on who follows whom.
    built = {
        t.TRUTH: truth_table(prof),
        t.EVENTS: events_table(plan, prof),
        t.EDGES: edges_table(plan, prof),
    }
    counts: dict[str, int] = {}
    meta = {"step": "simulate", "seed": str(seed), "accounts": str(accounts), "days": str(days),
            "start_date": start_date.isoformat()}
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
