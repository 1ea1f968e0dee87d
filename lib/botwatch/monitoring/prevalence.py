"""Prevalence: the bot share of the whole account table, estimated without bias from the labels
of the review queue (one stratified sample: its score buckets, exploration holdout and uncertain
band are disjoint strata), with a 95 % interval; and what a plain random sample of the same size
would give (to show the variance the strata save).

Within each stratum the sample is a simple random sample without replacement (inclusion
probability ``n_h / N_h``), so the stratified estimator ``p = sum_h W_h p_h`` with
``W_h = N_h / N`` is the Horvitz–Thompson estimator ``(1/N) sum_i y_i / pi_i``. Its variance is
``sum_h W_h^2 (1 - n_h/N_h) s_h^2 / n_h``. For the variance only, ``p_h`` is shrunk to
``(y_h + 1/2) / (n_h + 1)``: a stratum whose few labels are all 0 would otherwise claim zero
variance and the interval would undercover. Labels that have not arrived are treated as
missing at random within their stratum (``n_h`` counts labelled rows); a stratum without any
label leaves the estimate undefined (``nan``), never silently 0.

Usage (production: investigators' labels arriving for day q's queue)::

    labelled = queue.join(labels, "account_id", "left")  # every part of the queue is a stratum
    est = stratified_prevalence(labelled)     # {"estimate", "low", "high", "se", "srs_se", ...}
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.monitoring.review import STRATUM, STRATUM_SIZE

Z95 = 1.959963984540054


def _shrunk_var(y: np.ndarray, n: np.ndarray) -> np.ndarray:
    p = (y + 0.5) / (n + 1.0)
    return p * (1 - p) * n / np.maximum(n - 1.0, 1.0)


def stratified_estimate(sizes: Sequence[int], labelled: Sequence[int], bots: Sequence[int]) -> dict[str, float]:
    """Stratified estimate from per-stratum population sizes ``N_h``, labelled sample sizes
    ``n_h`` and bot counts ``y_h``: ``estimate``, ``se``, ``low``, ``high`` (95 %, clipped to
    [0, 1]), ``n`` and ``srs_se`` — the standard error a simple random sample of the same size
    would have at this prevalence — and ``design_effect`` (variance ratio stratified / SRS, both
    from the sample's own shares)."""
    N_h = np.asarray(sizes, dtype=float)
    n_h = np.asarray(labelled, dtype=float)
    y_h = np.asarray(bots, dtype=float)
    N = N_h.sum()
    n = n_h.sum()
    nan = dict.fromkeys(("estimate", "se", "low", "high", "srs_se", "design_effect"), math.nan)
    if N <= 0 or (n_h[N_h > 0] == 0).any():
        return {**nan, "n": float(n)}
    W = N_h / N
    keep = N_h > 0
    p = float(np.sum(W[keep] * y_h[keep] / n_h[keep]))
    fpc = 1 - n_h[keep] / N_h[keep]
    var = float(np.sum(W[keep] ** 2 * fpc * _shrunk_var(y_h[keep], n_h[keep]) / n_h[keep]))
    se = math.sqrt(var)
    srs_se = srs_standard_error(p, int(n), N)
    # The design effect compares like with like: both variances from the sample's own shares (the
    # shrinkage that keeps the interval honest pulls a big 0-of-57 stratum to 0.009, and would read
    # as no saving at all).
    p_h = y_h[keep] / n_h[keep]
    plain_var = float(np.sum(W[keep] ** 2 * fpc * p_h * (1 - p_h) / np.maximum(n_h[keep] - 1.0, 1.0)))
    return {
        "estimate": p, "se": se, "low": max(0.0, p - Z95 * se), "high": min(1.0, p + Z95 * se), "n": float(n),
        "srs_se": srs_se, "design_effect": plain_var / srs_se**2 if srs_se > 0 else math.nan,
    }


def stratified_ratio(sizes: Sequence[int], labelled: Sequence[int], numerators: Sequence[int],
                     denominators: Sequence[int]) -> float:
    """The stratified ratio estimate ``sum_h (N_h / n_h) a_h / sum_h (N_h / n_h) b_h`` of a population
    ratio (precision: ``a_h`` labelled bots actioned, ``b_h`` labelled accounts actioned; recall:
    ``b_h`` labelled bots), each labelled account weighted by the inverse of its chance to be in the
    sample. NaN when a non-empty stratum has no label or the denominator is 0. Unlike a share of the
    labels that happened to arrive (appeals come from restricted humans, investigators pick
    suspects), it estimates the population's figure."""
    N_h, n_h = np.asarray(sizes, dtype=float), np.asarray(labelled, dtype=float)
    a_h, b_h = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    keep = N_h > 0
    if not keep.any() or (n_h[keep] == 0).any():
        return math.nan
    w = N_h[keep] / n_h[keep]
    den = float(np.sum(w * b_h[keep]))
    return float(np.sum(w * a_h[keep])) / den if den > 0 else math.nan


def srs_standard_error(p: float, n: int, N: float) -> float:
    """Standard error of a simple random sample's share at true share ``p`` (without replacement)."""
    if n <= 1:
        return math.nan
    return math.sqrt(max(0.0, 1 - n / N) * p * (1 - p) / (n - 1))


def srs_estimate(labels: Sequence[int], population: int) -> dict[str, float]:
    """The plain random sample's estimate with its 95 % (Wald, shrunk like the strata) interval."""
    y = np.asarray(labels, dtype=float)
    n = y.size
    if n == 0:
        return dict.fromkeys(("estimate", "se", "low", "high"), math.nan) | {"n": 0.0}
    p = float(y.mean())
    se = math.sqrt(max(0.0, 1 - n / population) * float(_shrunk_var(np.array(y.sum()), np.array(n))) / n)
    return {"estimate": p, "se": se, "low": max(0.0, p - Z95 * se), "high": min(1.0, p + Z95 * se), "n": float(n)}


def stratified_prevalence(labelled: DataFrame) -> dict[str, float]:
    """The estimate from a labelled stratified sample: one row per sampled account with
    ``stratum``, ``stratum_size`` and ``label`` (1 bot, 0 human, null while not labelled yet).
    Aggregated per stratum in Spark; only the per-stratum counts reach the driver."""
    rows = (
        labelled.groupBy(STRATUM)
        .agg(
            F.max(STRATUM_SIZE).alias("N"),
            F.count(t.LABEL).alias("n"),
            F.sum(F.col(t.LABEL).cast("long")).alias("y"),
        )
        .collect()
    )
    return stratified_estimate([r["N"] for r in rows], [r["n"] for r in rows], [r["y"] or 0 for r in rows])
