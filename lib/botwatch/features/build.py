"""The nightly features step: ``activity_daily`` for the days the windows need, then one
``features`` partition for run date D (one row per account that exists on D).

Activity windows come from daily partials (only days missing from ``activity_daily`` are built,
so the steady state reads one new day of events); graph features from the edges as of D;
metadata from ``accounts``. Missing data stays null with availability flags, never a silent 0.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.delta_io import Materialize, commit_metadata, read_table, scratch_frames, table_exists, write_table
from botwatch.features import activity, attributes, graph
from botwatch.spark import require_utc

log = logging.getLogger(__name__)

METADATA_COLUMNS = ("account_age_days", "verified_flag", t.PROFILE_COMPLETENESS, "is_new_account")


def accounts_as_of(accounts: DataFrame, run_date: dt.date) -> DataFrame:
    """Accounts that exist on ``run_date`` (created before the end of that day; unknown creation kept)."""
    end = F.lit(run_date + dt.timedelta(days=1)).cast("timestamp")
    return accounts.where(F.col(t.CREATED_AT).isNull() | (F.col(t.CREATED_AT) < end))


def account_age_days(created_at: Column, run_date: dt.date) -> Column:
    return F.datediff(F.lit(run_date), F.to_date(created_at)).cast("double")


def metadata_features(accounts: DataFrame, run_date: dt.date, new_account_days: int) -> DataFrame:
    age = account_age_days(F.col(t.CREATED_AT), run_date)
    return accounts.select(
        t.ACCOUNT_ID,
        t.COUNTRY,
        age.alias("account_age_days"),
        F.col(t.VERIFIED).cast("double").alias("verified_flag"),
        # NaN (e.g. "NaN" in a CSV) is missing, as in the attr_ columns: null, not a number.
        attributes.attribute_values(F.col(t.PROFILE_COMPLETENESS)).alias(t.PROFILE_COMPLETENESS),
        F.when(age.isNull(), None).otherwise(age < new_account_days).alias("is_new_account"),
    )


def assemble_features(
    metadata: DataFrame, activity_features: DataFrame, graph_features: DataFrame, windows: Sequence[int]
) -> DataFrame:
    """Left-join everything onto the account list; absent activity means has_activity_{w} = false."""
    out = metadata.join(activity_features, t.ACCOUNT_ID, "left").join(graph_features, t.ACCOUNT_ID, "left")
    for w in windows:
        flag = f"has_activity_{w}d"
        out = out.withColumn(flag, F.coalesce(F.col(flag), F.lit(False)))
    return out.withColumn("has_graph", F.coalesce(F.col("has_graph"), F.lit(False)))


def window_days(run_date: dt.date, windows: Sequence[int]) -> list[dt.date]:
    return [run_date - dt.timedelta(days=i) for i in range(max(windows))]


def partial_days_to_build(
    spark: SparkSession, warehouse: str, run_date: dt.date, windows: Sequence[int],
    validated: tuple[dt.date, int] | None = None,
) -> list[dt.date]:
    """The window's days whose ``activity_daily`` partial is missing or stale: D unless the activity
    step already built it (the nightly run does, and reruns it when D's events change), any earlier
    day that has events but no partial (a first run, or a gap), and any day whose number of events
    differs from the one its partial was built from (``source_events``: late events for a built day,
    a corrected export, a new simulated platform). A partial built before ``source_events`` was kept
    is trusted; a correction that keeps a day's row count is not seen (rerun that date).

    Two small Spark jobs: the partials' (day, source_events) pairs, and a count of the window's
    events per day (:func:`activity.events_per_day`: Parquet footers, not rows). ``validated``: see
    :func:`activity.events_table`."""
    days = window_days(run_date, windows)
    first, last = min(days), max(days)
    built: dict[dt.date, int | None] = {}
    if table_exists(spark, warehouse, t.ACTIVITY_DAILY):
        daily = read_table(spark, warehouse, t.ACTIVITY_DAILY).where(F.col(t.DAY).between(F.lit(first), F.lit(last)))
        recorded = F.col(t.SOURCE_EVENTS) if t.SOURCE_EVENTS in daily.columns else F.lit(None).cast("long")
        built = {r[0]: r[1] for r in daily.select(t.DAY, recorded).distinct().collect()}
    missing = [d for d in days if d not in built]
    if not any(n is not None for n in built.values()) and set(missing) <= {run_date}:
        return sorted(missing)  # nothing recorded to compare with, and nothing else to find
    if not table_exists(spark, warehouse, t.EVENTS):
        return sorted(d for d in missing if d == run_date)
    now = activity.events_per_day(activity.events_table(spark, warehouse, validated), first, last)
    stale = [d for d, n in built.items() if n is not None and now.get(d, 0) != n]
    return sorted({d for d in missing if d == run_date or now.get(d, 0) > 0} | set(stale))


def build_partials(spark: SparkSession, warehouse: str, run_date: dt.date, windows: Sequence[int],
                   validated: tuple[dt.date, int] | None = None) -> list[dt.date]:
    """Build the window's missing or stale ``activity_daily`` partials (:func:`partial_days_to_build`),
    each run of consecutive days in one job (a first run builds the whole window at once); returns the days."""
    days = partial_days_to_build(spark, warehouse, run_date, windows, validated)
    if days:
        start = prev = days[0]
        for day in [*days[1:], None]:
            if day is None or (day - prev).days > 1:
                activity.build_activity_daily(spark, warehouse, start, prev, validated=validated)
                start = day or start
            prev = day or prev
    return days


class HubSettings(TypedDict):
    hub_degree_cap: int
    hub_sample_pairs: int
    salt_buckets: int


def hub_settings(graph_params: Mapping[str, Any]) -> HubSettings:
    """The hub settings of the graph step from the conf's ``features.graph`` (defaults as in base.yaml),
    as keyword arguments of :func:`graph.graph_features` and :func:`graph.triangle_counts`."""
    return HubSettings(
        hub_degree_cap=graph_params.get("hub_degree_cap", 1000),
        hub_sample_pairs=graph_params.get("hub_sample_pairs", 2000),
        salt_buckets=graph_params.get("salt_buckets", 32),
    )


def neighbour_activity(activity_feats: DataFrame, graph_params: Mapping[str, Any]) -> DataFrame | None:
    """The activity columns the graph step averages over neighbours (``features.graph.neighbor_activity_columns``
    that exist), with ``account_id``; None when there are none. A flag (``has_activity_7d``) stays
    boolean: :func:`graph.graph_features` averages it as the share of all neighbours that have it."""
    wanted = list(graph_params.get("neighbor_activity_columns", []))
    cols = [c for c in wanted if c in activity_feats.columns]
    for c in wanted:
        if c not in cols:
            # A typo, or a window no longer computed: the followee_/follower_mean_ columns would just vanish.
            log.warning("features.graph.neighbor_activity_columns: %r is not an activity feature of this run (a typo, "
                        "or a window features.windows no longer has); its neighbour means are skipped", c)
    return activity_feats.select(t.ACCOUNT_ID, *cols) if cols else None


def labels_kept(labels: DataFrame, dropped_sources: Sequence[str]) -> DataFrame:
    """``labels`` without the rows of ``dropped_sources``."""
    return labels.where(~F.col(t.SOURCE).isin(*dropped_sources)) if dropped_sources else labels


def build_features(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: dict, report: dict | None = None,
    dropped_label_sources: Sequence[str] = (), validated: tuple[dt.date, int] | None = None,
) -> int:
    """The features step for ``run_date``: ``activity_daily`` partitions as needed, then the
    ``features`` partition ``run_date`` (replaced whole: rerunning D never duplicates).

    ``params`` is conf's ``features`` section. Returns the number of accounts written; ``report``
    (when given) receives the account attributes carried and skipped (for the step summary).
    ``dropped_label_sources``: label sources training leaves out (weight 0), left out of
    ``bot_neighbor_share`` too. ``validated``: (D, the version of ``events`` whose rows of D validate checked)
    to read D's events as of it (:func:`activity.events_table`); None: the latest.
    """
    require_utc(spark)
    wanted = params.get("windows", activity.DEFAULT_WINDOWS)
    activity.check_windows(wanted)  # before anything is written
    windows = tuple(wanted)
    built = build_partials(spark, warehouse, run_date, windows, validated)
    if report is not None and built and built != [run_date]:
        report["activity_partials_built"] = [d.isoformat() for d in built]

    # The activity features and the graph as of D feed several parts of the plan: each is computed
    # once into scratch files (deleted after the step), so every part's plan starts at a scan.
    with scratch_frames(spark, warehouse, f"features-{run_date.isoformat()}") as materialize:
        return _write_features(spark, warehouse, run_date, params, windows, materialize, report,
                               dropped_label_sources)


def _write_features(
    spark: SparkSession, warehouse: str, run_date: dt.date, params: dict, windows: Sequence[int],
    materialize: Materialize, report: dict | None, dropped_label_sources: Sequence[str] = (),
) -> int:
    graph_params = params.get("graph", {}) or {}
    hubs = hub_settings(graph_params)
    accounts = accounts_as_of(read_table(spark, warehouse, t.ACCOUNTS), run_date)
    act = materialize("activity", activity.activity_features(spark, warehouse, run_date, windows))
    labels = (labels_kept(read_table(spark, warehouse, t.LABELS), dropped_label_sources)
              if table_exists(spark, warehouse, t.LABELS) else None)
    context = graph.graph_context(
        read_table(spark, warehouse, t.EDGES), run_date, hubs["hub_degree_cap"], materialize=materialize
    )
    nbr_activity = neighbour_activity(act, graph_params)
    graph_feats = graph.graph_features(
        None,
        accounts,
        run_date,
        activity=nbr_activity,
        # Named, so a listed column that is not numeric stops the step instead of vanishing.
        activity_columns=[c for c in nbr_activity.columns if c != t.ACCOUNT_ID] if nbr_activity is not None else None,
        labels=labels,
        growth_days=graph_params.get("growth_days", 7),
        seed=graph_params.get("hub_seed", 0),
        context=context,
        **hubs,
    )
    meta = metadata_features(accounts, run_date, params.get("new_account_days", 30))
    out = assemble_features(meta, act, graph_feats, windows)
    # Users' own account columns (attr_*) and their neighbour distributions (nbr_<dir>_<agg>_*).
    extra, summary = attributes.run_attribute_features(
        None, accounts, act, run_date, params, reserved=out.columns, context=context
    )
    if extra is not None:
        out = out.join(extra, t.ACCOUNT_ID, "left")
    if report is not None:
        report.update(summary)
    out = out.withColumn(t.RUN_DATE, F.lit(run_date))
    out = out.select(t.ACCOUNT_ID, t.RUN_DATE, *[c for c in out.columns if c not in (t.ACCOUNT_ID, t.RUN_DATE)])
    out = out.cache()
    n = out.count()
    with commit_metadata(spark, step="features", run_date=run_date.isoformat()):
        write_table(
            out, warehouse, t.FEATURES, partition_by=[t.RUN_DATE],
            replace_where=f"{t.RUN_DATE} = '{run_date.isoformat()}'", merge_schema=True,
        )
    out.unpersist()
    return n
