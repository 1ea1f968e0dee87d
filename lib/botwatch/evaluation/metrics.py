"""Precision-first metrics for bot scores, in plain numpy (sorting and cumulative sums).

Inputs are 1-d arrays: ``y_true`` of 0/1 (1 = bot), ``y_score`` of finite floats (higher =
more bot-like) and an optional non-negative ``sample_weight`` (label-source weights). The
definitions are scikit-learn's, which the tests use as the independent reference:

* an account is flagged at ``threshold`` when ``score >= threshold``;
* :func:`pr_auc` is average precision, ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct
  scores taken as thresholds (``sklearn.metrics.average_precision_score``); tied scores
  enter and leave together, with no interpolation;
* :func:`roc_auc` is the trapezoidal area under the ROC curve (ties count one half);
* weighted counts replace counts everywhere; samples of weight 0 are ignored, also as
  threshold candidates.

Undefined values are ``nan``, never a silent 0: PR-AUC, recall and recall at a precision
without positives; ROC-AUC with a single class; precision when nothing is flagged; F1 when
there is neither a positive nor a flag; a segment's FPR without negatives.
:func:`operating_threshold` returns ``None`` when no threshold reaches the target precision
(and :func:`recall_at_precision` is then 0.0: nothing can be actioned at that precision).

Usage::

    thr = operating_threshold(y_valid, s_valid, target_precision=0.95)   # pick on validation
    report = evaluate(y_golden, s_golden, thr, target_precision=0.95,
                      segments={"age": age_bucket, "country": country})  # report on golden
    report["pr_auc"], report["pr_auc_low"], report["recall_at_target_precision"]
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from botwatch.tables import FAMILIES

HUMAN_FAMILY = FAMILIES[0]

MetricFn = Callable[..., float]


class MetricInputError(ValueError):
    """Arrays handed to a metric are malformed (lengths, labels, NaN scores, negative weights)."""


# ---------------------------------------------------------------------------------------------
# input checks and the shared curve


def _as_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MetricInputError(f"{name} must be 1-d, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise MetricInputError(f"{name} must hold only 0 (human) and 1 (bot); found {bad.tolist()}")
    return y.astype(np.int8)


def _check(y_true: Any, y_score: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != y.shape:
        raise MetricInputError(f"y_score has shape {s.shape}, y_true has {y.shape}; pass aligned 1-d arrays")
    if not np.isfinite(s).all():
        raise MetricInputError(
            f"y_score holds {int((~np.isfinite(s)).sum())} NaN/inf values; score every row or drop it first"
        )
    w = _check_weight(sample_weight, y.shape)
    return y, s, w


def _aligned(values: Any, kept: np.ndarray, name: str) -> np.ndarray:
    """``values`` (aligned with the rows) at the ``kept`` rows; objects, as :func:`_groups` reads them
    (a list mixing text and NaN must not turn NaN into the text 'nan')."""
    arr = np.asarray(values, dtype=object)
    if arr.shape != kept.shape:
        raise MetricInputError(f"{name} has shape {arr.shape}, want {kept.shape} aligned with the labels")
    return arr[kept]


def _check_weight(sample_weight: Any, shape: tuple[int, ...]) -> np.ndarray:
    if sample_weight is None:
        return np.ones(shape, dtype=np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != shape:
        raise MetricInputError(f"sample_weight has shape {w.shape}, want {shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise MetricInputError("sample_weight must be finite and >= 0 (label-source weights)")
    return w


def _curve(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (decreasing) with the weighted TP and FP counts flagged at each."""
    keep = w != 0
    y, s, w = y[keep], s[keep], w[keep]
    # Same order as scikit-learn (reversed stable sort), so weighted sums round alike.
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y, w = s[order], y[order], w[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.empty(0, dtype=np.int64)
    tps = np.cumsum(y * w)[last_of_tie]
    fps = np.cumsum((1 - y) * w)[last_of_tie]
    return s[last_of_tie], tps, fps


def _confusion(y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float) -> tuple[float, float, float, float]:
    flagged = s >= threshold
    pos = y == 1
    tp = float(w[flagged & pos].sum())
    fp = float(w[flagged & ~pos].sum())
    fn = float(w[~flagged & pos].sum())
    tn = float(w[~flagged & ~pos].sum())
    return tp, fp, fn, tn


def _curve_ap(tps: np.ndarray, fps: np.ndarray) -> float:
    if not tps.size or tps[-1] <= 0:
        return math.nan
    recall_gain = np.diff(np.r_[0.0, tps / tps[-1]])
    return float(np.sum(recall_gain * tps / (tps + fps)))


def _curve_auc(tps: np.ndarray, fps: np.ndarray) -> float:
    if not tps.size or tps[-1] <= 0 or fps[-1] <= 0:
        return math.nan
    return float(np.trapezoid(np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]))


def _curve_pick(tps: np.ndarray, fps: np.ndarray, target_precision: float) -> int | None:
    """Index of the lowest threshold reaching the target (tps + fps > 0: zero weights are dropped).
    A precision the target equals exactly can come out an ulp under it from weighted sums: a relative
    slack of 1e-12 keeps it."""
    ok = np.flatnonzero(tps / (tps + fps) >= target_precision * (1 - 1e-12))
    return int(ok[-1]) if ok.size else None


def _curve_recall_at_precision(tps: np.ndarray, fps: np.ndarray, target_precision: float) -> float:
    if not tps.size or tps[-1] <= 0:
        return math.nan
    k = _curve_pick(tps, fps, target_precision)
    return 0.0 if k is None else float(tps[k] / tps[-1])


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _check_target(target_precision: float) -> None:
    if not 0.0 < target_precision <= 1.0:
        raise MetricInputError(f"target_precision must be in (0, 1], got {target_precision}")


# ---------------------------------------------------------------------------------------------
# ranking metrics


def pr_curve(y_true: Any, y_score: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` for plotting, laid out as scikit-learn's
    ``precision_recall_curve``: thresholds increasing, one more precision/recall point at the
    end (precision 1, recall 0). Without positives, recall is ``nan``."""
    y, s, w = _check(y_true, y_score, sample_weight)
    thr, tps, fps = _curve(y, s, w)
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.full(tps.shape, math.nan)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def pr_auc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float:
    """Average precision (area under the step PR curve); ``nan`` without positives."""
    _, tps, fps = _curve(*_check(y_true, y_score, sample_weight))
    return _curve_ap(tps, fps)


def roc_auc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float:
    """Area under the ROC curve; ``nan`` unless both classes are present."""
    _, tps, fps = _curve(*_check(y_true, y_score, sample_weight))
    return _curve_auc(tps, fps)


# ---------------------------------------------------------------------------------------------
# metrics at a threshold


def precision_at(y_true: Any, y_score: Any, threshold: float, sample_weight: Any = None) -> float:
    """Share of bots among accounts with ``score >= threshold``; ``nan`` if none is flagged."""
    tp, fp, _, _ = _confusion(*_check(y_true, y_score, sample_weight), threshold)
    return _ratio(tp, tp + fp)


def recall_at(y_true: Any, y_score: Any, threshold: float, sample_weight: Any = None) -> float:
    """Share of bots with ``score >= threshold``; ``nan`` without positives."""
    tp, _, fn, _ = _confusion(*_check(y_true, y_score, sample_weight), threshold)
    return _ratio(tp, tp + fn)


def f1_at(y_true: Any, y_score: Any, threshold: float, sample_weight: Any = None) -> float:
    """F1 of flagging ``score >= threshold``: ``2TP / (2TP + FP + FN)``; ``nan`` if that is 0/0."""
    tp, fp, fn, _ = _confusion(*_check(y_true, y_score, sample_weight), threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def operating_threshold(
    y_true: Any, y_score: Any, target_precision: float = 0.95, sample_weight: Any = None
) -> float | None:
    """The lowest threshold (a score value) whose precision is >= ``target_precision``.

    Lowest, because recall only grows as the threshold falls: this is the threshold with the
    most recall at the target precision. ``None`` when no threshold reaches the target.
    """
    _check_target(target_precision)
    thr, tps, fps = _curve(*_check(y_true, y_score, sample_weight))
    k = _curve_pick(tps, fps, target_precision)
    return None if k is None else float(thr[k])


def prior_shift_weights(y_true: Any, prevalence: float, sample_weight: Any = None) -> np.ndarray:
    """Weights that give labelled rows the population's bot share ``prevalence``.

    Labels come mostly from investigators, who look at suspicious accounts, so the labelled
    rows hold far more bots than the population (72 % of validation rows against 3.5 % of all
    accounts in a 100k-account simulation): precision measured on them overstates precision in
    production, and a threshold picked on them actions many humans. Scaling bots by ``prevalence / p`` and humans by
    ``(1 - prevalence) / (1 - p)`` (``p``: the rows' weighted bot share) makes weighted
    precision an estimate of population precision, assuming each class's labelled scores look
    like that class's scores in the population. Labelled humans are the suspicious ones, so the
    estimate errs low (a higher, safer threshold). Without both classes the weights are unchanged.
    """
    y, _, w = _check(y_true, np.zeros(np.shape(y_true)), sample_weight)
    if not 0.0 < prevalence < 1.0:
        raise MetricInputError(f"prevalence must be in (0, 1), got {prevalence}; it is the population's bot share")
    pos, total = float(w[y == 1].sum()), float(w.sum())
    if pos == 0.0 or pos == total:
        return w
    p = pos / total
    return np.where(y == 1, w * (prevalence / p), w * ((1.0 - prevalence) / (1.0 - p)))


def recall_at_precision(y_true: Any, y_score: Any, target_precision: float, sample_weight: Any = None) -> float:
    """Highest recall among thresholds with precision >= target (recall at the operating
    threshold); 0.0 when none reaches it, ``nan`` without positives."""
    _check_target(target_precision)
    _, tps, fps = _curve(*_check(y_true, y_score, sample_weight))
    return _curve_recall_at_precision(tps, fps, target_precision)


# ---------------------------------------------------------------------------------------------
# breakdowns


def _groups(values: Any, n: int, name: str) -> dict[Any, np.ndarray]:
    """Row indices per distinct value (None, NaN and pandas' NA together as None), keys sorted by text."""
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise MetricInputError(f"{name} has shape {arr.shape}, want ({n},) aligned with the labels")
    keys = [None if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)) else v for v in arr.tolist()]
    out: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return {k: np.asarray(out[k]) for k in sorted(out, key=lambda k: (k is None, str(k)))}


def fpr_by_segment(y_true: Any, y_pred: Any, segments: Any, sample_weight: Any = None) -> dict[Any, float]:
    """False positive rate ``FP / (FP + TN)`` of the 0/1 decisions ``y_pred`` within each
    distinct value of ``segments`` (e.g. new vs established, country); ``nan`` for a segment
    without negatives. Missing segment values (None/NaN) form the segment ``None``."""
    y = _as_labels(y_true)
    pred = _as_labels(y_pred, "y_pred")
    if pred.shape != y.shape:
        raise MetricInputError(f"y_pred has shape {pred.shape}, y_true has {y.shape}")
    w = _check_weight(sample_weight, y.shape)
    out = {}
    for key, idx in _groups(segments, y.size, "segments").items():
        neg = idx[y[idx] == 0]
        out[key] = _ratio(float(w[neg][pred[neg] == 1].sum()), float(w[neg].sum()))
    return out


def recall_by_family(
    families: Any, y_pred: Any, *, skip: tuple[str, ...] = (HUMAN_FAMILY,), sample_weight: Any = None
) -> dict[Any, float]:
    """Share of each family's accounts that ``y_pred`` flags (simulated data, where the hidden
    ``truth`` table names each account's family). Families in ``skip`` (humans: that share
    is a false positive rate, reported by :func:`fpr_by_segment`) are left out."""
    pred = _as_labels(y_pred, "y_pred")
    w = _check_weight(sample_weight, pred.shape)
    return {
        key: _ratio(float(w[idx][pred[idx] == 1].sum()), float(w[idx].sum()))
        for key, idx in _groups(families, pred.size, "families").items()
        if key not in skip
    }


# ---------------------------------------------------------------------------------------------
# bootstrap intervals


def _resample_indices(y: np.ndarray, n: int, seed: int, stratify: bool) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(y == c) for c in (0, 1)] if stratify else [np.arange(y.size)]
    pools = [p for p in pools if p.size]
    for _ in range(n):
        yield np.concatenate([p[rng.integers(0, p.size, p.size)] for p in pools])


def _bootstrap(
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], dict[str, float]],
    y: np.ndarray,
    s: np.ndarray,
    w: np.ndarray | None,
    *,
    n: int,
    alpha: float,
    seed: int,
    stratify: bool,
) -> dict[str, tuple[float, float]]:
    if n < 1:
        raise MetricInputError(f"n (bootstrap resamples) must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise MetricInputError(f"alpha must be in (0, 1), got {alpha}")
    draws: dict[str, list[float]] = {}
    for idx in _resample_indices(y, n, seed, stratify) if y.size else ():
        for name, value in fn(y[idx], s[idx], None if w is None else w[idx]).items():
            draws.setdefault(name, []).append(float(value))
    out = {}
    for name, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if not arr.size:
            out[name] = (math.nan, math.nan)
            continue
        low, high = np.percentile(arr, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = (float(low), float(high))
    return out


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: Any,
    y_score: Any,
    n: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    sample_weight: Any = None,
    stratify: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of ``metric_fn(y_true, y_score)`` at level
    ``1 - alpha``; the same ``seed`` gives the same interval.

    ``stratify`` resamples bots and humans separately, keeping their counts (as pROC does), so
    no resample of a scarce-label golden set lacks positives. Resamples where the metric is
    ``nan`` are left out; ``(nan, nan)`` if all are. Rows of weight 0 are left out before resampling,
    as in :func:`evaluate`. ``metric_fn`` is called as
    ``metric_fn(y, s)`` or, with weights, ``metric_fn(y, s, sample_weight=w)``; bind a
    threshold with ``functools.partial(precision_at, threshold=t)``.
    """
    y, s, w = _check(y_true, y_score, sample_weight)
    kept = w > 0
    y, s, w = y[kept], s[kept], w[kept]  # weight-0 rows carry nothing, and must not be drawn

    def one(yb: np.ndarray, sb: np.ndarray, wb: np.ndarray | None) -> dict[str, float]:
        return {"m": metric_fn(yb, sb) if wb is None else metric_fn(yb, sb, sample_weight=wb)}

    weights = None if sample_weight is None else w
    return _bootstrap(one, y, s, weights, n=n, alpha=alpha, seed=seed, stratify=stratify).get("m", (math.nan, math.nan))


# ---------------------------------------------------------------------------------------------
# the report


def _key(value: Any) -> str:
    text = re.sub(r"[^0-9A-Za-z]+", "_", str(value)).strip("_") if value is not None else ""
    return text or "null"


def _names(prefix: str, values: Iterable[Any]) -> dict[Any, str]:
    """``prefix`` + each value's metric name; values whose names clash ("US" and "US ", or two
    scripts _key cannot spell: 日本, Россия) get a short digest of the value too."""
    values = list(values)
    keys = {v: _key(v) for v in values}
    clashing = {k for k, n in Counter(keys.values()).items() if n > 1}
    return {v: f"{prefix}{k}_{hashlib.sha1(repr(v).encode()).hexdigest()[:6]}" if k in clashing else f"{prefix}{k}"
            for v, k in keys.items()}


def _put(out: dict[str, float], key: str, value: float) -> None:
    if key in out:
        raise MetricInputError(f"two segment values both map to the metric name {key!r}; rename one")
    out[key] = value


def evaluate(
    y_true: Any,
    y_score: Any,
    threshold: float | None = None,
    *,
    target_precision: float = 0.95,
    segments: Mapping[str, Any] | None = None,
    families: Any = None,
    sample_weight: Any = None,
    n_bootstrap: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one scored label set as a flat ``{name: float}`` dict (the ``metrics``
    table's rows and the registry's record).

    ``threshold`` is the operating threshold picked elsewhere (on validation); ``None`` picks
    it on these same rows, which is optimistic: do that only on validation itself; ``nan``: the
    model has none (it actions nobody), so no at-threshold figure either.
    Names: ``n``, ``n_positive``, ``prevalence``, ``pr_auc``, ``roc_auc``, ``threshold``,
    ``f1``, ``precision_at_threshold``, ``recall_at_threshold``, ``fpr_at_threshold``,
    ``threshold_at_target_precision`` (this data's own pick; ``nan`` if unreachable),
    ``recall_at_target_precision``; ``<name>_low`` / ``<name>_high`` bootstrap bounds for
    PR-AUC, ROC-AUC, precision and recall at the threshold and recall at the target
    precision; ``fpr_segment_<segment>_<value>`` for each ``segments`` entry (an array aligned
    with the rows; values whose names would clash get ``_<digest>`` too); ``recall_family_<family>``
    when ``families`` (aligned truth families) is given. Without a usable threshold the
    at-threshold metrics are ``nan``.
    """
    _check_target(target_precision)
    y, s, w = _check(y_true, y_score, sample_weight)
    kept = w > 0
    if not kept.all():
        # Rows of weight 0 carry nothing: every figure (counts, bootstrap resamples and groups
        # included) is computed as if they were absent.
        y, s, w = y[kept], s[kept], w[kept]
        segments = {k: _aligned(v, kept, f"segments[{k!r}]") for k, v in (segments or {}).items()}
        families = None if families is None else _aligned(families, kept, "families")
    weights = None if sample_weight is None else w
    own_threshold = operating_threshold(y, s, target_precision, weights)
    if threshold is None:
        thr: float | None = own_threshold
    else:
        thr = None if math.isnan(float(threshold)) else float(threshold)

    out: dict[str, float] = {
        "n": float(y.size),
        "n_positive": float(y.sum()),
        "prevalence": _ratio(float(w[y == 1].sum()), float(w.sum())),
        "pr_auc": pr_auc(y, s, weights),
        "roc_auc": roc_auc(y, s, weights),
        "threshold": math.nan if thr is None else thr,
        "threshold_at_target_precision": math.nan if own_threshold is None else own_threshold,
        "recall_at_target_precision": recall_at_precision(y, s, target_precision, weights),
    }
    at_threshold = ("f1", "precision_at_threshold", "recall_at_threshold", "fpr_at_threshold")
    if thr is not None:
        tp, fp, fn, tn = _confusion(y, s, w, thr)
        values = (_ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(fp, fp + tn))
        out.update(zip(at_threshold, values, strict=True))
    else:
        out.update(dict.fromkeys(at_threshold, math.nan))

    def resampled(yb: np.ndarray, sb: np.ndarray, wb: np.ndarray | None) -> dict[str, float]:
        # one sort per resample serves every ranking metric
        wb = np.ones(yb.shape) if wb is None else wb
        _, tps, fps = _curve(yb, sb, wb)
        values = {
            "pr_auc": _curve_ap(tps, fps),
            "roc_auc": _curve_auc(tps, fps),
            "recall_at_target_precision": _curve_recall_at_precision(tps, fps, target_precision),
        }
        if thr is not None:
            tp, fp, fn, _ = _confusion(yb, sb, wb, thr)
            values.update(precision_at_threshold=_ratio(tp, tp + fp), recall_at_threshold=_ratio(tp, tp + fn))
        return values

    intervals = _bootstrap(resampled, y, s, weights, n=n_bootstrap, alpha=alpha, seed=seed, stratify=True)
    for name in ("pr_auc", "roc_auc", "precision_at_threshold", "recall_at_threshold", "recall_at_target_precision"):
        out[f"{name}_low"], out[f"{name}_high"] = intervals.get(name, (math.nan, math.nan))

    y_pred = None if thr is None else (s >= thr).astype(np.int8)
    for seg_name, seg_values in (segments or {}).items():
        if y_pred is None:
            groups = _groups(seg_values, y.size, f"segments[{seg_name!r}]")
            rates = dict.fromkeys(groups, math.nan)
        else:
            rates = fpr_by_segment(y, y_pred, seg_values, weights)
        names = _names(f"fpr_segment_{_key(seg_name)}_", rates)
        for value, rate in rates.items():
            _put(out, names[value], rate)
    if families is not None:
        if y_pred is None:
            fams = {k: math.nan for k in _groups(families, y.size, "families") if k != HUMAN_FAMILY}
        else:
            fams = recall_by_family(families, y_pred, sample_weight=weights)
        names = _names("recall_family_", fams)
        for family, rate in fams.items():
            _put(out, names[family], rate)
    return out
