"""Evaluation of bot scores: precision-first metrics on plain numpy arrays.

The trainer collects (label, score) pairs from Spark (validation, golden set) and hands
them to :func:`botwatch.evaluation.metrics.evaluate`; see that module for the definitions.
"""
from __future__ import annotations

from botwatch.evaluation.metrics import (
    MetricInputError,
    bootstrap_ci,
    evaluate,
    f1_at,
    fpr_by_segment,
    operating_threshold,
    pr_auc,
    pr_curve,
    precision_at,
    prior_shift_weights,
    recall_at,
    recall_at_precision,
    recall_by_family,
    roc_auc,
)

__all__ = [
    "MetricInputError",
    "bootstrap_ci",
    "evaluate",
    "f1_at",
    "fpr_by_segment",
    "operating_threshold",
    "pr_auc",
    "pr_curve",
    "precision_at",
    "prior_shift_weights",
    "recall_at",
    "recall_at_precision",
    "recall_by_family",
    "roc_auc",
]
