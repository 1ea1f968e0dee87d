"""Decisions from scores: ``action`` at or above the operating threshold, ``review`` in an
uncertainty band just below it, else ``none``; and whether the action is carried out.

``actioned`` is false in shadow mode, for the exploration holdout (a reproducible hashed share of
would-be actions, withheld so their outcome teaches us something) and for golden-set accounts
(never touched by model actions, so the golden set stays an unbiased yardstick).
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.labels import golden_mask

MODES = ("enforce", "shadow")
_BUCKETS = 1_000_000


def decision(score: Column, threshold: float | None, review_band: float) -> Column:
    if threshold is None:
        # No threshold reached the target precision on validation: this model decides nothing.
        return F.lit("none")
    return (
        F.when(score >= F.lit(threshold), "action")
        .when(score >= F.lit(threshold - review_band), "review")
        .otherwise("none")
    )


def holdout_mask(account_id: Column, run_date: dt.date, share: float, salt: str = "explore") -> Column:
    """True for a reproducible hashed ``share`` of (account, date) pairs."""
    bucket = F.pmod(F.xxhash64(F.lit(salt), F.lit(run_date.isoformat()), account_id.cast("string")), F.lit(_BUCKETS))
    return bucket < F.lit(round(share * _BUCKETS))


def with_decisions(
    scored: DataFrame,
    run_date: dt.date,
    *,
    threshold: float | None,
    review_band: float,
    mode: str,
    exploration_share: float,
    golden_share: float,
    golden_salt: str,
) -> DataFrame:
    """Add ``decision``, ``holdout``, ``golden`` and ``actioned`` to a frame with ``score``."""
    if mode not in MODES:
        raise ValueError(f"scoring.mode must be one of {MODES}, got {mode!r}")
    acc = F.col(t.ACCOUNT_ID)
    out = scored.withColumn(t.DECISION, decision(F.col(t.SCORE), threshold, review_band))
    would_act = F.col(t.DECISION) == "action"
    out = out.withColumn("holdout", would_act & holdout_mask(acc, run_date, exploration_share))
    out = out.withColumn("golden", golden_mask(acc, golden_share, golden_salt))
    return out.withColumn(
        "actioned", would_act & F.lit(mode == "enforce") & ~F.col("holdout") & ~F.col("golden")
    )
