"""Bring-your-own account attributes: a platform's own ``accounts`` columns become features, and so
do their distributions over each account's neighbours (as in Meta's DEC).

Attributes
    Every extra numeric or boolean column of ``accounts`` that ingest kept (``auto``) or the columns
    named in conf ``features.account_attributes`` (:func:`select_attributes`) is carried into
    ``features`` as ``attr_<name>`` (double; booleans 1/0; NaN and null both become null, so
    missing stays missing). Strings and other non-numeric columns, names of contract columns,
    unknown names and names that would collide after sanitising are skipped with a message, and so,
    under ``auto`` only, is a column whose name says it holds a label or the outcome of moderation
    (a word of it is ``label``, ``bot``, ``is_bot``, ``suspended``, ``banned`` ...: :data:`LEAKY_WORDS`):
    such a column is often written after the fact, so as a feature it would hand the model its
    answer. Listing it in ``features.account_attributes`` takes it anyway;
    all-null columns are kept (their features are null) with a message. Nothing here raises on a
    bad column: the messages are logged and returned in the features step's summary.

Neighbour distributions (:func:`neighbor_distributions`)
    For each value column ``x`` (the attributes plus a short list of activity features) and each
    direction ``d`` -- ``out`` (followees), ``in`` (followers), ``all`` (the undirected simple
    neighbourhood, a reciprocal pair counted once) -- of the follow graph as of D:

    ========================  =====================================================================
    ``nbr_<d>_mean_<x>``      mean over neighbours having a value (null if none has)
    ``nbr_<d>_std_<x>``       sample standard deviation (ddof 1; null with fewer than 2 values)
    ``nbr_<d>_median_<x>``    the median of the neighbours' values (see percentiles below)
    ``nbr_<d>_p10_<x>``       ... the 10th percentile
    ``nbr_<d>_p90_<x>``       ... the 90th percentile
    ``nbr_<d>_share_zero_<x>``  share of the neighbours whose value is 0 or missing (null without neighbours)
    ``nbr_<d>_count_<x>``     neighbours having a value (0 without neighbours)
    ========================  =====================================================================

    Names put the direction first so they never take the heavy model's form ``nbr_<feature>``
    (:func:`botwatch.models.sequences.neighbor_col`; ``nbr_count``): an aggregate here always
    reads ``nbr_{out,in,all}_{mean,std,median,p10,p90,share_zero,count}_...``.

Percentiles
    The p-th percentile is the smallest value v with at least ``p * n`` of the n present values
    <= v -- numpy's ``method="inverted_cdf"`` -- read from each account's neighbour values sorted
    in place (one ``collect_list`` per account, ``array_sort``, ``element_at``; integer ranks, so
    no float rounding). EXACT for every direction with at most ``percentile_sample`` neighbours
    (default 2,000). Above that, each direction keeps a hash sample of its own neighbours (each
    kept with probability ``percentile_sample / n_d``, n_d the direction's neighbour count: about
    ``k = percentile_sample`` values; a hub's few followees stay exact beside its sampled
    followers), and the percentile's rank among all n_d neighbours is off by a share of about ``sqrt(p (1 - p) / k)``
    (one standard deviation: 1.1 % at the median for k = 2,000; tested at four). A quantile
    sketch per attribute and direction (``percentile_approx``) was 24 summaries per account and
    almost all of the time; the sorted list is one buffer per account.

Hubs
    One row per (account, neighbour) pair is joined to the neighbour's values. A hub as the
    neighbour would put all its rows in one join task: those rows are salted
    (:func:`botwatch.features.graph._salted_lookup`). A hub as the account has all its rows in one
    aggregation task: the rows are repartitioned by account and sorted by (account, neighbour)
    before the ``groupBy``, so each account's floats are summed in one fixed order whatever join
    strategy AQE picked at run time (reruns would otherwise differ in the last bits). That task
    streams the hub's rows from a sort that spills and keeps one buffer per account (the
    percentile list holds at most about ``percentile_sample`` values): memory stays bounded, time
    grows with the hub's degree. At 1M accounts with a 500k-follower hub this was faster than the
    map-side partial aggregation it replaced (BENCHMARKS.md, "Attributes").

Neighbourhood overlap (:func:`neighbor_overlap`, undirected neighbourhood)
    ``nbr_all_overlap_shared``: neighbours that are also neighbours of at least one other account
    (undirected degree >= 2). ``nbr_all_overlap_max``: the largest number of neighbours the
    account shares with any one other account, and ``nbr_all_overlap_max_share`` that over its
    degree (bought-follower and botnet farms share audiences). Common neighbours are counted only
    through neighbours of degree <= ``overlap_degree_cap``: a popular account followed by
    everyone says nothing about a shared audience (like a stop word), and skipping it keeps the
    pair work at most ``cap * |E|`` rows (each unordered pair once) instead of ``sum(degree^2)``. Exact when every
    neighbour of the account and of its best match has degree <= cap.

Usage::

    sel = select_attributes(accounts.schema, "auto")
    attrs = attribute_features(accounts, sel)
    values = attrs.join(activity.select("account_id", "n_events_7d"), "account_id", "left")
    nbr = neighbor_distributions(edges, accounts, run_date, values, [*sel.features, "n_events_7d"])
    ovl = neighbor_overlap(edges, accounts, run_date, overlap_degree_cap=100)
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.features import graph
from botwatch.schemas import ACCOUNTS_SCHEMA, named_col, require_columns

log = logging.getLogger(__name__)

ATTR_PREFIX = "attr_"
AUTO = "auto"
DIRECTIONS = ("out", "in", "all")
PERCENTILES = (("p10", 10), ("median", 50), ("p90", 90))  # name, percent
AGGREGATES = ("mean", "std", "median", "p10", "p90", "share_zero", "count")
OVERLAP_SHARED = f"{t.NBR_PREFIX}all_overlap_shared"
OVERLAP_MAX = f"{t.NBR_PREFIX}all_overlap_max"
OVERLAP_MAX_SHARE = f"{t.NBR_PREFIX}all_overlap_max_share"
OVERLAP_COLUMNS = (OVERLAP_SHARED, OVERLAP_MAX, OVERLAP_MAX_SHARE)
DEFAULT_PERCENTILE_SAMPLE = 2_000
# Words of a column name (split at non-letters and camelCase; a plural's "s" dropped) that mark a
# label, a label source or a moderation outcome; ``auto`` leaves such a column out (a label as a
# feature leaks the answer into training).
LEAKY_WORDS = frozenset({
    "label", "labeled", "labelled", "bot", "isbot", "truth", "family",
    "suspended", "suspension", "banned", "ban", "removed", "takedown", "moderated", "moderation",
    "report", "reported", "appeal", "appealed", "investigator", "investigation", "verdict",
    "spam", "spammer", "fraud", "fraudulent", "fake", "flagged", "abuse", "abusive",
    "suspend", "restricted", "restriction", "actioned", "blocked", "deleted", "locked", "disabled",
    "terminated", "strike", "violation", "enforcement", "scam", "scammer", "unbanned", "unsuspended",
    # kinds of bot (botwatch's own families among them) and joined names not split above
    "botnet", "cyborg", "sybil", "sockpuppet", "troll", "spambot", "followbot", "socialbot",
})
# Joined names: ``isspam``, ``shadowbanned``, ``botscore``, ``botness`` are a leaky word with one of these.
_JOINED_PREFIXES = ("is", "was", "has", "shadow")
_JOINED_SUFFIXES = ("score", "prob", "probability", "likelihood", "risk", "ness", "flag", "count", "status")
PERCENTILE_SEED = 17  # seeds the hash that samples a hub's neighbours for its percentiles

# internal columns
_A, _B, _OUT, _IN = graph._A, graph._B, graph._OUT, graph._IN  # the columns of GraphContext.pairs
_DEG = "_deg"
_SAMPLE = "_sample"


class AttributeConfigError(ValueError):
    """``features.account_attributes`` is neither ``auto`` nor a list of column names."""


def nbr_col(direction: str, agg: str, name: str) -> str:
    """Name of a neighbour aggregate: ``nbr_col("out", "mean", "attr_x") == "nbr_out_mean_attr_x"``."""
    if direction not in DIRECTIONS or agg not in AGGREGATES:
        raise ValueError(f"direction must be one of {DIRECTIONS} and agg one of {AGGREGATES}; got {direction}, {agg}")
    return f"{t.NBR_PREFIX}{direction}_{agg}_{name}"


def nbr_columns(names: Sequence[str]) -> list[str]:
    """Every neighbour-aggregate column for value columns ``names``, in output order."""
    return [nbr_col(d, a, n) for n in names for d in DIRECTIONS for a in AGGREGATES]


@dataclass
class AttributeSelection:
    """Which ``accounts`` columns become features. ``columns``: source column -> ``attr_`` name;
    ``skipped``: column -> why; ``notes``: kept, but worth saying (all null, renamed)."""

    columns: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return list(self.columns.values())

    def summary(self) -> dict:
        """For the step summary: what was carried, what was skipped and why."""
        return {"attributes": self.features, "attributes_skipped": dict(self.skipped),
                "attributes_notes": list(self.notes)}


def _feature_name(column: str) -> str:
    # Delta (without column mapping) rejects spaces and ,;{}()= in names: keep [A-Za-z0-9_].
    return ATTR_PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", column)


def _singulars(words: set[str]) -> set[str]:
    return {w[:-1] for w in words if len(w) > 3 and w.endswith("s")}


def _name_words(column: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])|([A-Z])([A-Z][a-z])", r"\1\3 \2\4", column)  # isBot, BOTScore
    # Digits separate words too (bot7d, reports30d); the unsplit name's words catch BOTscore.
    words = {w for text in (spaced, column) for w in re.split(r"[^a-z]+", text.lower()) if w}
    # Plurals first, so a joined plural (botscores, fraudflags) loses its suffix below too.
    words |= _singulars(words)
    words |= {w[len(p):] for w in words for p in _JOINED_PREFIXES if w.startswith(p) and len(w) > len(p) + 2}
    words |= {w[:-len(x)] for w in words for x in _JOINED_SUFFIXES if w.endswith(x) and len(w) > len(x) + 2}
    return words | _singulars(words)  # and of what the joined parts left (botsflag -> bots -> bot)


def looks_like_a_label(column: str) -> bool:
    """A word of the name (``is_bot``, ``isBot``, ``label_source``, ``suspended_at``, ``user_reports`` ...)
    is in :data:`LEAKY_WORDS`."""
    return bool(_name_words(column) & LEAKY_WORDS)


def select_attributes(
    schema: T.StructType, requested: str | Sequence[str] | None = AUTO, reserved: Sequence[str] = ()
) -> AttributeSelection:
    """Validate the attribute columns of an ``accounts`` schema; never raises on a bad column.

    ``requested``: ``"auto"`` (or None) takes every column beyond the contract's
    (``schemas.ACCOUNTS_SCHEMA``) but those whose names look like a label (:func:`looks_like_a_label`);
    a list takes exactly those. ``reserved``: names of the other
    features, only to say when an attribute shares a name with one (it stays apart as ``attr_``).
    Raises :class:`AttributeConfigError` only when ``requested`` itself has the wrong shape.
    """
    contract = {f.name.lower() for f in ACCOUNTS_SCHEMA.fields}
    types = {f.name: f.dataType for f in schema.fields}
    auto = requested is None or requested == AUTO
    if auto:
        candidates = [f.name for f in schema.fields if f.name.lower() not in contract]
    elif isinstance(requested, (list, tuple)) and all(isinstance(c, str) for c in requested):
        candidates = list(dict.fromkeys(requested))
    else:
        raise AttributeConfigError(
            f"features.account_attributes must be 'auto' or a list of accounts column names, got {requested!r}"
        )
    reserved_lower = {r.lower() for r in reserved}
    sel = AttributeSelection()
    taken: set[str] = set()
    for name in candidates:
        dtype = types.get(name)
        if name.lower() in contract:
            sel.skipped[name] = (
                f"'{name}' is a contract column of accounts, not an extra attribute; botwatch's own "
                "features already cover it (account_age_days, verified_flag, profile_completeness, country)"
            )
        elif auto and looks_like_a_label(name):
            sel.skipped[name] = (
                f"'{name}' looks like a label or a moderation outcome (by its name), often written after "
                "the fact: as a feature it would hand the model its answer. If it is known before the run "
                "date, list it in features.account_attributes to use it"
            )
        elif dtype is None:
            sel.skipped[name] = (
                f"no column '{name}' in accounts (extra columns there: "
                f"{[c for c in types if c.lower() not in contract]}); fix features.account_attributes"
            )
        elif not isinstance(dtype, (T.NumericType, T.BooleanType, T.NullType)):
            sel.skipped[name] = (
                f"'{name}' is {dtype.simpleString()}, not numeric or boolean, so it cannot be a model "
                "feature; encode it as a number before ingest to use it"
            )
        elif _feature_name(name).lower() in taken:
            sel.skipped[name] = (
                f"'{name}' would be named {_feature_name(name)}, as another attribute already is; rename it"
            )
        else:
            feat = _feature_name(name)
            sel.columns[name] = feat
            taken.add(feat.lower())
            if feat != ATTR_PREFIX + name:
                sel.notes.append(f"'{name}' is carried as {feat} (only letters, digits and _ in feature names)")
            if name.lower() in reserved_lower:
                sel.notes.append(f"'{name}' has the name of a botwatch feature; kept apart as {feat}")
    for name, why in sel.skipped.items():
        log.warning("account attribute %r skipped: %s", name, why)
    for note in sel.notes:
        log.info("account attribute: %s", note)
    return sel


def attribute_values(value: Column) -> Column:
    """A numeric or boolean attribute as double, with NaN as null (missing is missing, never 0)."""
    x = value.cast("double")
    return F.when(~F.isnan(x), x)


def attribute_features(accounts: DataFrame, selection: AttributeSelection) -> DataFrame:
    """``account_id`` and one ``attr_<name>`` (double) per selected column; nulls stay null."""
    require_columns(accounts, (t.ACCOUNT_ID, *selection.columns), "account attributes")
    return accounts.select(
        F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID),
        *[attribute_values(named_col(src)).alias(feat) for src, feat in selection.columns.items()],
    )


def note_all_null(attrs: DataFrame, selection: AttributeSelection) -> AttributeSelection:
    """Add a note for each attribute that is null for every account (one scan of ``attrs``).

    Such a column is kept (a feature that comes and goes would change the features table's
    schema from night to night); its ``attr_`` value and aggregates are null, counts 0."""
    feats = selection.features
    if not feats:
        return selection
    row = attrs.agg(*[F.count(F.col(f)).alias(f) for f in feats]).first()
    for src, feat in selection.columns.items():
        if row is None or not row[feat]:
            msg = f"'{src}' is null for every account on this run: {feat} and its neighbour aggregates are null"
            selection.notes.append(msg)
            log.warning("account attribute: %s", msg)
    return selection


# ---------------------------------------------------------------- the graph, both directions at once


def _check(hub_degree_cap: int, salt_buckets: int, percentile_sample: int = DEFAULT_PERCENTILE_SAMPLE) -> None:
    if hub_degree_cap < 1 or salt_buckets < 1 or percentile_sample < 1:
        raise ValueError(
            f"hub_degree_cap ({hub_degree_cap}), salt_buckets ({salt_buckets}) and percentile_sample "
            f"({percentile_sample}) must be >= 1; fix features.graph / features.neighbors in the conf"
        )


def _direction_aggs(x: Column, mask: Column | None, direction: str, name: str) -> list[Column]:
    """Mergeable aggregates of ``x`` over the rows of one direction (``mask`` None: every row)."""
    xd = x if mask is None else F.when(mask, x)
    in_dir = F.lit(True) if mask is None else mask
    return [
        F.avg(xd).alias(nbr_col(direction, "mean", name)),
        F.stddev_samp(xd).alias(nbr_col(direction, "std", name)),
        F.sum(F.when(in_dir & (x.isNull() | (x == 0)), 1).otherwise(0)).alias(f"_zero_{direction}_{name}"),
        F.count(xd).alias(nbr_col(direction, "count", name)),
    ]


def _sorted_values(direction: str, name: str) -> Column:
    """The present values of ``name`` over the sampled neighbours of one direction, ascending."""
    def pick(s: Column) -> Column:
        return F.when(s[_keep(direction)], s[name])

    return F.array_sort(F.filter(F.transform(F.col(_SAMPLE), pick), lambda v: v.isNotNull()))


def _keep(direction: str) -> str:
    return f"_keep_{direction}"


def percentile_of_sorted(values: Column, percent: int) -> Column:
    """numpy's ``inverted_cdf`` percentile of an ascending array without nulls: the element at
    1-based rank ceil(percent * n / 100), computed in integers; null for an empty array."""
    n = F.size(values)
    rank = F.greatest(((n * percent + 99) / 100).cast("long"), F.lit(1))  # (n*P + 99) div 100 = ceil(n*P/100)
    return F.when(n > 0, F.element_at(values, rank.cast("int")))


def neighbor_distributions(
    edges: DataFrame | None,
    accounts: DataFrame,
    run_date: dt.date | str,
    values: DataFrame,
    columns: Sequence[str],
    *,
    hub_degree_cap: int = 1000,
    salt_buckets: int = 32,
    percentile_sample: int = DEFAULT_PERCENTILE_SAMPLE,
    context: graph.GraphContext | None = None,
) -> DataFrame:
    """One row per account of ``accounts``: ``account_id`` and :func:`nbr_columns` (``columns``)
    -- the distribution of each of ``values``' ``columns`` over the account's followees, followers
    and undirected neighbours as of ``run_date`` (see the module docstring for the definitions,
    the percentiles' sampling above ``percentile_sample`` neighbours and the hub handling).
    ``values``: one row per account; a neighbour absent from it has every value missing. Accounts
    without neighbours get null statistics and counts of 0. ``context``: the graph as of D already
    built (:func:`graph.graph_context`); ``edges`` is then not read."""
    _check(hub_degree_cap, salt_buckets, percentile_sample)
    columns = list(dict.fromkeys(columns))
    require_columns(accounts, (t.ACCOUNT_ID,), "neighbour distributions (accounts)")
    require_columns(values, (t.ACCOUNT_ID, *columns), "neighbour distributions (values)")
    vals = values.select(
        F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID),
        *[attribute_values(named_col(c)).alias(c) for c in columns],
    )
    ctx = graph.resolve_context(context, edges, run_date, hub_degree_cap)
    pairs, hub_ids = ctx.pairs, ctx.hub_ids
    counts = {"out": "_deg_out", "in": "_deg_in", "all": _DEG}
    deg = ctx.degrees.select(t.ACCOUNT_ID, F.col(graph.DEGREE).alias(_DEG),
                             F.col(graph.OUT_DEGREE).alias(counts["out"]), F.col(graph.IN_DEGREE).alias(counts["in"]))
    rows = graph._salted_lookup(pairs, _B, vals, hub_ids, salt_buckets, spread=(_A, _B))
    # Accounts with more than percentile_sample neighbours keep each neighbour for a direction's
    # percentiles with probability sample / (its neighbours in that direction): a hash of the pair, so
    # reruns keep the same sample. Such accounts are few: their counts are broadcast.
    in_direction = {"out": F.col(_OUT), "in": F.col(_IN), "all": F.lit(True)}
    big = F.broadcast(
        deg.where(F.col(_DEG) > percentile_sample).select(F.col(t.ACCOUNT_ID).alias(_A), *counts.values())
    )
    uniform = F.pmod(F.xxhash64(F.lit(PERCENTILE_SEED), F.col(_A), F.col(_B)), F.lit(1 << 53)) / float(1 << 53)
    keeps = {
        # try_divide: a direction without neighbours has a count of 0 (ANSI mode raises on / 0).
        d: in_direction[d] & (F.col(_DEG).isNull()
                              | (uniform < F.try_divide(F.lit(float(percentile_sample)), F.col(counts[d]))))
        for d in DIRECTIONS
    }
    masks: dict[str, Column | None] = {"out": F.col(_OUT), "in": F.col(_IN), "all": None}
    rows = rows.join(big, _A, "left")
    keep = keeps["out"] | keeps["in"] | keeps["all"]
    aggs = [F.sum(F.col(_OUT).cast("int")).alias("_n_out"), F.sum(F.col(_IN).cast("int")).alias("_n_in"),
            F.count(F.lit(1)).alias("_n_all"),
            F.collect_list(F.when(keep, F.struct(*[keeps[d].alias(_keep(d)) for d in DIRECTIONS],
                                                 *[named_col(c) for c in columns]))).alias(_SAMPLE)]
    for c in columns:
        for d in DIRECTIONS:
            aggs += _direction_aggs(named_col(c), masks[d], d, c)
    # Floats summed in one fixed order: rows by (account, neighbour) within their account's partition,
    # whatever join strategy brought them (AQE picks it at run time).
    rows = rows.repartition(F.col(_A)).sortWithinPartitions(_A, _B)
    stats = rows.groupBy(F.col(_A).alias(t.ACCOUNT_ID)).agg(*aggs)
    # Sort each direction's values once (its own projection), then read the three ranks from it.
    stats = stats.select("*", *[_sorted_values(d, c).alias(f"_sorted_{d}_{c}") for c in columns for d in DIRECTIONS])

    out = accounts.select(F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID)).join(stats, t.ACCOUNT_ID, "left")
    cols = [F.col(t.ACCOUNT_ID)]
    for c in columns:
        for d in DIRECTIONS:
            n = F.col(f"_n_{d}")
            ordered = F.col(f"_sorted_{d}_{c}")
            by_name = {
                "mean": F.col(nbr_col(d, "mean", c)).cast("double"),
                "std": F.col(nbr_col(d, "std", c)).cast("double"),
                **{name: percentile_of_sorted(ordered, pc).cast("double") for name, pc in PERCENTILES},
                "share_zero": F.when(n > 0, F.col(f"_zero_{d}_{c}") / n).cast("double"),
                "count": F.coalesce(F.col(nbr_col(d, "count", c)), F.lit(0)).cast("long"),
            }
            cols += [by_name[a].alias(nbr_col(d, a, c)) for a in AGGREGATES]
    return out.select(*cols)


def neighbor_overlap(
    edges: DataFrame | None,
    accounts: DataFrame,
    run_date: dt.date | str,
    *,
    overlap_degree_cap: int = 50,
    hub_degree_cap: int = 1000,
    salt_buckets: int = 32,
    context: graph.GraphContext | None = None,
) -> DataFrame:
    """One row per account of ``accounts``: ``account_id``, ``nbr_all_overlap_shared`` (long),
    ``nbr_all_overlap_max`` (long) and ``nbr_all_overlap_max_share`` (double) over the undirected
    neighbourhood as of ``run_date`` (definitions and the degree cap: module docstring).
    Accounts without neighbours get 0, 0 and null. ``context``: as in :func:`neighbor_distributions`."""
    _check(hub_degree_cap, salt_buckets)
    if overlap_degree_cap < 2:
        raise ValueError(f"overlap_degree_cap must be >= 2, got {overlap_degree_cap}; fix features.neighbors")
    ctx = graph.resolve_context(context, edges, run_date, hub_degree_cap)
    pairs, hub_ids = ctx.half_edges, ctx.hub_ids
    nbr_deg = ctx.degrees.select(F.col(t.ACCOUNT_ID), F.col(graph.DEGREE).alias("_deg_b"))
    with_deg = graph._salted_lookup(pairs, _B, nbr_deg, hub_ids, salt_buckets)
    shared = with_deg.groupBy(F.col(_A).alias(t.ACCOUNT_ID)).agg(
        F.count(F.lit(1)).alias(_DEG), F.sum((F.col("_deg_b") >= 2).cast("long")).alias(OVERLAP_SHARED)
    )
    # Two-paths a - b - c through neighbours b of degree <= cap: a self-join keyed by b, at most
    # cap^2 rows per b, so no task holds more than that for one key.
    # Each unordered pair once (a < c), then credited to both ends: half the two-path rows.
    low = with_deg.where(F.col("_deg_b") <= overlap_degree_cap).select(_B, _A)
    paths = low.join(low.select(_B, F.col(_A).alias("_c")), _B).where(F.col(_A) < F.col("_c"))
    common = paths.groupBy(_A, "_c").agg(F.count(F.lit(1)).alias("_common"))  # keyed by the pair: no skew
    both = common.select(F.col(_A).alias(t.ACCOUNT_ID), "_common").unionByName(
        common.select(F.col("_c").alias(t.ACCOUNT_ID), "_common"))
    best = both.groupBy(t.ACCOUNT_ID).agg(F.max("_common").alias(OVERLAP_MAX))
    deg_col = F.col(_DEG)
    return (
        accounts.select(F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID))
        .join(shared, t.ACCOUNT_ID, "left")
        .join(best, t.ACCOUNT_ID, "left")
        .select(
            t.ACCOUNT_ID,
            F.coalesce(F.col(OVERLAP_SHARED), F.lit(0)).cast("long").alias(OVERLAP_SHARED),
            F.coalesce(F.col(OVERLAP_MAX), F.lit(0)).cast("long").alias(OVERLAP_MAX),
            F.when(deg_col > 0, F.coalesce(F.col(OVERLAP_MAX), F.lit(0)) / deg_col).cast("double")
            .alias(OVERLAP_MAX_SHARE),
        )
    )


# ---------------------------------------------------------------- the features step's part


def run_attribute_features(
    edges: DataFrame | None,
    accounts: DataFrame,
    activity: DataFrame | None,
    run_date: dt.date | str,
    params: dict,
    *,
    reserved: Sequence[str] = (),
    context: graph.GraphContext | None = None,
) -> tuple[DataFrame | None, dict]:
    """The attribute and neighbour features of one features run, from conf's ``features`` section.

    Returns (one row per account of ``accounts`` with ``attr_*`` and -- when
    ``neighbor_aggregates`` is on -- ``nbr_<dir>_<agg>_*`` and ``nbr_all_overlap_*``, or None when
    there is nothing to add; the step summary's part: attributes carried, skipped with why, notes).
    ``context``: the graph as of D shared with the graph features (:func:`graph.graph_context`).
    """
    nbr_params = params.get("neighbors", {}) or {}
    graph_params = params.get("graph", {}) or {}
    requested = params.get("account_attributes", AUTO)
    sel = select_attributes(accounts.schema, requested, reserved)
    attrs = attribute_features(accounts, sel)
    note_all_null(attrs, sel)
    summary = sel.summary()
    if not params.get("neighbor_aggregates", False):
        return (attrs if sel.columns else None), summary

    wanted = list(nbr_params.get("activity_columns", []) or [])
    have = set(activity.columns) if activity is not None else set()
    act_cols = [c for c in wanted if c in have]
    missing = [c for c in wanted if c not in have]
    if missing:
        msg = f"features.neighbors.activity_columns {missing} are not activity features; left out"
        summary["attributes_notes"].append(msg)
        log.warning(msg)
    values = attrs
    if act_cols and activity is not None:
        act = activity.select(F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID), *act_cols)
        # An account without an activity row (no events in any window) lacks every flag, as in the graph
        # features' followee means: False, not missing.
        flags = {f.name: F.coalesce(F.col(f.name), F.lit(False))
                 for f in act.schema.fields if isinstance(f.dataType, T.BooleanType)}
        values = attrs.join(act, t.ACCOUNT_ID, "left").withColumns(flags)
    hub_cap = int(graph_params.get("hub_degree_cap", 1000))
    buckets = int(graph_params.get("salt_buckets", 32))
    out = attrs
    value_cols = [*sel.features, *act_cols]
    if value_cols:
        dist = neighbor_distributions(
            edges, accounts, run_date, values, value_cols, hub_degree_cap=hub_cap, salt_buckets=buckets,
            percentile_sample=int(nbr_params.get("percentile_sample", DEFAULT_PERCENTILE_SAMPLE)), context=context,
        )
        out = out.join(dist, t.ACCOUNT_ID, "left")
    if nbr_params.get("overlap", True):
        ovl = neighbor_overlap(
            edges, accounts, run_date, overlap_degree_cap=int(nbr_params.get("overlap_degree_cap", 50)),
            hub_degree_cap=hub_cap, salt_buckets=buckets, context=context,
        )
        out = out.join(ovl, t.ACCOUNT_ID, "left")
    summary["neighbor_columns"] = len(out.columns) - 1 - len(sel.features)
    return out, summary
