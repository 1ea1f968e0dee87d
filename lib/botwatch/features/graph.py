"""Graph features of the follow graph as of a run date: degrees, reciprocity, follow growth,
triangles and the local clustering coefficient, neighbour aggregates (as in Meta's DEC), and
``bot_neighbor_share`` from point-in-time labels.

Everything is plain Spark DataFrame work (joins, ``groupBy``, window functions): these are the
operations GraphFrames runs for ``degrees``/``inDegrees`` and ``aggregateMessages`` (its jar is
not available here, and nothing below needs it). GraphFrames' built-in ``triangleCount`` is
avoided on purpose: it materialises every neighbour pair of every vertex and runs for hours or
fails on power-law graphs with high-degree vertices (graphframes issues #376, #407, #540).

Triangles use a degree-ordered method instead:

1. make the graph undirected and simple (:func:`undirected_simple`);
2. rank vertices by ``(degree, id)`` and orient each edge from its lower- to its higher-ranked end;
3. at every vertex w of degree <= ``hub_degree_cap`` the wedges (x, y) of its oriented out-list
   (x ranked below y) are closed with a join on the oriented edge set: each out-edge (w, x) is
   joined to x's own out-list and the wedge closes when y is in it (``array_intersect``). Each
   triangle is found exactly once, at its lowest-ranked vertex, and the shuffles carry only ids
   (out-lists hold only higher-ranked vertices, so even a hub's is short). A triangle with a
   vertex of degree <= cap has a low-degree lowest-ranked vertex, so counts are EXACT for every
   vertex of degree <= cap;
4. for hubs (degree ``d`` > cap) an estimate: ``k`` = ``hub_sample_pairs`` neighbour pairs drawn
   uniformly with replacement (hash-based, seeded, deterministic), closure checked by join,
   ``T_hat = C(d,2) * closed / k``. ``closed ~ Binomial(k, p)`` with ``p = T / C(d,2)``, so the
   estimate is unbiased with standard error ``C(d,2) * sqrt(p (1 - p) / k)``; e.g. d = 100,000,
   k = 2,000 and p = 0.01 gives a relative error of sqrt((1-p)/(p k)) = 22%. A hub whose
   ``C(d,2) <= k`` gets all its pairs instead (exact, not flagged as estimated). Nothing per hub
   grows with ``C(d,2)``: a hub costs ``O(d + k)`` rows.

Hubs never put their whole neighbourhood in one join task: joins keyed by a vertex salt the hubs'
keys (see :func:`_salted_lookup`), and counts use Spark's map-side partial aggregation. The
neighbour means are the exception on purpose: their rows are repartitioned by account and sorted
by neighbour before the ``avg``, so the floats are summed in one fixed order whatever join
strategy AQE picked at run time (reruns would otherwise differ in the last bits). A hub's rows
then meet in one aggregation task, streamed from a sort that spills: time linear in its degree,
one buffer of memory.

The graph as of D (directed simple edges, undirected pairs with their directions, degrees, hub
ids) is a :class:`GraphContext`, built once per features run by :func:`graph_context` and shared
with the neighbour features of :mod:`botwatch.features.attributes`. The features step writes its
frames to scratch files and reads them back: otherwise every consumer carries (and Spark plans,
optimises and ships) its own copy of the lineage down to the edges scan, 138 scans of ``edges``
in one step's plan before this.

Usage::

    feats = graph_features(edges, accounts, datetime.date(2024, 5, 1), activity=act, labels=labels)
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.labels import winning_labels
from botwatch.schemas import SchemaMismatchError, require_columns

# ---- output columns ----
U, V = "u", "v"
DEGREE = "degree"
TRIANGLES = "triangles"
TRIANGLES_ESTIMATED = "triangles_estimated"
TRIANGLES_STDERR = "triangles_stderr"
IN_DEGREE = "in_degree"
OUT_DEGREE = "out_degree"
UNDIRECTED_DEGREE = "undirected_degree"
RECIPROCITY = "reciprocity"
CLUSTERING_COEF = "clustering_coef"
BOT_NEIGHBOR_SHARE = "bot_neighbor_share"
HAS_GRAPH = "has_graph"
FOLLOWEE_MEAN = "followee_mean_"
FOLLOWER_MEAN = "follower_mean_"


def follow_growth_column(days: int) -> str:
    return f"follow_growth_{days}d"


# ---- internal column names ----
_A, _B = "_a", "_b"  # half-edge: vertex, neighbour
_OUT, _IN = "_out", "_in"  # a follows b, b follows a
_RECIP = "_recip"
_HUB = "_is_hub"
_SALT = "_salt"


def _as_date(run_date: dt.date | str) -> Column:
    return F.lit(str(run_date)).cast("date")


def _day_start(run_date: dt.date | str, plus_days: int = 0) -> Column:
    """Midnight (session time zone, UTC in botwatch) of ``run_date + plus_days``."""
    return F.date_add(_as_date(run_date), plus_days).cast("timestamp")


def edges_as_of(edges: DataFrame, run_date: dt.date | str) -> DataFrame:
    """Follows that exist at the end of ``run_date``: ``created_at`` before the next midnight;
    a null ``created_at`` is an edge older than the data, kept."""
    require_columns(edges, (t.SRC, t.DST, t.CREATED_AT), "graph edges")
    created = F.col(t.CREATED_AT)
    return edges.where(created.isNull() | (created < _day_start(run_date, 1)))


def undirected_simple(edges: DataFrame) -> DataFrame:
    """The undirected simple graph: one row ``(u, v)`` with ``u < v`` per connected pair
    (direction, duplicates, self-loops and null ends dropped)."""
    require_columns(edges, (t.SRC, t.DST), "undirected_simple")
    src, dst = F.col(t.SRC).cast("long"), F.col(t.DST).cast("long")
    # coalesce() only tells the optimizer that u and v are never null (true after the filter).
    # Otherwise it infers different IS NOT NULL filters in each consumer of this frame, the
    # plans below the shuffle differ, and Spark rescans the edges once per consumer instead
    # of reusing one shuffle.
    return (
        edges.where(src.isNotNull() & dst.isNotNull() & (src != dst))
        .select(
            F.coalesce(F.least(src, dst), F.lit(0).cast("long")).alias(U),
            F.coalesce(F.greatest(src, dst), F.lit(0).cast("long")).alias(V),
        )
        .distinct()
    )


def clustering_coef(triangles: Column, degree: Column) -> Column:
    """Local clustering coefficient 2T / (d (d - 1)); 0 when d < 2 (networkx's convention)."""
    d = degree.cast("double")
    return F.when(degree < 2, F.lit(0.0)).otherwise(2.0 * triangles.cast("double") / (d * (d - 1.0)))


def _half_edges(und: DataFrame) -> DataFrame:
    """Both directions of every undirected edge: ``(_a, _b)`` = (vertex, neighbour)."""
    return und.select(F.col(U).alias(_A), F.col(V).alias(_B)).unionByName(
        und.select(F.col(V).alias(_A), F.col(U).alias(_B))
    )


def _degrees(half: DataFrame) -> DataFrame:
    # groupBy combines map-side first (partial aggregation): a hub sends one partial count per
    # input partition through the shuffle, never one row per neighbour.
    return half.groupBy(F.col(_A).alias(t.ACCOUNT_ID)).agg(F.count(F.lit(1)).alias(DEGREE))


def _salted_lookup(
    df: DataFrame, key: str, vertices: DataFrame, hub_ids: DataFrame, buckets: int, how: str = "left",
    spread: Sequence[str] | None = None,
) -> DataFrame:
    """Join ``vertices`` (one row per ``account_id``) onto ``df`` by ``df[key]`` without hub skew.

    A plain shuffle join sends every row whose key is a hub to ONE task (a hub followed by
    millions means millions of rows there). Rows keyed by a hub get a salt from a hash of the
    row, spreading them over ``buckets`` tasks; each hub's vertex row is copied once per salt.
    The hub id set (degree > cap, at most 2|E|/cap ids) is small enough to broadcast.
    ``spread``: the columns hashed for the salt (default: all of ``df``'s).
    """
    hubs = F.broadcast(hub_ids.select(F.col(t.ACCOUNT_ID).alias(key), F.lit(True).alias(_HUB)))
    left = (
        df.join(hubs, key, "left")
        .withColumn(
            _SALT,
            F.when(F.col(_HUB), F.pmod(F.xxhash64(*[F.col(c) for c in (spread or df.columns)]), F.lit(buckets)))
            .otherwise(F.lit(0))
            .cast("int"),
        )
        .drop(_HUB)
    )
    right = (
        vertices.withColumnRenamed(t.ACCOUNT_ID, key)
        .join(hubs, key, "left")
        .withColumn(
            _SALT,
            F.explode(
                F.when(F.col(_HUB), F.sequence(F.lit(0), F.lit(buckets - 1))).otherwise(F.array(F.lit(0)))
            ),
        )
        .drop(_HUB)
    )
    return left.join(right, [key, _SALT], how).drop(_SALT)


def _check_knobs(hub_degree_cap: int, hub_sample_pairs: int, salt_buckets: int) -> None:
    if hub_degree_cap < 1 or hub_sample_pairs < 1 or salt_buckets < 1:
        raise ValueError(
            f"hub_degree_cap ({hub_degree_cap}), hub_sample_pairs ({hub_sample_pairs}) and salt_buckets "
            f"({salt_buckets}) must be >= 1; fix features.graph in the conf"
        )


def _triangles(
    und: DataFrame, half: DataFrame, deg: DataFrame, hub_ids: DataFrame,
    hub_degree_cap: int, hub_sample_pairs: int, seed: int, salt_buckets: int,
) -> DataFrame:
    """Triangle counts from prepared parts (see :func:`triangle_counts`)."""
    cap, k = hub_degree_cap, hub_sample_pairs

    # -- exact part: degree-ordered wedges at vertices of degree <= cap --
    du = deg.select(F.col(t.ACCOUNT_ID), F.col(DEGREE).alias("_du"))
    dv = deg.select(F.col(t.ACCOUNT_ID), F.col(DEGREE).alias("_dv"))
    ranked = _salted_lookup(_salted_lookup(und, U, du, hub_ids, salt_buckets), V, dv, hub_ids, salt_buckets)
    u_first = (F.col("_du") < F.col("_dv")) | ((F.col("_du") == F.col("_dv")) & (F.col(U) < F.col(V)))
    oriented = ranked.select(
        F.when(u_first, F.col(U)).otherwise(F.col(V)).alias("_w"),
        F.when(u_first, F.col(V)).otherwise(F.col(U)).alias("_x"),
        F.least("_du", "_dv").alias("_dw"),
        F.greatest("_du", "_dv").alias("_dx"),
    )
    # Oriented out-lists sorted by rank (degree, id). A vertex's out-list only holds higher-ranked
    # vertices, so even a hub's is short (at most sqrt(2|E|)): grouping by _w cannot skew.
    adj = oriented.groupBy("_w").agg(
        F.max("_dw").alias("_dw"),
        F.array_sort(F.collect_list(F.struct(F.col("_dx").alias("d"), F.col("_x").alias("id")))).alias("_out"),
    )
    # Wedges at w (degree <= cap) as one row per out-edge (w, x) carrying the out-neighbours of w
    # ranked after x; the wedge (x, y) closes when y is also in x's out-list. Each triangle is
    # found once, at its lowest-ranked vertex w with x its middle one.
    after_x = F.slice("_out", F.col("_p") + 2, F.size("_out") - F.col("_p") - 1)
    wedges = (
        adj.where(F.col("_dw") <= cap)
        .select("_w", "_out", F.posexplode("_out").alias("_p", "_xs"))
        .select("_w", F.col("_xs.id").alias("_x"), F.transform(after_x, lambda s: s["id"]).alias("_tail"))
        .where(F.size("_tail") > 0)
    )
    out_ids = adj.select(F.col("_w").alias(t.ACCOUNT_ID), F.transform("_out", lambda s: s["id"]).alias("_out_x"))
    common = F.array_intersect("_tail", "_out_x")
    closed = (
        _salted_lookup(wedges, "_x", out_ids, hub_ids, salt_buckets, how="inner", spread=("_w",))
        .select("_w", "_x", common.alias("_common"))
        .where(F.size("_common") > 0)
    )
    n = F.size("_common").cast("long")
    credit = F.concat(
        F.array(F.struct(F.col("_w").alias("id"), n.alias("n")), F.struct(F.col("_x").alias("id"), n.alias("n"))),
        F.transform("_common", lambda y: F.struct(y.alias("id"), F.lit(1).cast("long").alias("n"))),
    )
    credits = (
        closed.select(F.explode(credit).alias("_c"))
        .groupBy(F.col("_c.id").alias(t.ACCOUNT_ID))  # partial aggregation: hubs in many triangles stay cheap
        .agg(F.sum("_c.n").cast("double").alias("_t_exact"))
    )

    # -- hub part: positions 0..d-1 of each hub's neighbours, two-level so no task holds a whole hub --
    hub_deg = deg.join(F.broadcast(hub_ids), t.ACCOUNT_ID, "left_semi").select(
        F.col(t.ACCOUNT_ID).alias("_h"), F.col(DEGREE).alias("_d"),
        (F.col(DEGREE).cast("double") * (F.col(DEGREE) - 1) / 2.0).alias("_pairs"),
    )
    # Positions follow (hash, id) order; buckets are ranges of the hash, so the order, and the pairs
    # sampled by position, do not depend on salt_buckets (a speed knob).
    order = F.xxhash64(F.lit(seed), F.col(_A), F.col(_B))
    bucket = F.least(F.floor((order.cast("double") / 2.0**64 + 0.5) * salt_buckets), F.lit(salt_buckets - 1))
    nbrs = half.join(F.broadcast(hub_ids.select(F.col(t.ACCOUNT_ID).alias(_A))), _A, "left_semi").select(
        F.col(_A).alias("_h"), F.col(_B).alias("_x"), order.alias("_order"), bucket.cast("int").alias("_bucket"),
    )
    in_bucket = F.row_number().over(Window.partitionBy("_h", "_bucket").orderBy("_order", "_x")) - 1
    nbrs = nbrs.withColumn("_rn", in_bucket)
    bucket_sizes = nbrs.groupBy("_h", "_bucket").agg(F.count(F.lit(1)).alias("_n"))
    before = Window.partitionBy("_h").orderBy("_bucket").rowsBetween(Window.unboundedPreceding, -1)
    offsets = bucket_sizes.select("_h", "_bucket", F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_off"))
    positions = nbrs.join(offsets, ["_h", "_bucket"]).select("_h", (F.col("_off") + F.col("_rn")).alias("_pos"), "_x")

    # Hubs with C(d,2) <= k: every pair (exact). Others: k uniform pairs with replacement.
    every = (
        hub_deg.where(F.col("_pairs") <= k)
        .select("_h", "_d", F.explode(F.sequence(F.lit(0), F.col("_d") - 2)).alias("_i"))
        .select("_h", "_i", F.explode(F.sequence(F.col("_i") + 1, F.col("_d") - 1)).alias("_l"))
    )
    draws = hub_deg.where(F.col("_pairs") > k).select(
        "_h", "_d", F.explode(F.sequence(F.lit(0), F.lit(k - 1))).alias("_j")
    )
    first = F.pmod(F.xxhash64(F.lit(seed), F.col("_h"), F.col("_j"), F.lit(1)), F.col("_d").cast("long"))
    other = F.pmod(F.xxhash64(F.lit(seed), F.col("_h"), F.col("_j"), F.lit(2)), F.col("_d").cast("long") - 1)
    sampled = draws.select("_h", first.alias("_i"), other.alias("_o")).select(
        "_h", "_i", F.when(F.col("_o") >= F.col("_i"), F.col("_o") + 1).otherwise(F.col("_o")).alias("_l")
    )
    pairs = every.select("_h", F.col("_i").cast("long"), F.col("_l").cast("long")).unionByName(
        sampled.select("_h", F.col("_i").cast("long"), F.col("_l").cast("long"))
    )
    # Keys are (hub, position): spread over tasks however big the hub.
    pos_i = positions.select("_h", F.col("_pos").cast("long").alias("_i"), F.col("_x"))
    pos_l = positions.select("_h", F.col("_pos").cast("long").alias("_l"), F.col("_x").alias("_y"))
    checked = (
        pairs.join(pos_i, ["_h", "_i"]).join(pos_l, ["_h", "_l"])
        .select("_h", F.least("_x", "_y").alias(U), F.greatest("_x", "_y").alias(V))
        .join(und.withColumn("_closed", F.lit(1)), [U, V], "left")
    )
    estimates = (
        checked.groupBy("_h")
        .agg(F.count(F.lit(1)).alias("_k"), F.sum(F.coalesce("_closed", F.lit(0))).alias("_c"))
        .join(hub_deg, "_h")
        .select(
            F.col("_h").alias(t.ACCOUNT_ID),
            (F.col("_pairs") * F.col("_c") / F.col("_k")).alias("_t_hub"),
            (F.col("_pairs") > k).alias("_est"),
            F.when(
                F.col("_pairs") > k,
                F.col("_pairs")
                * F.sqrt((F.col("_c") / F.col("_k")) * (1.0 - F.col("_c") / F.col("_k")) / F.col("_k")),
            ).otherwise(F.lit(0.0)).alias("_se"),
        )
    )

    return (
        deg.join(credits, t.ACCOUNT_ID, "left")
        .join(estimates, t.ACCOUNT_ID, "left")
        .select(
            t.ACCOUNT_ID,
            F.when(F.col(DEGREE) > cap, F.col("_t_hub"))
            .otherwise(F.coalesce("_t_exact", F.lit(0.0)))
            .cast("double")
            .alias(TRIANGLES),
            F.col(DEGREE),
            F.coalesce(F.col("_est"), F.lit(False)).alias(TRIANGLES_ESTIMATED),
            F.coalesce(F.col("_se"), F.lit(0.0)).alias(TRIANGLES_STDERR),
        )
    )


def triangle_counts(
    edges: DataFrame, hub_degree_cap: int = 1000, hub_sample_pairs: int = 2000, seed: int = 0,
    salt_buckets: int = 32,
) -> DataFrame:
    """Triangles per vertex of the undirected simple graph of ``edges`` (``src``, ``dst``).

    Returns one row per vertex with an edge: ``account_id``, ``triangles`` (double),
    ``degree`` (undirected simple degree), ``triangles_estimated`` (true for hubs estimated from
    sampled pairs) and ``triangles_stderr`` (plug-in standard error ``C(d,2) sqrt(p(1-p)/k)``
    with ``p`` = closed/sampled; 0 where exact). Exact for every vertex of degree <= cap; see
    the module docstring for the method and the hub estimator. Filter ``edges`` to a date first
    (:func:`edges_as_of`); ``created_at`` is not read here.
    """
    _check_knobs(hub_degree_cap, hub_sample_pairs, salt_buckets)
    und = undirected_simple(edges)
    half = _half_edges(und)
    deg = _degrees(half)
    hub_ids = deg.where(F.col(DEGREE) > hub_degree_cap).select(t.ACCOUNT_ID)
    return _triangles(und, half, deg, hub_ids, hub_degree_cap, hub_sample_pairs, seed, salt_buckets)


@dataclass(frozen=True)
class GraphContext:
    """The follow graph as of one run date in the shapes every graph and neighbour feature reads,
    built once per features run (:func:`graph_context`) and shared by :func:`graph_features` and
    the neighbour features of :mod:`botwatch.features.attributes`.

    - ``directed``: ``src``, ``dst``, ``_first`` -- the directed simple graph (duplicates,
      self-loops and null ends dropped); ``_first`` the first ``created_at`` of the edge, null when a
      copy of it has none (older than the data);
    - ``pairs``: ``_a``, ``_b``, ``_out``, ``_in`` -- every pair of the undirected simple graph once
      from each end, ``_out`` = a follows b, ``_in`` = b follows a;
    - ``degrees``: ``account_id``, ``degree`` (undirected simple), ``out_degree``, ``in_degree``,
      ``_recip`` (out-edges followed back), for every account with an edge;
    - ``hub_ids``: ``account_id`` of the accounts of degree above ``hub_degree_cap``.
    """

    run_date: dt.date
    hub_degree_cap: int
    directed: DataFrame
    pairs: DataFrame
    degrees: DataFrame
    hub_ids: DataFrame

    @property
    def undirected(self) -> DataFrame:
        """``(u, v)`` with ``u < v``, one row per connected pair (as :func:`undirected_simple`)."""
        return self.pairs.where(F.col(_A) < F.col(_B)).select(F.col(_A).alias(U), F.col(_B).alias(V))

    @property
    def half_edges(self) -> DataFrame:
        """``(_a, _b)``: both directions of every undirected edge."""
        return self.pairs.select(_A, _B)


def _keep_lineage(_name: str, df: DataFrame) -> DataFrame:
    return df


def graph_context(
    edges: DataFrame, run_date: dt.date | str, hub_degree_cap: int = 1000,
    materialize: Callable[[str, DataFrame], DataFrame] | None = None,
) -> GraphContext:
    """The :class:`GraphContext` of ``edges`` as of ``run_date``.

    ``materialize(name, df)`` is applied to ``directed``, ``pairs`` and ``degrees`` as they are built
    (the features step passes :func:`botwatch.delta_io.scratch_frames`'s, so each is computed once and
    every consumer's plan starts at its files); without it the frames keep their lineage."""
    if hub_degree_cap < 1:
        raise ValueError(f"hub_degree_cap must be >= 1, got {hub_degree_cap}; fix features.graph in the conf")
    keep = materialize or _keep_lineage
    src, dst, created = F.col(t.SRC).cast("long"), F.col(t.DST).cast("long"), F.col(t.CREATED_AT)
    current = edges_as_of(edges, run_date).where(src.isNotNull() & dst.isNotNull() & (src != dst))
    # coalesce() marks the ids non-null, as in undirected_simple, so every consumer shares one
    # shuffle of the edges. An edge's _first is null when a copy of it has no created_at.
    zero = F.lit(0).cast("long")
    directed = keep("directed", current.groupBy(
        F.coalesce(src, zero).alias(t.SRC), F.coalesce(dst, zero).alias(t.DST)
    ).agg(F.when(F.count(created) == F.count(F.lit(1)), F.min(created)).alias("_first")))
    s, d = F.col(t.SRC), F.col(t.DST)
    forward = s < d
    # Keyed by the pair: no hub skew.
    grouped = directed.groupBy(F.least(s, d).alias(U), F.greatest(s, d).alias(V)).agg(
        F.max(forward).alias("_uv"), F.max(~forward).alias("_vu")
    )
    u, v, uv, vu = F.col(U), F.col(V), F.col("_uv"), F.col("_vu")
    pairs = keep("pairs", grouped.select(u.alias(_A), v.alias(_B), uv.alias(_OUT), vu.alias(_IN)).unionByName(
        grouped.select(v.alias(_A), u.alias(_B), vu.alias(_OUT), uv.alias(_IN))
    ))
    # Partial aggregation: a hub sends one row per map partition through the shuffle.
    degrees = keep("degrees", pairs.groupBy(F.col(_A).alias(t.ACCOUNT_ID)).agg(
        F.count(F.lit(1)).alias(DEGREE),
        F.sum(F.col(_OUT).cast("long")).alias(OUT_DEGREE),
        F.sum(F.col(_IN).cast("long")).alias(IN_DEGREE),
        F.sum((F.col(_OUT) & F.col(_IN)).cast("long")).alias(_RECIP),
    ))
    hub_ids = degrees.where(F.col(DEGREE) > hub_degree_cap).select(t.ACCOUNT_ID)
    return GraphContext(dt.date.fromisoformat(str(run_date)), hub_degree_cap, directed, pairs, degrees, hub_ids)


def resolve_context(
    context: GraphContext | None, edges: DataFrame | None, run_date: dt.date | str, hub_degree_cap: int
) -> GraphContext:
    """``context`` when given (checked against the run date and cap the caller asks for), else one built
    from ``edges``."""
    if context is None:
        if edges is None:
            raise ValueError("pass the edges or a GraphContext built from them (graph_context)")
        return graph_context(edges, run_date, hub_degree_cap)
    want = (dt.date.fromisoformat(str(run_date)), hub_degree_cap)
    if (context.run_date, context.hub_degree_cap) != want:
        raise ValueError(
            f"the GraphContext was built for run date {context.run_date} and hub_degree_cap "
            f"{context.hub_degree_cap}, not {want[0]} and {want[1]}: build it with the same settings"
        )
    return context


def latest_labels_before(labels: DataFrame, run_date: dt.date | str) -> DataFrame:
    """Each account's label as training resolves it (:func:`botwatch.labels.winning_labels`: source
    precedence, then the latest; botwatch's own decisions never count) from the labels observed
    before ``run_date`` (00:00 of D): no later label can leak into features of D."""
    require_columns(labels, (t.ACCOUNT_ID, t.LABEL, t.SOURCE, t.LABELED_AT), "graph labels")
    return winning_labels(labels, as_of=run_date).select(
        t.ACCOUNT_ID, (F.col(t.LABEL) == 1).cast("int").alias("_is_bot")
    )


def _activity_columns(activity: DataFrame, columns: Sequence[str] | None) -> list[str]:
    require_columns(activity, (t.ACCOUNT_ID, *(columns or ())), "graph neighbour activity")
    numeric = {f.name for f in activity.schema.fields if isinstance(f.dataType, (T.NumericType, T.BooleanType))}
    chosen = list(columns) if columns else [c for c in activity.columns if c != t.ACCOUNT_ID and c in numeric]
    bad = [c for c in chosen if c not in numeric]
    if bad:
        raise SchemaMismatchError(
            f"graph neighbour activity: columns {bad} are not numeric; pass numeric activity features "
            "(features.graph.neighbor_activity_columns)"
        )
    return chosen


def graph_features(
    edges: DataFrame | None,
    accounts: DataFrame,
    run_date: dt.date | str,
    *,
    activity: DataFrame | None = None,
    labels: DataFrame | None = None,
    activity_columns: Sequence[str] | None = None,
    hub_degree_cap: int = 1000,
    hub_sample_pairs: int = 2000,
    seed: int = 0,
    growth_days: int = 7,
    salt_buckets: int = 32,
    context: GraphContext | None = None,
) -> DataFrame:
    """One row per account in ``accounts`` with the graph features of the follow graph as of
    ``run_date`` (edges created before the end of D; null ``created_at`` counts as old).

    - ``in_degree``, ``out_degree``: distinct followers / followees, self-loops dropped (0 if none);
    - ``reciprocity``: share of out-edges followed back (null when ``out_degree`` is 0);
    - ``follow_growth_{growth_days}d``: out-edges first created in the ``growth_days`` days ending at D;
    - ``undirected_degree``, ``triangles`` (0 without edges), ``clustering_coef`` (null without
      edges), ``triangles_estimated`` (hub estimate, see :func:`triangle_counts`);
    - ``followee_mean_<col>`` / ``follower_mean_<col>``: mean of each ``activity`` column (one
      row per account) over followees / followers that have a value (``activity_columns`` or
      every numeric column); null when none has. A boolean column (a flag such as
      ``has_activity_7d``) gives the share of all followees / followers that have it: one without
      an ``activity`` row does not;
    - ``bot_neighbor_share``: share of undirected neighbours whose latest label before D is bot
      (null without neighbours or without ``labels``);
    - ``has_graph``: the account has an edge (other than a self-loop) as of D.

    ``context``: the graph as of D already built (:func:`graph_context`, shared with the neighbour
    features); ``edges`` is then not read and may be None.
    """
    _check_knobs(hub_degree_cap, hub_sample_pairs, salt_buckets)
    if growth_days < 1:
        raise ValueError(f"growth_days must be >= 1, got {growth_days}; fix features.graph.growth_days")
    require_columns(accounts, (t.ACCOUNT_ID,), "graph accounts")
    cols = _activity_columns(activity, activity_columns) if activity is not None else []
    if labels is not None:
        require_columns(labels, (t.ACCOUNT_ID, t.LABEL, t.LABELED_AT), "graph labels")
    ctx = resolve_context(context, edges, run_date, hub_degree_cap)
    # An edge is "new" when every copy of it was created in the growth window.
    growth = follow_growth_column(growth_days)
    is_new = F.col("_first") >= _day_start(run_date, -(growth_days - 1))
    new_out = ctx.directed.where(is_new).groupBy(F.col(t.SRC).alias(t.ACCOUNT_ID)).agg(F.count(F.lit(1)).alias(growth))
    deg = ctx.degrees.select(t.ACCOUNT_ID, DEGREE)
    hub_ids = ctx.hub_ids
    tri = _triangles(
        ctx.undirected, ctx.half_edges, deg, hub_ids, hub_degree_cap, hub_sample_pairs, seed, salt_buckets
    )

    out = (
        accounts.select(F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID))
        .join(ctx.degrees.select(t.ACCOUNT_ID, IN_DEGREE, OUT_DEGREE, _RECIP), t.ACCOUNT_ID, "left")
        .join(new_out, t.ACCOUNT_ID, "left")
        .join(tri, t.ACCOUNT_ID, "left")
    )
    has_graph = F.coalesce(F.col(DEGREE), F.lit(0)) > 0
    out = out.select(
        t.ACCOUNT_ID,
        F.coalesce(IN_DEGREE, F.lit(0)).cast("long").alias(IN_DEGREE),
        F.coalesce(OUT_DEGREE, F.lit(0)).cast("long").alias(OUT_DEGREE),
        F.when(F.col(OUT_DEGREE) > 0, F.col(_RECIP) / F.col(OUT_DEGREE)).cast("double").alias(RECIPROCITY),
        F.coalesce(growth, F.lit(0)).cast("long").alias(growth),
        F.coalesce(DEGREE, F.lit(0)).cast("long").alias(UNDIRECTED_DEGREE),
        F.coalesce(TRIANGLES, F.lit(0.0)).alias(TRIANGLES),
        F.when(has_graph, clustering_coef(F.col(TRIANGLES), F.col(DEGREE))).alias(CLUSTERING_COEF),
        F.coalesce(TRIANGLES_ESTIMATED, F.lit(False)).alias(TRIANGLES_ESTIMATED),
        has_graph.alias(HAS_GRAPH),
    )

    if activity is not None and cols:  # an activity table without a numeric column: no means, as without one
        act = activity.select(F.col(t.ACCOUNT_ID).cast("long").alias(t.ACCOUNT_ID), *cols)
        flags = {f.name for f in act.schema.fields if isinstance(f.dataType, T.BooleanType)}

        def means(prefix: str) -> list[Column]:
            # a neighbour without an activity row (none in any window) lacks every flag
            values = {c: F.coalesce(F.col(c).cast("double"), F.lit(0.0)) if c in flags else F.col(c) for c in cols}
            return [F.avg(v).cast("double").alias(prefix + c) for c, v in values.items()]

        pairs = ctx.directed.select(t.SRC, t.DST)
        # Followees of a hub-follower are keyed by the hub: salted lookup. The mean sums in a fixed order
        # (module docstring: a hub's rows meet in one task).
        followee = (
            _salted_lookup(pairs, t.DST, act, hub_ids, salt_buckets)
            .repartition(F.col(t.SRC)).sortWithinPartitions(t.SRC, t.DST)  # floats summed in one fixed order
            .groupBy(F.col(t.SRC).alias(t.ACCOUNT_ID))
            .agg(*means(FOLLOWEE_MEAN))
        )
        follower = (
            _salted_lookup(pairs, t.SRC, act, hub_ids, salt_buckets)
            .repartition(F.col(t.DST)).sortWithinPartitions(t.DST, t.SRC)  # floats summed in one fixed order
            .groupBy(F.col(t.DST).alias(t.ACCOUNT_ID))
            .agg(*means(FOLLOWER_MEAN))
        )
        out = out.join(followee, t.ACCOUNT_ID, "left").join(follower, t.ACCOUNT_ID, "left")

    if labels is not None:
        known = latest_labels_before(labels, run_date)
        share = (
            _salted_lookup(ctx.half_edges, _B, known, hub_ids, salt_buckets)
            .groupBy(F.col(_A).alias(t.ACCOUNT_ID))
            .agg((F.sum(F.coalesce("_is_bot", F.lit(0))) / F.count(F.lit(1))).cast("double").alias(BOT_NEIGHBOR_SHARE))
        )
        out = out.join(share, t.ACCOUNT_ID, "left")
    else:
        out = out.withColumn(BOT_NEIGHBOR_SHARE, F.lit(None).cast("double"))
    return out
