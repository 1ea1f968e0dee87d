"""The investigators' nightly review queue: a fixed budget of accounts, each with the reason it
was chosen and the probability it had of being chosen.

Three parts, each a simple random sample without replacement of its own pool of D's ``scores``;
the pools are disjoint and the parts' sizes are fixed by the pools' counts before any draw, so
every inclusion probability is exactly ``n / N`` and the whole queue is one stratified sample
(its strata: the score buckets, the holdout and the band), from which the labels give an unbiased
prevalence estimate (:mod:`botwatch.monitoring.prevalence`):

* ``exploration`` — accounts of the exploration holdout (``scores.holdout``: would-be actions
  withheld); stratum ``exploration_holdout``;
* ``uncertain`` — accounts within ``uncertain_band`` of the operating threshold, outside the
  holdout when exploration draws; stratum ``uncertain_band``. It also takes what exploration's
  share could not draw (a holdout smaller than it);
* ``stratified`` — the rest of the budget, over the other accounts, stratified by score bucket
  (conf ``strata_edges``) and allocated across buckets by Neyman allocation
  (``n_h ∝ N_h sqrt(p_h (1 - p_h))``, with the bucket's mean calibrated score as the guess for
  ``p_h``), at least ``min_per_stratum`` per non-empty bucket. When those accounts are fewer than
  its share, the budget left goes back to the other two parts, as far as their pools go.

A part whose share draws nobody has no pool: its accounts stay in the other parts' pools. Every draw
is deterministic: an account's random number is a hash of (salt, reason, date, account), so
rerunning D gives the same queue.
"""
from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.params import strata_edges_problem

SAMPLING_PROBABILITY = "sampling_probability"
STRATUM = "stratum"
STRATUM_SIZE = "stratum_size"
STRATUM_SAMPLE_SIZE = "stratum_sample_size"
QUEUE_COLUMNS = (
    t.ACCOUNT_ID, t.RUN_DATE, t.REASON, SAMPLING_PROBABILITY, STRATUM, STRATUM_SIZE, STRATUM_SAMPLE_SIZE,
    t.SCORE, t.MODEL_VERSION,
)
UNCERTAIN, STRATIFIED, EXPLORATION = t.REVIEW_REASONS
_HASH_RESOLUTION = 1 << 52


class ReviewConfigError(ValueError):
    """A review-queue setting is wrong (``monitoring.review_*``); the message names it."""


def hash_uniform(account_id: Column, run_date: dt.date, salt: str) -> Column:
    """A reproducible uniform number in [0, 1) per (salt, date, account)."""
    bits = F.pmod(F.xxhash64(F.lit(salt), F.lit(run_date.isoformat()), account_id.cast("string")),
                  F.lit(_HASH_RESOLUTION))
    return bits.cast("double") / F.lit(float(_HASH_RESOLUTION))


def stratum_labels(edges: Sequence[float]) -> list[str]:
    """``score[low,high)`` per stratum, in the general format (``score[0,0.5)``), with more digits where
    six would print two edges alike: the estimate groups the queue by this name."""
    bounds = [*edges, math.inf]
    digits = next(p for p in range(6, 18) if len({f"{b:.{p}g}" for b in bounds}) == len(set(bounds)))
    return [f"score[{bounds[i]:.{digits}g},{bounds[i + 1]:.{digits}g})" for i in range(len(edges))]


def stratum_index(score: Column, edges: Sequence[float]) -> Column:
    """Index of the score bucket ``[edges[i], edges[i+1])``; scores below the first edge go to 0."""
    out = F.lit(0)
    for i, e in enumerate(edges[1:], start=1):
        out = F.when(score >= F.lit(float(e)), F.lit(i)).otherwise(out)
    return out


def has_score(score: Column) -> Column:
    """A score the queue and the prevalence estimate count: not null, not NaN (a NaN would fall in the top
    stratum, as Spark orders NaN above every number, and leave that stratum's spread undefined)."""
    return score.isNotNull() & ~F.isnan(score)


def neyman_allocation(sizes: Sequence[int], spreads: Sequence[float], n: int, minimum: int) -> list[int]:
    """Integer sample sizes per stratum summing to ``min(n, sum(sizes))``: at least
    ``min(minimum, N_h)`` each (when the budget allows), the rest ``∝ N_h * spread_h``
    (largest remainders), never more than ``N_h``."""
    if not all(math.isfinite(v) for v in spreads):
        # A NaN weight made every share NaN and the loop below never end.
        raise ValueError(f"neyman_allocation needs finite spreads, got {list(spreads)}")
    sizes = [int(s) for s in sizes]
    n = min(int(n), sum(sizes))
    alloc = [min(minimum, s) for s in sizes]
    if sum(alloc) > n:
        # Budget below the minimums: all of it, dealt one at a time to the largest strata first
        # (one each before any gets two: a stratum without a label leaves the estimate undefined).
        caps, alloc = alloc, [0] * len(sizes)
        order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        while sum(alloc) < n:
            for i in (i for i in order if alloc[i] < caps[i]):
                if sum(alloc) < n:
                    alloc[i] += 1
        return alloc
    while sum(alloc) < n:
        room = [s - a for s, a in zip(sizes, alloc, strict=True)]
        weights = np.array([sizes[i] * max(spreads[i], 1e-6) if room[i] > 0 else 0.0 for i in range(len(sizes))])
        left = n - sum(alloc)
        share = weights / weights.sum() * left
        extra = np.minimum(np.floor(share).astype(int), room)
        if extra.sum() == 0:
            # Largest remainder gets the next unit.
            extra[int(np.argmax(np.where(np.array(room) > 0, share, -1.0)))] = 1
        alloc = [a + int(e) for a, e in zip(alloc, extra, strict=True)]
    return alloc


def draw_cutoff(n: int, size: int) -> float:
    """A bound on ``u`` under which a stratum's ``n`` smallest of ``size`` uniform numbers lie but for
    odds under 1e-9 (2e-12 at n = 1, 2e-10 at n = 1,000, of 10^6): the expected count under it is
    ``n + 6 sqrt(n) + 20``."""
    return 1.0 if size <= 0 else min(1.0, (n + 6.0 * math.sqrt(n) + 20.0) / size)


def _draw(pool: DataFrame, n: int, u: str, by: str | None = None, sizes: Mapping[int, int] | None = None,
          totals: Mapping[int, int] | None = None) -> DataFrame:
    """The ``n`` (or ``sizes[stratum]``) rows of ``pool`` with the smallest ``u``: a simple random
    sample without replacement. ``totals``: the rows of each stratum (of the pool). Only rows under
    :func:`draw_cutoff` reach the window's sort, so each stratum's one task sorts a margin over its
    sample, not the stratum (95M low scores on a full account table); a stratum left short by the
    cut-off (odds under 1e-9) is drawn again without it, so the draw is exact either way."""
    if by is None:
        key = F.lit(0)
        sizes = {0: n}
    else:
        key = F.col(by)
    counts = {k: v for k, v in (sizes or {}).items() if v > 0}
    if not counts:
        return pool.limit(0)
    pool = pool.withColumn("_key", key).where(F.col("_key").isin(list(counts)))
    ordered = Window.partitionBy("_key").orderBy(u, t.ACCOUNT_ID)
    want = F.element_at(F.create_map(*[x for k, v in counts.items() for x in (F.lit(k), F.lit(v))]), F.col("_key"))

    def ranked(cutoffs: Mapping[int, float]) -> DataFrame:
        bound = F.element_at(F.create_map(*[x for k, c in cutoffs.items() for x in (F.lit(k), F.lit(c))]),
                             F.col("_key"))
        # Materialised once: the check below counts it and the caller reads it (no second pass over the pool).
        return (pool.where(F.col(u) < bound).withColumn("_rank", F.row_number().over(ordered))
                .where(F.col("_rank") <= want).drop("_rank").localCheckpoint())

    cutoffs = {k: draw_cutoff(v, (totals or {}).get(k, 0)) for k, v in counts.items()}
    drawn = ranked(cutoffs)
    got = {r["_key"]: r["count"] for r in drawn.groupBy("_key").count().collect()}
    short = {k for k, v in counts.items() if got.get(k, 0) < v and cutoffs[k] < 1.0}
    if short:
        drawn = ranked({k: 1.0 if k in short else c for k, c in cutoffs.items()})
    return drawn.drop("_key")


def apportion(budget: int, shares: Mapping[str, float]) -> dict[str, int]:
    """``budget`` rows split by ``shares`` into whole numbers that sum to it (largest remainders, ties to
    the earlier of ``tables.REVIEW_REASONS``): a part given no share gets no row, which rounding each part
    alone did not promise (budget 5 at 0.5 and 0.5: 2 + 2 and one stratified row)."""
    total = sum(shares.values())
    if not total:
        return dict.fromkeys(t.REVIEW_REASONS, 0)
    exact = {r: budget * shares.get(r, 0.0) / total for r in t.REVIEW_REASONS}
    rows = {r: math.floor(v) for r, v in exact.items()}
    for r in sorted(exact, key=lambda r: rows[r] - exact[r])[:budget - sum(rows.values())]:
        rows[r] += 1
    return rows


def review_queue(
    scores: DataFrame,
    run_date: dt.date,
    *,
    threshold: float | Column | None,
    budget: int,
    shares: Mapping[str, float],
    uncertain_band: float,
    strata_edges: Sequence[float],
    min_per_stratum: int,
    salt: str,
) -> DataFrame:
    """The review queue of D (columns :data:`QUEUE_COLUMNS`), at most ``budget`` rows, one per account.
    ``threshold``: the operating threshold the uncertain band lies around, one for every row or a column
    (each row's deciding model's; null: no band)."""
    unknown = set(shares) - set(t.REVIEW_REASONS)
    if unknown or budget < 0 or any(v < 0 for v in shares.values()):
        raise ReviewConfigError(
            f"monitoring.review_shares must map {list(t.REVIEW_REASONS)} to shares >= 0 and "
            f"monitoring.review_budget must be >= 0; got {dict(shares)} and {budget}"
        )
    if (edges_problem := strata_edges_problem(strata_edges)) is not None:
        raise ReviewConfigError(edges_problem)
    edges = sorted({float(e) for e in strata_edges})  # a repeated edge bounds an empty stratum
    labels = stratum_labels(edges)
    # Scores written without the exploration holdout (an older run, a hand-built table): nothing to explore.
    holdout = F.col("holdout") if "holdout" in scores.columns else F.lit(None)
    base = scores.select(
        t.ACCOUNT_ID, t.SCORE, t.MODEL_VERSION, F.coalesce(holdout, F.lit(False)).alias("holdout")
    ).where(has_score(F.col(t.SCORE)))
    base = base.withColumn("_h", stratum_index(F.col(t.SCORE), edges))
    for reason in t.REVIEW_REASONS:
        base = base.withColumn(f"_u_{reason}", hash_uniform(F.col(t.ACCOUNT_ID), run_date, f"{salt}:{reason}"))
    thr = threshold if isinstance(threshold, Column) else F.lit(threshold).cast("double")
    in_band = F.coalesce(F.abs(F.col(t.SCORE) - thr) <= F.lit(uncertain_band), F.lit(False))
    base = base.withColumn("_band", in_band)
    counts = base.agg(F.sum(F.col("holdout").cast("long")).alias("holdout"),
                      F.sum((F.col("_band") & ~F.col("holdout")).cast("long")).alias("band_only"),
                      F.sum(F.col("_band").cast("long")).alias("band")).collect()[0]
    wanted = apportion(budget, shares)
    # Three disjoint pools, each part a simple random sample of its own pool, of a size the pools' counts fix
    # before any draw: exploration from the holdout, uncertain from the band outside it, stratified from the
    # rest. Every inclusion probability is then exactly n / N (one stratified design over all parts' strata);
    # a part drawn again bigger when another had taken its accounts first was not (its size hung on its draw).
    n_holdout = counts["holdout"] or 0
    n_explore = min(wanted[EXPLORATION], n_holdout)
    band_pool = (counts["band_only"] if n_explore else counts["band"]) or 0
    # What exploration could not draw goes to the uncertain part.
    n_uncertain = min(wanted[UNCERTAIN] + wanted[EXPLORATION] - n_explore, band_pool, budget - n_explore)
    in_explore = F.col("holdout") & F.lit(n_explore > 0)
    in_uncertain = F.col("_band") & ~in_explore & F.lit(n_uncertain > 0)
    base = base.withColumn("_pool", F.when(in_explore, F.lit(EXPLORATION)).when(in_uncertain, F.lit(UNCERTAIN))
                           .otherwise(F.lit(STRATIFIED))).cache()
    stats = base.where(F.col("_pool") == STRATIFIED).groupBy("_h").agg(
        F.count(F.lit(1)).alias("n"), F.avg(t.SCORE).alias("p")).collect()
    sizes = {r["_h"]: r["n"] for r in stats}
    n_strat = min(budget - n_explore - n_uncertain, sum(sizes.values()))
    # A rest too small for its share: the budget left goes back to the other parts, as far as their pools go.
    left = budget - n_explore - n_uncertain - n_strat
    if n_explore:
        left -= (extra := min(left, n_holdout - n_explore))
        n_explore += extra
    if n_uncertain:
        n_uncertain += min(left, band_pool - n_uncertain)
    spreads = {r["_h"]: math.sqrt(min(max(r["p"], 1e-3), 1 - 1e-3) * (1 - min(max(r["p"], 1e-3), 1 - 1e-3)))
               for r in stats}
    order = sorted(sizes)
    alloc = dict(zip(order, neyman_allocation([sizes[h] for h in order], [spreads[h] for h in order],
                                              n_strat, min_per_stratum), strict=True))
    strat = _draw(base.where(F.col("_pool") == STRATIFIED), 0, f"_u_{STRATIFIED}", by="_h", sizes=alloc,
                  totals=sizes)
    label_map = F.element_at(F.array(*[F.lit(s) for s in labels]), F.col("_h") + 1)
    size_map = F.create_map(*[x for h in order for x in (F.lit(h), F.lit(sizes[h]))])
    alloc_map = F.create_map(*[x for h in order for x in (F.lit(h), F.lit(alloc[h]))])
    parts = [strat.select(
        t.ACCOUNT_ID, F.lit(STRATIFIED).alias(t.REASON),
        (F.element_at(alloc_map, F.col("_h")) / F.element_at(size_map, F.col("_h"))).alias(SAMPLING_PROBABILITY),
        label_map.alias(STRATUM), F.element_at(size_map, F.col("_h")).cast("long").alias(STRATUM_SIZE),
        F.element_at(alloc_map, F.col("_h")).cast("int").alias(STRATUM_SAMPLE_SIZE), t.SCORE, t.MODEL_VERSION,
    )] if order else []
    for reason, n, pool_size, name in ((EXPLORATION, n_explore, n_holdout, "exploration_holdout"),
                                       (UNCERTAIN, n_uncertain, band_pool, "uncertain_band")):
        if n:
            parts.append(_draw(base.where(F.col("_pool") == reason), n, f"_u_{reason}", totals={0: pool_size}).select(
                t.ACCOUNT_ID, F.lit(reason).alias(t.REASON), F.lit(n / pool_size).alias(SAMPLING_PROBABILITY),
                F.lit(name).alias(STRATUM), F.lit(pool_size).cast("long").alias(STRATUM_SIZE),
                F.lit(n).cast("int").alias(STRATUM_SAMPLE_SIZE), t.SCORE, t.MODEL_VERSION,
            ))
    out = functools.reduce(DataFrame.unionByName, parts) if parts else base.limit(0).select(
        t.ACCOUNT_ID, F.lit(STRATIFIED).alias(t.REASON), F.lit(0.0).alias(SAMPLING_PROBABILITY),
        F.lit("").alias(STRATUM), F.lit(0).cast("long").alias(STRATUM_SIZE), F.lit(0).alias(STRATUM_SAMPLE_SIZE),
        t.SCORE, t.MODEL_VERSION)
    out = out.localCheckpoint()
    base.unpersist()
    return out.withColumn(t.RUN_DATE, F.lit(run_date)).select(*QUEUE_COLUMNS)
