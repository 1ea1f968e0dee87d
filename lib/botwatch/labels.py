"""Training labels: resolve label observations to one weighted label per account, pair each
with the features computed before it was observed, and split by time (plus a golden set).

Label sources differ in quality (DESIGN.md): investigator verdicts are scarce and precise,
won appeals are precise negatives, user reports are plentiful and noisy, graph-propagated
labels are weak. Each source has a weight (conf ``train.label_weights``) and a rank in
:data:`LABEL_RANK`; investigator verdicts and won appeals share the top rank, so a won appeal
overturns the verdict it appeals. botwatch's own decisions (source ``botwatch``, ``model`` or any
other source outside the precedence list) are never ground truth: feeding them back would
train the model on itself.

Usage (the trainer, for run date D)::

    resolved = resolve_labels(labels, conf["train.label_weights"], as_of=D + timedelta(days=1))
    rows = point_in_time_join(resolved, features)
    rest, golden = split_golden(rows, conf["train.golden_share"], conf["train.golden_salt"])
    train, valid = time_split(rest, D - timedelta(days=valid_days - 1), valid_days)
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.schemas import LABELS_SCHEMA, require_columns

# Lower rank wins a conflict between sources, then the latest label. Investigator verdicts and won
# appeals share the top rank, so the later of the two stands: a won appeal overturns the verdict it
# appeals (a precise negative, DESIGN.md), and a new verdict after an appeal stands in turn.
LABEL_RANK: dict[str, int] = {"investigator": 0, "appeal": 0, "user_report": 1, "propagated": 2}
LABEL_PRECEDENCE: tuple[str, ...] = tuple(LABEL_RANK)  # every label source, highest rank first
assert set(LABEL_PRECEDENCE) == set(t.LABEL_SOURCES), "LABEL_PRECEDENCE must rank every label source"
INVESTIGATOR = LABEL_PRECEDENCE[0]

RESOLVED_COLUMNS = (t.ACCOUNT_ID, t.AS_OF_DATE, t.LABEL, t.WEIGHT, t.SOURCE)

# Resolution of 10**6 for hashed shares: the golden share is exact to 1e-6.
_HASH_BUCKETS = 1_000_000


class LabelConfigError(ValueError):
    """Label weights or split settings are wrong; the message names the key to fix."""


def _check_weights(source_weights: Mapping[str, float], used: Sequence[str]) -> dict[str, float]:
    unknown = sorted(set(source_weights) - set(LABEL_PRECEDENCE))
    if unknown:
        raise LabelConfigError(
            f"train.label_weights has weights for {unknown}, which are not label sources "
            f"{list(LABEL_PRECEDENCE)}; botwatch's own decisions are never used as labels, remove them"
        )
    missing = [s for s in used if s not in source_weights]
    if missing:
        raise LabelConfigError(f"train.label_weights lacks a weight for {missing}; add one per source")
    bad = {s: w for s, w in source_weights.items()
           if isinstance(w, bool) or not (isinstance(w, (int, float)) and 0 <= w < math.inf)}
    if bad:
        raise LabelConfigError(
            f"train.label_weights must be finite numbers >= 0, got {bad}; to leave a source out set its weight to 0"
        )
    return {s: float(source_weights[s]) for s in used}


def dropped_sources(source_weights: Mapping[str, float]) -> list[str]:
    """The sources conf leaves out (weight 0): a source found unreliable is dropped without a code change,
    from training and from the labels features read (``bot_neighbor_share``)."""
    return sorted(s for s, w in source_weights.items() if w == 0 and not isinstance(w, bool))


def resolve_labels(
    labels: DataFrame,
    source_weights: Mapping[str, float],
    *,
    as_of: dt.date | None = None,
    exclude_sources: Sequence[str] = ("botwatch",),
) -> DataFrame:
    """One label per account: ``(account_id, as_of_date, label, weight, source)``.

    Only sources in :data:`LABEL_PRECEDENCE` count (minus ``exclude_sources`` and those of weight 0); every other
    source, botwatch's own decisions above all, is ignored. With ``as_of`` only labels
    observed before that date (``to_date(labeled_at) < as_of``, UTC) are considered; the
    nightly run for date D passes D + 1 day. Conflicts go to the higher-ranked source
    (:data:`LABEL_RANK`), then to the latest ``labeled_at``; an exact tie between opposite labels goes to 0 (human),
    the cautious reading for a precision-first system, and one between sources of a rank to the first in
    :data:`LABEL_PRECEDENCE` (investigator before appeal). ``as_of_date`` is the day the winning
    label was observed and ``weight`` its source's weight.
    """
    require_columns(labels, {f.name: f.dataType for f in LABELS_SCHEMA.fields}, "resolve_labels(labels)")
    exclude_sources = (*exclude_sources, *dropped_sources(source_weights))  # bad weights: refused just below
    used = [s for s in LABEL_PRECEDENCE if s not in set(exclude_sources)]
    weights = _check_weights(source_weights, used)
    weight = F.create_map(*[x for s, w in weights.items() for x in (F.lit(s), F.lit(w))])[F.col(t.SOURCE)]
    return (
        winning_labels(labels, as_of=as_of, exclude_sources=exclude_sources)
        .select(
            F.col(t.ACCOUNT_ID),
            F.to_date(t.LABELED_AT).alias(t.AS_OF_DATE),
            F.col(t.LABEL),
            weight.cast(T.DoubleType()).alias(t.WEIGHT),
            F.col(t.SOURCE),
        )
    )


def winning_labels(
    labels: DataFrame, *, as_of: dt.date | str | None = None, exclude_sources: Sequence[str] = ("botwatch",)
) -> DataFrame:
    """Each account's winning label observation (its ``labels`` row) under :func:`resolve_labels`'
    rules: sources outside :data:`LABEL_PRECEDENCE` (and ``exclude_sources``) dropped, only labels
    observed before ``as_of`` when given, the higher-ranked source first, then the latest, an exact
    tie between opposite labels to 0 (human). Training and ``bot_neighbor_share`` read labels alike."""
    used = [s for s in LABEL_PRECEDENCE if s not in set(exclude_sources)]
    rows = labels.where(F.col(t.SOURCE).isin(used))
    if as_of is not None:
        rows = rows.where(F.to_date(t.LABELED_AT) < F.lit(as_of).cast("date"))
    rank = F.create_map(*[F.lit(x) for kv in LABEL_RANK.items() for x in kv])[F.col(t.SOURCE)]
    # Last, the source in precedence order: an investigator's verdict and an appeal of the same label at the
    # same instant would otherwise win by the rows' order, and the winner's source decides weight and golden set.
    order = F.create_map(*[F.lit(x) for i, s in enumerate(LABEL_PRECEDENCE) for x in (s, i)])[F.col(t.SOURCE)]
    best_first = Window.partitionBy(t.ACCOUNT_ID).orderBy(
        rank.asc(), F.col(t.LABELED_AT).desc(), F.col(t.LABEL).asc(), order.asc()
    )
    return rows.withColumn("_rank", F.row_number().over(best_first)).where(F.col("_rank") == 1).drop("_rank")


def _check_pit_inputs(resolved: DataFrame, features: DataFrame) -> None:
    require_columns(resolved, RESOLVED_COLUMNS, "point_in_time_join(resolved)")
    require_columns(features, {t.ACCOUNT_ID: T.LongType(), t.RUN_DATE: T.DateType()}, "point_in_time_join(features)")
    clash = sorted(set(features.columns) & set(resolved.columns) - {t.ACCOUNT_ID})
    if clash:
        raise LabelConfigError(
            f"point_in_time_join: features has columns {clash} that the labels also carry; rename them in features"
        )


def _feature_dates(resolved: DataFrame, features: DataFrame, max_lag_days: int | None) -> DataFrame:
    """(account_id, as_of_date, run_date): the last features run strictly before each label."""
    runs = features.select(t.ACCOUNT_ID, t.RUN_DATE)
    before = F.col(t.RUN_DATE) < F.col(t.AS_OF_DATE)
    if max_lag_days is not None:
        before = before & (F.datediff(F.col(t.AS_OF_DATE), F.col(t.RUN_DATE)) <= max_lag_days)
    return (
        resolved.select(t.ACCOUNT_ID, t.AS_OF_DATE)
        .join(runs, t.ACCOUNT_ID)
        .where(before)
        .groupBy(t.ACCOUNT_ID, t.AS_OF_DATE)
        .agg(F.max(t.RUN_DATE).alias(t.RUN_DATE))
    )


def point_in_time_join(resolved: DataFrame, features: DataFrame, *, max_lag_days: int | None = None) -> DataFrame:
    """Each resolved label with the account's ``features`` row of the last ``run_date``
    strictly before the label's ``as_of_date`` (features of day D hold day D's events, so a
    run on or after the label day could already reflect it).

    Labels without such a row (accounts first seen on the label day, or older than
    ``max_lag_days`` when given) are dropped; :func:`labels_without_features` returns them so
    the caller can count them. Output: the resolved columns, then ``run_date`` and the
    feature columns.
    """
    _check_pit_inputs(resolved, features)
    dates = _feature_dates(resolved, features, max_lag_days)
    feature_cols = [c for c in features.columns if c not in (t.ACCOUNT_ID, t.RUN_DATE)]
    return (
        resolved.join(dates, [t.ACCOUNT_ID, t.AS_OF_DATE])
        .join(features, [t.ACCOUNT_ID, t.RUN_DATE])
        .select(*resolved.columns, t.RUN_DATE, *feature_cols)
    )


def labels_without_features(
    resolved: DataFrame, features: DataFrame, *, max_lag_days: int | None = None
) -> DataFrame:
    """The resolved labels :func:`point_in_time_join` drops: no features run before them."""
    _check_pit_inputs(resolved, features)
    dates = _feature_dates(resolved, features, max_lag_days)
    return resolved.join(dates, [t.ACCOUNT_ID, t.AS_OF_DATE], "left_anti")


def time_split(rows: DataFrame, split_date: dt.date, valid_days: int) -> tuple[DataFrame, DataFrame]:
    """``(train, valid)``: train has ``as_of_date < split_date``, valid has
    ``split_date <= as_of_date < split_date + valid_days``; later rows are in neither. There is
    deliberately no random split: rows of one day never straddle the boundary."""
    if valid_days < 1:
        raise LabelConfigError(f"train.valid_days must be >= 1, got {valid_days}")
    require_columns(rows, {t.AS_OF_DATE: T.DateType()}, "time_split(rows)")
    day = F.col(t.AS_OF_DATE)
    end = split_date + dt.timedelta(days=valid_days)
    return rows.where(day < F.lit(split_date)), rows.where((day >= F.lit(split_date)) & (day < F.lit(end)))


def golden_mask(account_id_col: str | Column, share: float, salt: str) -> Column:
    """True for a fixed hashed ``share`` of accounts: ``xxhash64(salt || account_id)`` mod 10**6
    below ``share * 10**6``. The same salt always picks the same accounts, on any engine run;
    change the salt only to draw a new golden set."""
    if not 0.0 <= share <= 1.0:
        raise LabelConfigError(f"train.golden_share must be in [0, 1], got {share}")
    col = F.col(account_id_col) if isinstance(account_id_col, str) else account_id_col
    bucket = F.pmod(F.xxhash64(F.concat(F.lit(salt), col.cast(T.StringType()))), F.lit(_HASH_BUCKETS))
    return bucket < F.lit(round(share * _HASH_BUCKETS))


def split_golden(rows: DataFrame, share: float, salt: str) -> tuple[DataFrame, DataFrame]:
    """``(rest, golden)``: golden holds the investigator-labelled rows of the masked accounts;
    rest holds every row of the other accounts. Masked accounts' other labels go to neither,
    so a golden account is never trained on, not even before its investigator verdict."""
    require_columns(rows, (t.ACCOUNT_ID, t.SOURCE), "split_golden(rows)")
    mask = golden_mask(t.ACCOUNT_ID, share, salt)
    return rows.where(~mask), rows.where(mask & (F.col(t.SOURCE) == INVESTIGATOR))
