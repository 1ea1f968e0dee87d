"""The knobs the train, heavy, cascade, stage-2 and monitor steps check (conf sections ``train``, ``heavy``, ``cascade``
and ``monitoring``), as dataclasses that check themselves when built.

Kept apart from the steps, and light (no pandas, numpy, torch, pyspark.ml or xgboost), so that every command
and job checks them at start-up (:func:`botwatch.entry.load_checked_config`), before anything runs, at no cost
beside reading the conf.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from botwatch.config import ConfigError

PREVALENCE_AUTO = "auto"
DEVICES = ("auto", "cpu", "cuda")


def knobs_of(params: Any, section: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a conf section that are fields of the dataclass ``params`` (a section also holds knobs
    other code reads: ``cascade`` holds the training side's, the scoring side's and ``enabled``)."""
    return {k: v for k, v in section.items() if k in params.__dataclass_fields__}


class FromConf:
    """``from_conf(section)``: the dataclass built from a conf section's entries that are its fields."""

    @classmethod
    def from_conf(cls, section: Mapping[str, Any]) -> Self:
        return cls(**knobs_of(cls, section))


def below_floor(params: Any, section: str, names: Sequence[str], floor: int = 1) -> list[str]:
    """One message per knob of ``names`` on ``params`` below ``floor``, each naming the knob as ``section.name``."""
    return [f"{section}.{name} must be at least {floor}, got {getattr(params, name)}"
            for name in names if getattr(params, name) < floor]


def device_problems(section: str, device: str) -> list[str]:
    """The message for a ``device`` knob that is not one of :data:`DEVICES`, else none."""
    return [] if device in DEVICES else [f"{section}.device must be one of {DEVICES}, got {device!r}"]


def strata_edges_problem(edges: Sequence[Any]) -> str | None:
    """What is wrong with ``monitoring.strata_edges`` (the review strata's lower edges), else None: they must be
    finite numbers, the lowest at most 0 (scores below the first edge would be drawn under its label; a NaN
    edge gave a stratum no score falls in, and two of them names no precision could tell apart)."""
    try:
        values = [float(e) for e in edges]
    except (TypeError, ValueError):
        values = []
    if values and all(math.isfinite(v) for v in values) and min(values) <= 0:
        return None
    return (f"monitoring.strata_edges must list the strata's lower edges, finite numbers starting at 0 (scores "
            f"below the first edge would be drawn under its label); got {list(edges)}")


@dataclass
class XGBParams(FromConf):
    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 0.9
    colsample_bytree: float = 0.9
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 20
    num_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        # XGBoost refuses these (or, at a learning rate of 0, learns nothing) only once training starts.
        problems = below_floor(self, "train.xgb", ("n_estimators", "early_stopping_rounds", "num_workers"))
        problems += [f"train.xgb.{name} must be in (0, 1], got {getattr(self, name)}"
                     for name in ("subsample", "colsample_bytree") if not 0 < getattr(self, name) <= 1]
        problems += [f"train.xgb.{name} must be >= 0, got {getattr(self, name)}"
                     for name in ("max_depth", "min_child_weight", "reg_lambda") if getattr(self, name) < 0]
        if not self.learning_rate > 0:
            problems.append(f"train.xgb.learning_rate must be > 0, got {self.learning_rate}")
        if problems:
            raise ConfigError("; ".join(problems))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainParams:
    label_weights: dict[str, float]
    golden_share: float = 0.2
    golden_salt: str = "golden-v1"
    valid_days: int = 7
    target_precision: float = 0.95
    min_train_rows: int = 50
    min_positives: int = 5
    promotion_tolerance: float = 0.01
    max_champion_age_days: int = 7
    canary_features: list[str] = field(default_factory=list)
    canary_reg_param: float = 0.01
    n_bootstrap: int = 200
    seed: int = 0
    prevalence: float | str | None = PREVALENCE_AUTO
    prevalence_fallback: float = 0.03
    prevalence_max_rse: float = 0.3
    xgb: XGBParams = field(default_factory=XGBParams)

    def __post_init__(self) -> None:
        p = self.prevalence
        if isinstance(p, str) and p != PREVALENCE_AUTO:
            try:
                p = self.prevalence = float(p)  # a quoted number ("0.05"), as files held it before
            except ValueError:
                pass
        if not (p is None or p == PREVALENCE_AUTO or (_is_number(p) and 0.0 < float(p) < 1.0)):
            raise ConfigError(
                f"train.prevalence must be '{PREVALENCE_AUTO}', a bot share between 0 and 1, or null, got {p!r}"
            )
        # Checked here, not when auto first falls back to it after a model has trained.
        if not _is_number(self.prevalence_fallback) or not 0.0 < float(self.prevalence_fallback) < 1.0:
            raise ConfigError(f"train.prevalence_fallback must be a bot share between 0 and 1 (exclusive), "
                              f"got {self.prevalence_fallback!r}")
        if not _is_number(self.prevalence_max_rse) or float(self.prevalence_max_rse) <= 0.0:
            raise ConfigError(f"train.prevalence_max_rse must be a number > 0, got {self.prevalence_max_rse!r}")

    @classmethod
    def from_conf(cls, section: dict) -> TrainParams:
        return cls(**{**knobs_of(cls, section), "xgb": XGBParams.from_conf(section.get("xgb") or {})})


@dataclass
class MonitorParams(FromConf):
    psi_soft: float = 0.25
    psi_hard: float = 2.0
    flagged_ratio_soft: float = 2.0
    flagged_ratio_hard: float = 10.0
    trailing_days: int = 14
    score_reference_days: int = 7
    label_lookback_days: int = 28
    label_sources: list[str] = field(default_factory=lambda: ["investigator", "appeal"])
    review_label_sources: list[str] = field(default_factory=lambda: ["investigator"])
    review_budget: int = 200
    review_shares: dict[str, float] = field(
        default_factory=lambda: {"uncertain": 0.3, "stratified": 0.5, "exploration": 0.2}
    )
    uncertain_band: float = 0.05
    strata_edges: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.05, 0.2, 0.5, 0.8])
    min_per_stratum: int = 2
    sampling_salt: str = "review-v1"
    heatmap_days: int = 14
    heatmap_features: int = 30

    def __post_init__(self) -> None:
        # Checked before the step writes anything: a ratio limit of 1 or less alerts (and retrains) every night.
        problems = []
        if not 0 < self.psi_soft <= self.psi_hard:
            problems.append(f"monitoring.psi_soft ({self.psi_soft}) must be above 0 and at most monitoring.psi_hard "
                            f"({self.psi_hard})")
        if not 1 < self.flagged_ratio_soft <= self.flagged_ratio_hard:
            problems.append(f"monitoring.flagged_ratio_soft ({self.flagged_ratio_soft}) must be above 1 and at most "
                            f"monitoring.flagged_ratio_hard ({self.flagged_ratio_hard}): a rate this many times the "
                            "usual, or at most its inverse, alerts")
        problems += below_floor(self, "monitoring", ("trailing_days", "score_reference_days", "label_lookback_days"))
        if (edges_problem := strata_edges_problem(self.strata_edges)) is not None:
            problems.append(edges_problem)
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class HeavyConfig:
    """Knobs of the heavy model (conf section ``heavy``); saved with every trained model."""

    max_len: int = 128  # events per sequence (the last L)
    lookback_days: int = 28  # days of events the sequence may come from
    neighbor_k: int = 16  # neighbours sampled for the GraphSAGE mean
    neighbor_seed: int = 7  # seed of the neighbour sample
    event_embed_dim: int = 16
    dt_embed_dim: int = 8
    seq_hidden: int = 64  # GRU hidden size = size of the sequence encoding
    tab_hidden: int = 64
    nbr_hidden: int = 32
    head_hidden: int = 64
    dropout: float = 0.1
    # Per training row, the tabular and neighbour branches are dropped together with this probability
    # (their encodings zeroed, the kept ones not rescaled; see forward): the head must also score from the
    # sequence alone, so the slower-learning GRU is not starved by the dense features' quick fit.
    dense_dropout: float = 0.5
    lr: float = 5e-3
    weight_decay: float = 1e-4
    epochs: int = 40
    patience: int = 10  # epochs without a better validation loss before stopping
    batch_size: int = 128
    max_grad_norm: float = 1.0
    # Members trained independently (seeds seed, seed+1, ...) whose probabilities are averaged. One
    # model's held-out mimic PR-AUC swung from 0.54 to 0.84 with the seed alone; four averaged: 0.71-0.83
    # over three sets of seeds (BENCHMARKS.md).
    ensemble: int = 4
    seed: int = 7
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch CPU threads while training; 0 keeps torch's default

    def __post_init__(self) -> None:
        problems = device_problems("heavy", self.device)
        problems += below_floor(self, "heavy", ("max_len", "lookback_days", "neighbor_k", "event_embed_dim",
                                                "dt_embed_dim", "seq_hidden", "tab_hidden", "nbr_hidden", "head_hidden",
                                                "epochs", "patience", "batch_size", "ensemble"))
        problems += below_floor(self, "heavy", ("num_threads",), floor=0)  # 0: torch's default
        if problems:
            raise ConfigError("; ".join(problems))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"heavy.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.dense_dropout < 1.0:
            raise ConfigError(f"heavy.dense_dropout must be in [0, 1), got {self.dense_dropout}")
        if not self.max_grad_norm > 0:
            # torch clips to 0 (no learning at all) or flips the gradients below it
            raise ConfigError(f"heavy.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"heavy.lr must be > 0 and heavy.weight_decay >= 0, got {self.lr}, {self.weight_decay}")

    @property
    def encoding_size(self) -> int:
        """Size of a cached sequence encoding: every member's, side by side."""
        return self.seq_hidden * self.ensemble

    @classmethod
    def saved(cls, config: Mapping[str, Any]) -> HeavyConfig:
        """The knobs saved with a trained model (its ``heavy.json``). A model saved before ``ensemble`` existed
        is one model, whatever today's default. Raises ConfigError for a knob this code lacks or a value it refuses
        (saved by another release)."""
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"heavy knobs {unknown} are not knobs of this code")
        return cls(**{"ensemble": 1, **config})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HeavyConfig:
        """Build from a conf section (``conf.section("heavy")``); keys that are not knobs here are ignored."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key in known and value is not None:
                default = known[key].default
                kwargs[key] = type(default)(value) if isinstance(default, (int, float)) else value
        return cls(**kwargs)


@dataclass(frozen=True)
class CascadeParams(FromConf):
    """Conf section ``cascade`` (training side)."""

    distill_label_weight: float = 0.5
    distill_teacher_weight: float = 0.5
    keep_share: float = 0.99
    budget: float = 0.10
    calibration_accounts: int = 20000

    def __post_init__(self) -> None:
        # Else found by the heavy train step's calibration, after a night's features and stage-1 scores.
        if not 0.0 < self.keep_share <= 1.0:
            raise ConfigError(f"cascade.keep_share must be in (0, 1], got {self.keep_share}")
        if not 0.0 <= self.budget <= 1.0:
            raise ConfigError(f"cascade.budget must be in [0, 1], got {self.budget}")


@dataclass(frozen=True)
class InferenceSettings(FromConf):
    """Knobs of stage-2 inference (conf section ``cascade``, scoring side)."""

    batch_size: int = 1024
    device: str = "auto"
    quantize_cpu: bool = True
    torch_threads: int = 1
    partitions: int = 0
    embedding_cache: bool = True

    def __post_init__(self) -> None:
        # Else found inside the Python workers, after a night's stage-1 scores.
        # 0: the default (the model's training batch size; torch's threads; Spark's default parallelism)
        problems = below_floor(self, "cascade", ("batch_size", "torch_threads", "partitions"), floor=0)
        problems += device_problems("cascade", self.device)
        if problems:
            raise ConfigError("; ".join(problems))
