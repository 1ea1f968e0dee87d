"""The heavy stage-2 model: a GRU over each account's recent action sequence, MLPs over its
tabular features and its neighbours' aggregates, and a fused head giving one bot logit.

Inputs are rows of a pandas frame (Spark's output of
:func:`botwatch.models.sequences.gather_sequences` and
:func:`~botwatch.models.sequences.neighbor_mean` joined to the features, collected with Arrow).
Missing tabular or neighbour values (NaN / null / inf) become 0 plus a per-feature "missing"
indicator, so the model can tell missing from zero. Features are standardised with means and
standard deviations fitted on the training rows and saved with the model.

Usage::

    model = train_heavy(train_pdf, valid_pdf, tabular_cols, neighbor_cols, config=HeavyConfig(epochs=20))
    scores = model.predict(pdf)                  # probabilities in [0, 1]
    model.save("artifacts/heavy/v3")
    cpu_model = load_heavy("artifacts/heavy/v3", device="cpu").quantize_dynamic()

Artifacts are a ``state_dict`` (tensors only, loaded with ``weights_only=True``) and a JSON file
with the configuration, column lists and standardiser: no pickled code.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from botwatch import tables as t
from botwatch.params import DEVICES, HeavyConfig
from botwatch.scoring.worker import (  # the torch-free module that reads artifacts
    HEAVY_FORMAT_VERSION,
    META_FILE,
    STATE_FILE,
    artifact_problem,
)

# Standardised values beyond this many standard deviations are clipped (heavy-tailed counts).
CLIP_STD = 10.0

# Keys of the tensor dict built by to_tensors and read by HeavyModel.
EVENT_TYPE = "event_type"
DT_BUCKET = "dt_bucket"
HOUR_SIN = "hour_sin"
HOUR_COS = "hour_cos"
LENGTH = "seq_len"
TABULAR = "tabular"
NEIGHBOR = "neighbor"


class HeavyInputError(ValueError):
    """A frame handed to the heavy model lacks columns or holds values it cannot use."""


class HeavyArtifactError(ValueError):
    """A saved heavy model cannot be loaded (missing files, other format or vocabulary)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU falls back to the CPU with a warning."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        warnings.warn("heavy model: device 'cuda' requested but CUDA is not available; using the CPU", stacklevel=2)
    return torch.device("cpu")


# ---------------------------------------------------------------- standardiser


@dataclass
class Standardizer:
    """Per-column mean and standard deviation of the training rows; NaN (missing) passes through.

    What never varied in training is held at what training saw: the network's weights for it never got
    a gradient, so a value it takes later would move the score at random. ``frozen``: the column had one
    value where present (scaled to 0 always); ``always_missing``: it was always missing (NaN always);
    ``never_missing``: it was always present (a missing value becomes the mean, 0).
    """

    columns: list[str]
    means: np.ndarray
    stds: np.ndarray
    frozen: np.ndarray | None = None
    always_missing: np.ndarray | None = None
    never_missing: np.ndarray | None = None

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str]) -> Standardizer:
        values = np.asarray(values, dtype=np.float64).reshape(len(values), len(columns))
        finite = np.where(np.isfinite(values), values, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns
            means = np.nanmean(finite, axis=0) if len(values) else np.zeros(len(columns))
            stds = np.nanstd(finite, axis=0) if len(values) else np.ones(len(columns))
            # One value where present: compared directly, since the mean of many copies of 123456.789
            # rounds, and their std comes out ~1e-11, not 0 (the constant then scaled to -1, others to +-10).
            varied = np.nanmax(finite, axis=0) > np.nanmin(finite, axis=0) if len(values) else np.ones(
                len(columns), bool)
        always_missing = ~np.isfinite(means)
        never_missing = np.asarray(~np.isnan(finite).any(axis=0) & (len(values) > 0))
        frozen = ~(varied & np.isfinite(stds) & (stds > 1e-12 * np.maximum(1.0, np.abs(np.nan_to_num(means)))))
        means = np.where(always_missing, 0.0, means)
        stds = np.where(frozen, 1.0, stds)
        return cls(list(columns), means, stds, frozen, always_missing, never_missing)

    def transform(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        finite = np.where(np.isfinite(values), values, np.nan)
        scaled = np.clip((finite - self.means) / self.stds, -CLIP_STD, CLIP_STD)  # NaN stays NaN
        if self.frozen is not None:
            scaled = np.where(self.frozen & ~np.isnan(scaled), 0.0, scaled)
        if self.never_missing is not None:
            scaled = np.where(self.never_missing & np.isnan(scaled), 0.0, scaled)
        if self.always_missing is not None:
            scaled = np.where(self.always_missing, np.nan, scaled)
        return scaled

    def to_dict(self) -> dict[str, Any]:
        flags = {k: v.tolist() for k, v in self._flags().items() if v is not None}
        return {"columns": self.columns, "means": self.means.tolist(), "stds": self.stds.tolist(), **flags}

    def _flags(self) -> dict[str, np.ndarray | None]:
        return {"frozen": self.frozen, "always_missing": self.always_missing, "never_missing": self.never_missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Standardizer:
        # Artifacts saved before the flags existed scale every column (what they were trained with).
        flags = [np.asarray(data[k], bool) if k in data else None for k in ("frozen", "always_missing",
                                                                              "never_missing")]
        return cls(list(data["columns"]), np.asarray(data["means"], np.float64),
                   np.asarray(data["stds"], np.float64), *flags)


# ---------------------------------------------------------------- tensors


def _lists(cells: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An array column as (items, offsets): row i is ``items[offsets[i]:offsets[i + 1]]``.

    Arrow converts the whole column in C (a null cell is an empty row); a loop over cells would
    cost ~1 µs a row, which starves a GPU.
    """
    import pyarrow as pa

    try:
        arr = pa.array(cells, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise HeavyInputError(f"sequence column {name!r} must hold arrays of numbers (or nulls): {err}") from err
    if not pa.types.is_list(arr.type) and not pa.types.is_null(arr.type):
        raise HeavyInputError(f"sequence column {name!r} must hold arrays, got {arr.type}")
    if pa.types.is_null(arr.type):  # every cell null
        return np.zeros(0), np.zeros(len(cells) + 1, np.int64)
    # Raw offsets index the raw child values, also where the array is a slice of a larger one.
    return arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy().astype(np.int64)


def _pad(lists: tuple[np.ndarray, np.ndarray], lengths: np.ndarray, max_len: int, dtype: Any, name: str,
         clip: tuple[int, int] | None = None) -> np.ndarray:
    """Left-aligned rows of the last ``lengths[i]`` items of each array cell (``lists`` as
    :func:`_lists` gives them), zero padded to ``max_len``; ``clip`` bounds the items (not the padding)."""
    flat, offsets = lists
    if (np.diff(offsets) < lengths).any():
        raise HeavyInputError(f"sequence column {name!r} has a shorter array than {t.SEQ_EVENT_TYPE!r} in a row; "
                              "build all sequence columns with gather_sequences")
    # Index arithmetic over the kept items only (not rows x max_len): row i keeps the last
    # lengths[i] items of its array, which ends at offsets[i + 1].
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    step = np.arange(len(rows)) - np.repeat(starts, lengths)
    items = flat[np.repeat(offsets[1:] - lengths, lengths) + step]
    if clip is not None:
        items = np.clip(items, *clip)
    out = np.zeros((len(lengths), max_len), dtype=dtype)
    out[rows, step] = items
    return out


def sequence_lengths(cells: pd.Series, max_len: int) -> np.ndarray:
    """Items per array cell (0 for null), capped at ``max_len``."""
    return _capped_lengths(_lists(cells, t.SEQ_EVENT_TYPE)[1], max_len)


def _capped_lengths(offsets: np.ndarray, max_len: int) -> np.ndarray:
    return np.minimum(np.diff(offsets), max_len)


def _matrix(pdf: pd.DataFrame, cols: Sequence[str]) -> np.ndarray:
    if not cols:
        return np.zeros((len(pdf), 0), dtype=np.float64)
    frame = pdf[list(cols)]
    # Spark hands numeric columns over as numeric dtypes: one conversion; anything else is coerced per column.
    if not all(pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d) for d in frame.dtypes):
        frame = frame.apply(pd.to_numeric, errors="coerce")
    values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)  # inf counts as missing


def check_frame(pdf: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise :class:`HeavyInputError` naming the columns ``pdf`` lacks."""
    missing = [c for c in columns if c not in pdf.columns]
    if missing:
        raise HeavyInputError(
            f"{where}: missing columns {missing}; found {sorted(map(str, pdf.columns))}. Join the features with "
            "gather_sequences(...) and neighbor_mean(...) output (botwatch.models.sequences) first."
        )


def to_tensors(
    pdf: pd.DataFrame,
    tabular_cols: Sequence[str],
    neighbor_cols: Sequence[str],
    max_len: int,
    standardizer: Standardizer | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of the model's inputs from a pandas frame (one row per account, row order kept).

    The ``seq_*`` array columns (null = no events) are truncated to their last ``max_len`` items
    and zero padded on the right; ``seq_len`` is recomputed from the arrays. Tabular and
    neighbour columns become float matrices with NaN for missing (null, NaN, inf), standardised
    when ``standardizer`` is given (fitted on ``tabular_cols + neighbor_cols``).
    """
    check_frame(pdf, (t.SEQ_EVENT_TYPE, t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN, t.SEQ_HOUR_COS, *tabular_cols,
                      *neighbor_cols), "heavy model input")
    # Each array column is converted once; the event types' offsets give every column's lengths.
    events = _lists(pdf[t.SEQ_EVENT_TYPE], t.SEQ_EVENT_TYPE)
    lengths = _capped_lengths(events[1], max_len)
    event_type = _pad(events, lengths, max_len, np.int64, t.SEQ_EVENT_TYPE, clip=(0, t.EVENT_TYPE_VOCAB - 1))
    dt = _pad(_lists(pdf[t.SEQ_DT_BUCKET], t.SEQ_DT_BUCKET), lengths, max_len, np.int64, t.SEQ_DT_BUCKET,
              clip=(0, t.DT_BUCKET_MAX))
    hour_sin = _pad(_lists(pdf[t.SEQ_HOUR_SIN], t.SEQ_HOUR_SIN), lengths, max_len, np.float32, t.SEQ_HOUR_SIN)
    hour_cos = _pad(_lists(pdf[t.SEQ_HOUR_COS], t.SEQ_HOUR_COS), lengths, max_len, np.float32, t.SEQ_HOUR_COS)
    dense = _matrix(pdf, [*tabular_cols, *neighbor_cols])
    if standardizer is not None:
        if standardizer.columns != [*tabular_cols, *neighbor_cols]:
            raise HeavyInputError(
                f"standardiser was fitted on {standardizer.columns}, got {[*tabular_cols, *neighbor_cols]}"
            )
        dense = standardizer.transform(dense)
    n_tab = len(tabular_cols)
    return {
        EVENT_TYPE: torch.from_numpy(event_type),
        DT_BUCKET: torch.from_numpy(dt),
        HOUR_SIN: torch.from_numpy(np.nan_to_num(hour_sin)),
        HOUR_COS: torch.from_numpy(np.nan_to_num(hour_cos)),
        LENGTH: torch.from_numpy(lengths),
        TABULAR: torch.from_numpy(np.ascontiguousarray(dense[:, :n_tab], dtype=np.float32)),
        NEIGHBOR: torch.from_numpy(np.ascontiguousarray(dense[:, n_tab:], dtype=np.float32)),
    }


def _slice(tensors: Mapping[str, torch.Tensor], index: torch.Tensor | slice, device: torch.device) -> dict:
    return {k: v[index].to(device, non_blocking=True) for k, v in tensors.items()}


# ---------------------------------------------------------------- model


def _with_missing(x: torch.Tensor) -> torch.Tensor:
    """NaN -> 0 with a 0/1 missing indicator per feature appended, so missing is not the same as 0."""
    missing = torch.isnan(x)
    values = torch.where(missing, torch.zeros_like(x), x).clamp(-CLIP_STD, CLIP_STD)
    return torch.cat([values, missing.to(x.dtype)], dim=1)


def _mlp(n_in: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.GELU(),
    )


class HeavyModel(nn.Module):
    """Sequence GRU + tabular MLP + neighbour MLP -> fused head -> one logit per account.

    ``forward`` takes the dict of :func:`to_tensors` (standardised); :meth:`encode` is the
    sequence encoder alone and :meth:`head` scores from an encoding, so a cache of encodings
    can skip the GRU for accounts whose events did not change.
    """

    def __init__(self, n_tabular: int, n_neighbor: int, config: HeavyConfig):
        super().__init__()
        self.n_tabular, self.n_neighbor = n_tabular, n_neighbor
        self.dense_dropout = float(config.dense_dropout)
        self.event_emb = nn.Embedding(t.EVENT_TYPE_VOCAB, config.event_embed_dim, padding_idx=0)
        self.dt_emb = nn.Embedding(t.DT_BUCKETS, config.dt_embed_dim)
        self.gru = nn.GRU(config.event_embed_dim + config.dt_embed_dim + 2, config.seq_hidden, batch_first=True)
        self.seq_norm = nn.LayerNorm(config.seq_hidden)
        # Accounts without events in the window get a learned encoding instead of the GRU's.
        self.empty_seq = nn.Parameter(torch.zeros(config.seq_hidden))
        self.tab = _mlp(2 * n_tabular, config.tab_hidden, config.dropout) if n_tabular else None
        self.nbr = _mlp(2 * n_neighbor, config.nbr_hidden, config.dropout) if n_neighbor else None
        fused = config.seq_hidden + (config.tab_hidden if n_tabular else 0) + (config.nbr_hidden if n_neighbor else 0)
        self.fuse = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(fused, config.head_hidden),
            nn.LayerNorm(config.head_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, 1),
        )

    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sequence encoding, shape (batch, seq_hidden)."""
        lengths = batch[LENGTH]
        if lengths.numel() == 0:
            return self.empty_seq.new_zeros((0, self.empty_seq.numel()))
        # Padding past the batch's longest sequence is never computed.
        span = max(int(lengths.max()), 1)
        steps = torch.cat(
            [
                self.event_emb(batch[EVENT_TYPE][:, :span]),
                self.dt_emb(batch[DT_BUCKET][:, :span]),
                batch[HOUR_SIN][:, :span].unsqueeze(-1),
                batch[HOUR_COS][:, :span].unsqueeze(-1),
            ],
            dim=-1,
        )
        # The GRU is causal, so its output at step len-1 is exactly the state after the last real
        # event: the mask without pack_padded_sequence, whose backward is ~4x slower on the CPU.
        out, _ = self.gru(steps)
        last = (lengths.clamp(min=1) - 1).to(out.device)
        encoded = self.seq_norm(out[torch.arange(len(out), device=out.device), last])
        # Accounts without events get the learned empty encoding.
        return torch.where((lengths > 0).unsqueeze(-1), encoded, self.empty_seq.expand_as(encoded))

    def head(self, encoded: torch.Tensor, tabular: torch.Tensor, neighbor: torch.Tensor) -> torch.Tensor:
        """Logits, shape (batch,), from a sequence encoding and the standardised dense features."""
        dense = []
        if self.tab is not None:
            dense.append(self.tab(_with_missing(tabular)))
        if self.nbr is not None:
            dense.append(self.nbr(_with_missing(neighbor)))
        if self.training and self.dense_dropout > 0 and dense:
            # Branch dropout (config.dense_dropout): one draw per row for both dense branches. Not
            # rescaled by 1 / (1 - p) like unit dropout: every dense input of a row moves together, so
            # scoring (x1) would sit between the two training modes (x0, x2); unscaled, a kept row
            # trains exactly as it scores and a dropped one teaches scoring from the sequence alone.
            keep = torch.rand(len(encoded), 1, device=encoded.device) >= self.dense_dropout
            dense = [d * keep.to(d.dtype) for d in dense]
        return self.fuse(torch.cat([encoded, *dense], dim=1)).squeeze(-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encode(batch), batch[TABULAR], batch[NEIGHBOR])


class HeavyEnsemble(nn.Module):
    """Independently trained :class:`HeavyModel` members scored as one: encodings side by side,
    the logit of the members' mean probability."""

    def __init__(self, members: Sequence[HeavyModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def _models(self) -> list[HeavyModel]:
        return [cast(HeavyModel, m) for m in self.members]

    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Every member's sequence encoding, concatenated: shape (batch, members x seq_hidden)."""
        return torch.cat([m.encode(batch) for m in self._models()], dim=1)

    def head(self, encoded: torch.Tensor, tabular: torch.Tensor, neighbor: torch.Tensor) -> torch.Tensor:
        parts = encoded.chunk(len(self.members), dim=1)
        logits = torch.stack([m.head(e, tabular, neighbor).float() for m, e in zip(self._models(), parts, strict=True)])
        # logit(mean p) = log(sum p) - log(sum (1 - p)), in log space: no clamping at p near 0 or 1.
        logsig = nn.functional.logsigmoid
        return torch.logsumexp(logsig(logits), dim=0) - torch.logsumexp(logsig(-logits), dim=0)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encode(batch), batch[TABULAR], batch[NEIGHBOR])


def build_model(n_tabular: int, n_neighbor: int, config: HeavyConfig) -> HeavyModel | HeavyEnsemble:
    """An untrained model of ``config``'s shape: one :class:`HeavyModel`, or an ensemble of them."""
    if config.ensemble == 1:
        return HeavyModel(n_tabular, n_neighbor, config)
    return HeavyEnsemble([HeavyModel(n_tabular, n_neighbor, config) for _ in range(config.ensemble)])


# ---------------------------------------------------------------- trained model


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """sigmoid(logits) as float64 numpy, computed in double: float32 rounds every logit above
    ~16.6 to exactly 1.0, and those ties would hide the ranking among the surest bots."""
    return torch.sigmoid(logits.double()).cpu().numpy()


def probability_logits(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64: +-inf at exactly 1 and 0, which the sigmoid maps back."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


@dataclass
class TrainedHeavy:
    """A trained heavy model with everything needed to score new rows."""

    model: HeavyModel | HeavyEnsemble
    standardizer: Standardizer
    tabular_cols: list[str]
    neighbor_cols: list[str]
    config: HeavyConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    quantized: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Platt (a, b) on the logit of the network's probability: training sets it on validation rows
    # reweighted to the population's bot share, so stage 2's score reads on stage 1's scale.
    calibration: tuple[float, float] = (1.0, 0.0)

    @property
    def input_columns(self) -> list[str]:
        """Columns :meth:`predict` reads."""
        return [t.SEQ_EVENT_TYPE, t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN, t.SEQ_HOUR_COS, *self.tabular_cols,
                *self.neighbor_cols]

    @property
    def epochs_run(self) -> int:
        """Epochs trained; for an ensemble, the most any one member ran (its history holds every member's)."""
        per_member = Counter(record.get("member", 0) for record in self.history)
        return max(per_member.values(), default=0)

    def tensors(self, pdf: pd.DataFrame) -> dict[str, torch.Tensor]:
        return to_tensors(pdf, self.tabular_cols, self.neighbor_cols, self.config.max_len, self.standardizer)

    def to(self, device: str | torch.device) -> TrainedHeavy:
        """This model on ``device`` (``auto``/``cpu``/``cuda`` or a torch device); quantised models stay on the CPU."""
        target = resolve_device(device) if isinstance(device, str) else device
        if self.quantized and target.type != "cpu":
            raise ValueError("a dynamically quantised model runs on the CPU only; score with the float model on CUDA")
        self.model.to(target)
        self.device = target
        return self

    def _batched(self, pdf: pd.DataFrame, batch_size: int | None) -> Iterator[dict[str, torch.Tensor]]:
        tensors = self.tensors(pdf)
        size = int(batch_size or self.config.batch_size)
        for start in range(0, len(pdf), size):
            yield _slice(tensors, slice(start, start + size), self.device)

    def predict(self, pdf: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        """Bot probabilities in [0, 1], one per row of ``pdf``, in row order."""
        self.model.eval()
        out = [np.zeros(0)]
        with torch.inference_mode():
            for batch in self._batched(pdf, batch_size):
                out.append(probabilities(self.model(batch)))
        return self.calibrated(np.concatenate(out))

    def calibrated(self, p: np.ndarray) -> np.ndarray:
        """``sigmoid(a * logit(p) + b)`` for this model's calibration (the identity leaves ``p`` as it is);
        ``botwatch.training_heavy.uncalibrated_score`` is its inverse, as a Spark Column."""
        a, b = self.calibration
        if (a, b) == (1.0, 0.0):
            return p
        with np.errstate(over="ignore"):  # exp overflows to inf for the surest humans: score 0
            return 1.0 / (1.0 + np.exp(-(a * probability_logits(p) + b)))

    def encode_sequences(self, pdf: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        """The sequence encoder's output, shape (rows, ``config.encoding_size``), for an embedding cache."""
        self.model.eval()
        out = [np.zeros((0, self.config.encoding_size), np.float32)]
        with torch.inference_mode():
            for batch in self._batched(pdf, batch_size):
                out.append(self.model.encode(batch).float().cpu().numpy())
        return np.concatenate(out)

    def predict_from_encodings(
        self, encodings: np.ndarray, pdf: pd.DataFrame, batch_size: int | None = None
    ) -> np.ndarray:
        """Probabilities from cached sequence encodings (rows aligned with ``pdf``) and ``pdf``'s dense features."""
        check_frame(pdf, [*self.tabular_cols, *self.neighbor_cols], "heavy model input")
        if len(encodings) != len(pdf):
            raise HeavyInputError(f"{len(encodings)} encodings for {len(pdf)} rows; align them by account_id first")
        dense = torch.from_numpy(
            self.standardizer.transform(_matrix(pdf, [*self.tabular_cols, *self.neighbor_cols])).astype(np.float32)
        )
        enc = torch.from_numpy(np.asarray(encodings, dtype=np.float32))
        n_tab, size = len(self.tabular_cols), int(batch_size or self.config.batch_size)
        self.model.eval()
        out = [np.zeros(0)]
        with torch.inference_mode():
            for start in range(0, len(pdf), size):
                part = slice(start, start + size)
                d = dense[part].to(self.device)
                logits = self.model.head(enc[part].to(self.device), d[:, :n_tab], d[:, n_tab:])
                out.append(probabilities(logits))
        return self.calibrated(np.concatenate(out))

    def quantize_dynamic(self) -> TrainedHeavy:
        """A CPU copy with int8 dynamic quantisation of the Linear layers and the GRU (this model is unchanged)."""
        model = copy.deepcopy(self.model).to("cpu").eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            from torch.ao.quantization import quantize_dynamic

            try:
                quantized = quantize_dynamic(model, {nn.Linear, nn.GRU}, dtype=torch.qint8)
            except (RuntimeError, NotImplementedError, AssertionError):
                # Some quantisation engines lack the dynamic GRU: quantise the Linear layers only.
                quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return dataclasses.replace(self, model=quantized, quantized=True, device=torch.device("cpu"))

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": HEAVY_FORMAT_VERSION,
            "kind": "heavy",
            "config": dataclasses.asdict(self.config),
            "tabular_cols": self.tabular_cols,
            "neighbor_cols": self.neighbor_cols,
            "standardizer": self.standardizer.to_dict(),
            "event_types": list(t.EVENT_TYPES),
            "dt_buckets": t.DT_BUCKETS,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "calibration": list(self.calibration),
            "torch_version": torch.__version__,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``model.pt`` (state_dict) and ``heavy.json`` (metadata) into folder ``path``; return it."""
        if self.quantized:
            raise ValueError("save the float model; quantise after loading with .quantize_dynamic()")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, folder / STATE_FILE)
        (folder / META_FILE).write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        return folder


def _pair(values: Sequence[float]) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def load_heavy(path: str | Path, device: str | None = None, name: str | None = None) -> TrainedHeavy:
    """Load a model written by :meth:`TrainedHeavy.save`; ``device`` overrides the saved ``device`` knob.
    ``name``: what errors call the model (default: its folder)."""
    folder = Path(path)
    meta_path, state_path = folder / META_FILE, folder / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise HeavyArtifactError(f"{folder}: expected {META_FILE} and {STATE_FILE}; save models with TrainedHeavy.save")
    meta = json.loads(meta_path.read_text())
    problem = artifact_problem(meta)
    if problem is not None:
        raise HeavyArtifactError(f"{name or folder}: {problem}; retrain the model (`botwatch train --date D`)")
    config = HeavyConfig.saved(meta["config"])
    if device is not None:
        config = dataclasses.replace(config, device=device)
    model = build_model(len(meta["tabular_cols"]), len(meta["neighbor_cols"]), config)
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    model.eval()
    trained = TrainedHeavy(
        model=model,
        standardizer=Standardizer.from_dict(meta["standardizer"]),
        tabular_cols=list(meta["tabular_cols"]),
        neighbor_cols=list(meta["neighbor_cols"]),
        config=config,
        history=list(meta.get("history", [])),
        best_epoch=int(meta.get("best_epoch", 0)),
        calibration=_pair(meta.get("calibration", (1.0, 0.0))),  # saved before calibration: none
    )
    return trained.to(config.device)


# ---------------------------------------------------------------- training


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators; on CUDA switch to deterministic kernels, restoring the settings after.

    Seeding alone is not enough on CUDA: on an H200 two seeded runs differed by 9e-5 and 1.8e-4
    (nondeterministic CUDA kernels), with ``torch.use_deterministic_algorithms`` by 0 (BENCHMARKS.md).
    cuBLAS needs a fixed workspace for that, read when the process first uses it; a value set by
    the user is kept.
    """
    torch.manual_seed(seed)
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.cuda.manual_seed_all(seed)
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    # warn_only: an op without a deterministic kernel warns instead of failing the training.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[:2]
        torch.use_deterministic_algorithms(old[2], warn_only=old[3])


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (0: leave as is). Oversubscribed cores slow the GRU ~10x."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)


def _targets(pdf: pd.DataFrame, label_col: str, weight_col: str | None, where: str) -> tuple[torch.Tensor, ...]:
    check_frame(pdf, [label_col] + ([weight_col] if weight_col else []), where)
    y = pd.to_numeric(pdf[label_col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    if not np.all(np.isfinite(y) & (y >= 0) & (y <= 1)):
        raise HeavyInputError(f"{where}: {label_col!r} must be in [0, 1] (labels or soft targets) with no nulls")
    if weight_col is None:
        w = np.ones(len(pdf))
    else:
        w = pd.to_numeric(pdf[weight_col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if not np.all(np.isfinite(w) & (w >= 0)):
            raise HeavyInputError(f"{where}: {weight_col!r} must be finite and >= 0 (pass weight_col=None for 1s)")
    if len(pdf) == 0 or w.sum() <= 0:
        raise HeavyInputError(f"{where}: no rows with positive weight to train or validate on")
    return torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w.astype(np.float32))


def _weighted_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    losses = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (losses * w).sum() / w.sum().clamp(min=1e-12)


def _evaluate(model: HeavyModel, tensors: dict, y: torch.Tensor, w: torch.Tensor, batch_size: int,
              device: torch.device) -> float:
    model.eval()
    total, weight = 0.0, float(w.sum())
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            part = slice(start, start + batch_size)
            logits = model(_slice(tensors, part, device)).float()
            losses = nn.functional.binary_cross_entropy_with_logits(logits, y[part].to(device), reduction="none")
            total += float((losses * w[part].to(device)).sum())
    return total / weight


def train_heavy(
    train_pdf: pd.DataFrame,
    valid_pdf: pd.DataFrame | None,
    tabular_cols: Sequence[str],
    neighbor_cols: Sequence[str],
    label_col: str = t.LABEL,
    weight_col: str | None = "weight",
    config: HeavyConfig = HeavyConfig(),
) -> TrainedHeavy:
    """Train the heavy model with AdamW on the weighted binary cross-entropy.

    ``label_col`` holds 0/1 labels or soft targets in [0, 1]; ``weight_col`` per-row weights
    (``None``: all 1). The model of the epoch with the lowest weighted validation loss is kept;
    training stops after ``config.patience`` epochs without improvement (with ``valid_pdf=None``
    it runs ``config.epochs`` and keeps the last). Seeded by ``config.seed``; runs on
    ``config.device`` (``auto``: CUDA when available). With ``config.ensemble`` = n > 1, n such
    runs (seeds ``seed`` .. ``seed + n - 1``) become one :class:`HeavyEnsemble`; the history's
    records then name their ``member`` and ``best_epoch`` is the largest of the members'.
    """
    tabular_cols, neighbor_cols = list(tabular_cols), list(neighbor_cols)
    y, w = _targets(train_pdf, label_col, weight_col, "train_heavy(train)")
    device = resolve_device(config.device)
    dense = _matrix(train_pdf, [*tabular_cols, *neighbor_cols])
    standardizer = Standardizer.fit(dense, [*tabular_cols, *neighbor_cols])
    train = to_tensors(train_pdf, tabular_cols, neighbor_cols, config.max_len, standardizer)
    valid, vy, vw = None, None, None
    if valid_pdf is not None:
        vy, vw = _targets(valid_pdf, label_col, weight_col, "train_heavy(valid)")
        valid = to_tensors(valid_pdf, tabular_cols, neighbor_cols, config.max_len, standardizer)

    valid_set = (valid, vy, vw) if valid is not None else None
    n_tab, n_nbr = len(tabular_cols), len(neighbor_cols)
    model: HeavyModel | HeavyEnsemble
    if config.ensemble == 1:
        model, history, best_epoch = _train_one(train, y, w, valid_set, n_tab, n_nbr, config, device)
    else:
        # Each member is a whole training run of its own seed (initialisation, dropout, batch order).
        members, history, best_epoch = [], [], 0
        for i in range(config.ensemble):
            member_config = dataclasses.replace(config, ensemble=1, seed=config.seed + i)
            member, member_history, member_best = _train_one(train, y, w, valid_set, n_tab, n_nbr, member_config,
                                                             device)
            members.append(member)
            history += [{"member": i, **record} for record in member_history]
            best_epoch = max(best_epoch, member_best)
        model = HeavyEnsemble(members)
    model.eval()
    return TrainedHeavy(
        model=model,
        standardizer=standardizer,
        tabular_cols=tabular_cols,
        neighbor_cols=neighbor_cols,
        config=config,
        history=history,
        best_epoch=best_epoch,
        device=device,
    )


def _train_one(
    train: dict, y: torch.Tensor, w: torch.Tensor, valid_set: tuple | None, n_tab: int, n_nbr: int,
    config: HeavyConfig, device: torch.device,
) -> tuple[HeavyModel, list[dict[str, Any]], int]:
    """One seeded training run: the model of the best validation epoch, the history and that epoch."""
    valid, vy, vw = valid_set if valid_set is not None else (None, None, None)
    with _seeded(config.seed, device), _threads(config.num_threads):
        shuffle = torch.Generator().manual_seed(config.seed)
        model = HeavyModel(n_tab, n_nbr, config).to(device)
        # No weight decay on biases, norms and the empty-sequence vector.
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        history: list[dict[str, Any]] = []
        best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            seen_loss, seen_weight = 0.0, 0.0
            order = torch.randperm(len(y), generator=shuffle)
            for start in range(0, len(y), config.batch_size):
                index = order[start:start + config.batch_size]
                batch = _slice(train, index, device)
                yb, wb = y[index].to(device), w[index].to(device)
                if float(wb.sum()) <= 0:
                    continue
                loss = _weighted_loss(model(batch).float(), yb, wb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                seen_loss += float(loss.detach()) * float(wb.sum())
                seen_weight += float(wb.sum())
            record: dict[str, Any] = {"epoch": epoch, "train_loss": seen_loss / max(seen_weight, 1e-12)}
            if valid is not None:
                record["valid_loss"] = _evaluate(model, valid, vy, vw, config.batch_size, device)
            history.append(record)
            current = record.get("valid_loss", -epoch)  # without validation the last epoch wins
            if current < best_loss - 1e-7:
                best_loss, best_epoch, stale = current, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if valid is not None and stale >= config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
    return model, history, best_epoch
