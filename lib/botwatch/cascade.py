"""The cascade's flag threshold: which stage-1 scores send an account on to the heavy model.

Chosen on a sample of accounts scored by both models: the highest stage-1 threshold that keeps
at least ``keep_share`` of the accounts the heavy model on everyone would action, unless that
sends more than ``budget`` of all accounts to stage 2 — then the budget's threshold is used and
the recall it loses (against heavy-on-everyone) is reported.

Usage::

    choice = choose_flag_threshold(stage1_scores, heavy_actions, keep_share=0.99, budget=0.10)
    choice.threshold, choice.budget_binds, choice.recall_lost

Every choice is kept in ``cascade.json`` beside the stage-1 champion's artifacts
(:func:`record_choice`); scoring D reads the latest one made on or before D (:func:`stored_choices`,
:func:`choice_for`).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from botwatch import registry

# Kept with each stage-1 champion's artifacts: every flag-threshold choice made for it.
CASCADE_FILE = "cascade.json"


class CascadeConfigError(ValueError):
    """A cascade knob is out of range; fix it in conf (section ``cascade``)."""


@dataclass(frozen=True)
class FlagChoice:
    threshold: float  # flag when stage1_score >= threshold (inf: flag nobody)
    keep_threshold: float  # the highest threshold keeping keep_share of heavy's actions
    budget_threshold: float  # the lowest threshold flagging at most budget of the accounts
    budget_binds: bool
    flagged_share: float  # share of the sample flagged at ``threshold``
    recall_kept: float  # share of heavy's would-be actions flagged (nan: heavy actions nobody)
    recall_lost: float  # 1 - recall_kept
    n_accounts: int
    n_heavy_actions: int

    def to_dict(self) -> dict:
        """JSON-ready: JSON has no infinities, so they are kept as "inf" / "-inf" (flag nobody / flag
        everyone: the sign matters); NaN becomes null. Read thresholds back with :func:`threshold_from_json`."""
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _json_float(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def threshold_from_json(value: float | str | None) -> float:
    """A threshold written by :meth:`FlagChoice.to_dict`. Null (files written before the sign was kept)
    reads as inf, flag nobody: the safe side for compute."""
    return math.inf if value is None else float(value)


def _choices(stored: dict | None) -> list[dict]:
    if not stored:
        return []
    return list(stored["choices"]) if "choices" in stored else [stored]  # older files hold one choice


def with_choice(stored: dict | None, choice: dict) -> dict:
    """``cascade.json``'s content after recording ``choice`` (with ``heavy_version`` and ``chosen_on``).
    Every choice is kept, one per (heavy version, date): a later training night must not change
    what a rerun of an earlier date flags."""
    key = (choice["heavy_version"], str(choice["chosen_on"]))
    kept = [c for c in _choices(stored) if (c.get("heavy_version"), str(c.get("chosen_on"))) != key]
    return {"choices": sorted([*kept, choice], key=lambda c: str(c.get("chosen_on")))}


def choice_for(stored: dict | None, heavy_version: int, as_of: dt.date | None = None) -> dict | None:
    """The latest choice made for ``heavy_version`` on or before ``as_of`` (any date when None)."""
    fits = [c for c in _choices(stored) if c.get("heavy_version") == heavy_version
            and (as_of is None or str(c.get("chosen_on")) <= as_of.isoformat())]
    return max(fits, key=lambda c: str(c.get("chosen_on")), default=None)


def stored_choices(artifact_path: str) -> dict | None:
    """The ``cascade.json`` kept with a stage-1 champion's artifacts; None before any choice was made for it."""
    try:
        return registry.read_artifact(artifact_path, CASCADE_FILE)
    except FileNotFoundError:
        return None


def record_choice(artifact_path: str, choice: dict) -> None:
    """Adds ``choice`` to the stage-1 champion's ``cascade.json`` (see :func:`with_choice`)."""
    registry.write_artifact(artifact_path, CASCADE_FILE, with_choice(stored_choices(artifact_path), choice))


def share_of(share: float, n: int) -> Fraction:
    """``share * n`` exactly, the share taken as written (``0.57``: 57/100). A double product falls an ulp
    below a whole number past ~10^7 accounts, more than any epsilon that is safe for small ``n`` (0.57 of
    38,130,100 is 21,734,157; in doubles 21,734,156.999999996)."""
    return Fraction(str(float(share))) * n


def budget_count(budget: float, n: int) -> int:
    """The most of ``n`` accounts that a ``budget`` share lets through: ``floor(budget * n)``."""
    return math.floor(share_of(budget, n))


def budget_threshold(scores: np.ndarray, budget: float) -> float:
    """The lowest threshold among the scores that flags at most ``floor(budget * n)`` accounts
    (``score >= threshold``); ``inf`` when even the top score's ties exceed it."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    allowed = budget_count(budget, len(s))
    if len(s) == 0 or allowed >= len(s):
        return -math.inf
    # Candidates are the distinct scores; count(score >= c) = n - searchsorted(s, c, "left").
    cand = np.unique(s)
    counts = len(s) - np.searchsorted(s, cand, side="left")
    ok = cand[counts <= allowed]
    return float(ok.min()) if len(ok) else math.inf


def keep_threshold(action_scores: np.ndarray, keep_share: float) -> float:
    """The highest threshold flagging at least ``keep_share`` of ``action_scores`` (the
    stage-1 scores of heavy's would-be actions): their ``ceil(keep_share * m)``-th largest."""
    a = np.sort(np.asarray(action_scores, dtype=np.float64))[::-1]
    if len(a) == 0:
        return math.inf
    need = max(1, math.ceil(share_of(keep_share, len(a))))
    return float(a[need - 1])


def choose_flag_threshold(
    stage1_scores: np.ndarray, heavy_actions: np.ndarray, *, keep_share: float, budget: float
) -> FlagChoice:
    """See the module docstring. ``heavy_actions`` is a boolean array aligned with the scores.

    With no heavy actions in the sample there is no recall to keep: the budget alone decides
    (stage 2 still refines the review band).
    """
    if not 0.0 < keep_share <= 1.0:
        raise CascadeConfigError(f"cascade.keep_share must be in (0, 1], got {keep_share}")
    if not 0.0 <= budget <= 1.0:
        raise CascadeConfigError(f"cascade.budget must be in [0, 1], got {budget}")
    s = np.asarray(stage1_scores, dtype=np.float64)
    acts = np.asarray(heavy_actions, dtype=bool)
    if s.shape != acts.shape or not np.all(np.isfinite(s)):
        raise ValueError("stage1_scores must be finite and aligned with heavy_actions")
    by_budget = budget_threshold(s, budget)
    by_keep = keep_threshold(s[acts], keep_share) if acts.any() else by_budget
    threshold = max(by_keep, by_budget)
    kept = float(np.mean(s[acts] >= threshold)) if acts.any() else math.nan
    return FlagChoice(
        threshold=threshold,
        keep_threshold=by_keep,
        budget_threshold=by_budget,
        budget_binds=bool(acts.any() and by_budget > by_keep),
        flagged_share=float(np.mean(s >= threshold)) if len(s) else 0.0,
        recall_kept=kept,
        recall_lost=1.0 - kept if acts.any() else math.nan,
        n_accounts=int(len(s)),
        n_heavy_actions=int(acts.sum()),
    )
