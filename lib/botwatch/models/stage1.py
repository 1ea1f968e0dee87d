"""The stage-1 XGBoost model: distributed training with ``xgboost.spark``, Platt calibration,
and scoring (probability plus SHAP reason codes) in Spark.

Training uses ``SparkXGBClassifier`` for 0/1 labels and ``SparkXGBRegressor`` with the
``binary:logistic`` objective for soft targets in [0, 1] (the classifier infers classes from the
distinct labels, so it cannot take soft targets; the regressor with a logistic objective trains
the same kind of booster). Missing values stay NaN: XGBoost learns where they go, which new
accounts (no windows, no graph) need.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.params import XGBParams
from botwatch.schemas import quoted
from botwatch.spark import session_conf

VALIDATION_FLAG = "_is_validation"
_WORKER = "_worker"  # the XGBoost worker (Spark partition) a training row goes to
# Columns of a features row that are never model inputs.
NON_FEATURE_COLUMNS = {
    t.ACCOUNT_ID, t.RUN_DATE, t.COUNTRY, t.LABEL, t.WEIGHT, t.SOURCE, t.AS_OF_DATE, t.FAMILY,
    "features_run_date", VALIDATION_FLAG,
}
REASON_CODES_TYPE = T.ArrayType(
    T.StructType([T.StructField("feature", T.StringType()), T.StructField("contribution", T.DoubleType())])
)


def feature_columns(df: DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """Numeric and boolean columns of a features frame that the model takes, in a stable order."""
    numeric = (T.NumericType, T.BooleanType)
    skip = NON_FEATURE_COLUMNS | set(exclude)
    return [f.name for f in df.schema.fields if isinstance(f.dataType, numeric) and f.name not in skip]


# XGBoost reads features as float32 and refuses inf or anything beyond this (the whole scoring task fails).
FLOAT32_MAX = 3.4028234663852886e38


def as_model_input(cols: Sequence[str]) -> list[Column]:
    """Features as doubles with nulls, infinities and values beyond float32 turned into NaN (XGBoost's
    missing value; the heavy model counts inf as missing too): one account's inf attribute must not fail
    the night's scoring.

    Written as SQL text: one Py4J call per column, where ``coalesce(col.cast, lit).alias`` takes
    about eight, and a run builds this for a few hundred features several times (BENCHMARKS.md)."""
    return [F.expr(f"CASE WHEN abs(cast({q} as double)) <= {FLOAT32_MAX!r} THEN cast({q} as double) "
                   f"ELSE cast('NaN' as double) END as {q}") for q in map(quoted, cols)]


def fit_booster(
    train: DataFrame,
    valid: DataFrame,
    cols: Sequence[str],
    params: XGBParams,
    *,
    label_col: str = t.LABEL,
    weight_col: str | None = t.WEIGHT,
    soft_targets: bool = False,
):
    """Train on ``train`` with early stopping on ``valid``; returns an ``xgboost.Booster``."""
    from xgboost.spark import SparkXGBClassifier, SparkXGBRegressor

    # xgboost.spark fails (KeyError 'values') on an Arrow batch holding no validation rows, or
    # none but validation rows, and a shuffle hands each worker the train rows first. So: rows
    # spread over exactly num_workers partitions (xgboost then keeps them), each worker dealt
    # training and validation rows (see deal_to_workers), put in a random order inside each, and
    # each partition handed over as one Arrow batch.
    n = params.num_workers
    data = deal_to_workers(train, valid, n, params.seed)
    keys = F.array(*[F.lit(k) for k in partition_keys(train.sparkSession, n)])
    data = data.select(
        *as_model_input(cols),
        F.col(label_col).cast("double").alias(label_col),
        *( [F.col(weight_col).cast("double").alias(weight_col)] if weight_col else [] ),
        VALIDATION_FLAG,
        F.element_at(keys, F.col(_WORKER) + 1).alias(_WORKER),
    )
    common: dict[str, Any] = dict(
        features_col=list(cols),
        label_col=label_col,
        validation_indicator_col=VALIDATION_FLAG,
        early_stopping_rounds=params.early_stopping_rounds,
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        subsample=params.subsample,
        colsample_bytree=params.colsample_bytree,
        min_child_weight=params.min_child_weight,
        reg_lambda=params.reg_lambda,
        num_workers=params.num_workers,
        missing=float("nan"),
        seed=params.seed,
        eval_metric="logloss",
    )
    if weight_col:
        common["weight_col"] = weight_col
    shuffle = "_shuffle_key"
    data = (
        data.repartition(n, _WORKER)
        .withColumn(shuffle, F.rand(params.seed + 1))
        .sortWithinPartitions(shuffle)
        .drop(shuffle, _WORKER)
    )
    estimator: SparkXGBRegressor | SparkXGBClassifier
    if soft_targets:
        estimator = SparkXGBRegressor(objective="binary:logistic", **common)
    else:
        estimator = SparkXGBClassifier(**common)
    spark = data.sparkSession
    one_batch = {"spark.sql.execution.arrow.maxRecordsPerBatch": "0",  # 0: no limit
                 "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 2)}
    with session_conf(spark, one_batch):
        return estimator.fit(data).get_booster()


class TooFewTrainingRowsError(ValueError):
    """Fewer distinct training rows than XGBoost workers: a worker would get none."""


def deal_to_workers(train: DataFrame, valid: DataFrame, n: int, seed: int) -> DataFrame:
    """``train`` and ``valid`` in one frame with ``VALIDATION_FLAG`` and ``_WORKER`` (0..n-1), every
    worker holding both kinds of rows.

    Validation rows (labels of valid_days: few) are dealt round-robin in a random order (one small
    sort). Training rows go by a seeded hash of the row; the n smallest hashes (one top-n, no sort
    of the table) are dealt one to each worker first: at random, with many workers and few labels,
    a worker got none and xgboost.spark failed on it."""
    hashed = F.xxhash64(F.lit(seed), *[c for c, kind in train.dtypes if not kind.startswith("map")])
    rows = train.withColumn(_WORKER, hashed)
    first = [r[0] for r in rows.select(_WORKER).distinct().orderBy(_WORKER).limit(n).collect()]
    if len(first) < n:
        raise TooFewTrainingRowsError(
            f"{len(first)} distinct training rows for {n} XGBoost workers: each needs one; lower "
            "train.xgb.num_workers or train on more labels")
    rank = F.array_position(F.array(*[F.lit(h) for h in first]), F.col(_WORKER))  # 1-based, 0: not one of them
    rows = rows.withColumn(
        _WORKER, F.when(rank > 0, rank - 1).otherwise(F.pmod(F.col(_WORKER), F.lit(n))).cast("int"))
    order = Window.orderBy("_u")
    dealt = valid.withColumn("_u", F.rand(seed)).withColumn(_WORKER, (F.row_number().over(order) % n).cast("int"))
    return rows.withColumn(VALIDATION_FLAG, F.lit(False)).unionByName(
        dealt.drop("_u").withColumn(VALIDATION_FLAG, F.lit(True)))


def partition_keys(spark: SparkSession, n: int) -> list[int]:
    """For each partition p of ``repartition(n, key)``, an int key that Spark's hash partitioning
    (Murmur3 with seed 42 as in ``F.hash``, mod n) sends to p: the way to put a row on a chosen worker."""
    found = (
        spark.range(64 * n).select(F.col("id").cast("int").alias("k"))
        .groupBy(F.pmod(F.hash("k"), F.lit(n)).alias("p")).agg(F.min("k").alias("k"))
        .collect()
    )
    keys = {r["p"]: r["k"] for r in found}
    return [keys[p] for p in range(n)]  # 64 candidates per partition: one misses with odds ~e^-64


def booster_bytes(booster) -> bytes:
    return bytes(booster.save_raw(raw_format="json"))


_BOOSTER_CACHE: dict[int, object] = {}


def load_booster(raw: bytes):
    """A Booster from its JSON bytes, cached per Python worker (loaded once, reused by every batch)."""
    import xgboost as xgb

    key = hash(raw)
    if key not in _BOOSTER_CACHE:
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        booster.set_param({"nthread": 1})
        _BOOSTER_CACHE[key] = booster
    return _BOOSTER_CACHE[key]


def predict_margin(raw: bytes, features: pd.DataFrame) -> np.ndarray:
    """Raw (log-odds) scores of the booster for a pandas frame of model inputs."""
    booster = load_booster(raw)
    dm = _dmatrix(features)
    # float64: XGBoost returns float32, and a float32 sigmoid rounds every margin above ~17 to 1.0 (ties).
    return np.asarray(booster.predict(dm, output_margin=True, iteration_range=_best_range(booster)), dtype=np.float64)


def _dmatrix(features: pd.DataFrame):
    import xgboost as xgb

    return xgb.DMatrix(
        features.to_numpy(dtype="float64", na_value=np.nan), missing=np.nan, feature_names=list(features.columns)
    )


def _best_range(booster) -> tuple[int, int]:
    try:
        return (0, int(booster.attr("best_iteration")) + 1) if booster.attr("best_iteration") else (0, 0)
    except (TypeError, ValueError):
        return (0, 0)


def top_contributions(raw: bytes, features: pd.DataFrame, k: int = 3) -> list[list[dict]]:
    """The ``k`` features pushing each score up the most (XGBoost's TreeSHAP contributions)."""
    booster = load_booster(raw)
    dm = _dmatrix(features)
    contrib = booster.predict(dm, pred_contribs=True, iteration_range=_best_range(booster))[:, :-1]
    names = list(features.columns)
    order = np.argsort(-contrib, axis=1)[:, :k]
    return [
        [{"feature": names[j], "contribution": float(contrib[i, j])} for j in row]
        for i, row in enumerate(order)
    ]


@dataclass
class PlattCalibration:
    """score = sigmoid(a * margin + b), fitted on validation so ``score`` reads as a probability."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, margin: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> PlattCalibration:
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            return cls()
        lr = LogisticRegression(C=1e6, max_iter=1000)
        lr.fit(np.asarray(margin).reshape(-1, 1), y, sample_weight=weight)
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def apply(self, margin: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(margin, dtype=np.float64) + self.b)))

    def column(self, margin: Column) -> Column:
        return F.lit(1.0) / (F.lit(1.0) + F.exp(-(F.lit(self.a) * margin + F.lit(self.b))))


def score_frame(
    df: DataFrame,
    raw: bytes,
    cols: Sequence[str],
    calibration: PlattCalibration,
    *,
    reason_codes: int = 3,
    score_col: str = t.STAGE1_SCORE,
) -> DataFrame:
    """Add ``score_col`` (calibrated probability) and ``reason_codes`` to ``df`` via mapInPandas:
    the booster is shipped once and loaded once per Python worker."""
    inputs = df.select(*[c for c in df.columns if c not in cols], *as_model_input(cols))
    out_schema = T.StructType(
        [f for f in inputs.schema.fields if f.name not in cols]
        + [T.StructField(score_col, T.DoubleType()), T.StructField("reason_codes", REASON_CODES_TYPE)]
    )
    passthrough = [f.name for f in out_schema.fields if f.name not in (score_col, "reason_codes")]
    cal_a, cal_b, colist, k = calibration.a, calibration.b, list(cols), reason_codes

    def _score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            x = pdf[colist]
            margin = predict_margin(raw, x)
            out = pdf[passthrough].copy()
            out[score_col] = 1.0 / (1.0 + np.exp(-(cal_a * margin + cal_b)))
            out["reason_codes"] = top_contributions(raw, x, k) if k else [[] for _ in range(len(pdf))]
            yield out

    return inputs.mapInPandas(_score, out_schema)

