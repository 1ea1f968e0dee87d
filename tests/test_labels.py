"""Label resolution, point-in-time joins, time splits and the golden mask (botwatch.labels),
checked against hand-written expectations and pandas (merge_asof, groupby) on the raw rows."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.features.build import labels_kept
from botwatch.labels import (
    LABEL_PRECEDENCE,
    LabelConfigError,
    dropped_sources,
    golden_mask,
    labels_without_features,
    point_in_time_join,
    resolve_labels,
    split_golden,
    time_split,
)
from botwatch.schemas import LABELS_SCHEMA, SchemaMismatchError

UTC = dt.UTC
WEIGHTS = {"investigator": 1.0, "appeal": 1.0, "user_report": 0.3, "propagated": 0.1}
RESOLVED_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType()),
        T.StructField(t.AS_OF_DATE, T.DateType()),
        T.StructField(t.LABEL, T.IntegerType()),
        T.StructField(t.WEIGHT, T.DoubleType()),
        T.StructField(t.SOURCE, T.StringType()),
    ]
)


def ts(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, tzinfo=UTC)


def d(day: int) -> dt.date:
    return dt.date(2024, 3, day)


# account, label, source, labeled_at — each account exercises one rule
LABEL_ROWS = [
    (1, 0, "investigator", ts(3)), (1, 1, "user_report", ts(5)),  # precedence beats recency
    (2, 1, "user_report", ts(2)), (2, 0, "user_report", ts(6)),  # same source: latest wins
    (3, 1, "botwatch", ts(9)), (3, 0, "propagated", ts(4)),  # botwatch's decision ignored
    (4, 1, "botwatch", ts(2)), (4, 1, "model", ts(3)),  # only own decisions: no label at all
    (5, 0, "appeal", ts(7)), (5, 1, "investigator", ts(2)),  # a won appeal overturns the verdict
    (6, 1, "propagated", ts(1)), (6, 0, "appeal", ts(2)),  # appeal > propagated
    (7, 1, "investigator", ts(4, 9)), (7, 0, "investigator", ts(4, 9)),  # exact tie: human
    (8, 1, "investigator", ts(10)), (8, 1, "user_report", ts(3)),  # as_of cuts the investigator label
    (9, 1, "user_report", ts(8, 0)),  # observed on the as_of day itself: excluded by as_of
    (10, 0, "appeal", ts(2)), (10, 1, "investigator", ts(6)), (10, 1, "user_report", ts(7)),  # new verdict stands
]

EXPECTED_ALL = [  # resolved by hand, no as_of
    (1, d(3), 0, 1.0, "investigator"),
    (2, d(6), 0, 0.3, "user_report"),
    (3, d(4), 0, 0.1, "propagated"),
    (5, d(7), 0, 1.0, "appeal"),
    (6, d(2), 0, 1.0, "appeal"),
    (7, d(4), 0, 1.0, "investigator"),
    (8, d(10), 1, 1.0, "investigator"),
    (9, d(8), 1, 0.3, "user_report"),
    (10, d(6), 1, 1.0, "investigator"),
]


@pytest.fixture(scope="module")
def labels(spark):
    return spark.createDataFrame(LABEL_ROWS, LABELS_SCHEMA)


def test_precedence_recency_and_own_decisions(spark, labels):
    got = resolve_labels(labels, WEIGHTS)
    assert_df_equality(got, spark.createDataFrame(EXPECTED_ALL, RESOLVED_SCHEMA), ignore_row_order=True,
                       ignore_nullable=True)


def test_as_of_uses_only_earlier_labels(spark, labels):
    got = resolve_labels(labels, WEIGHTS, as_of=d(8))
    want = [r for r in EXPECTED_ALL if r[0] not in (8, 9)] + [(8, d(3), 1, 0.3, "user_report")]
    assert_df_equality(got, spark.createDataFrame(want, RESOLVED_SCHEMA), ignore_row_order=True,
                       ignore_nullable=True)


def test_excluded_source_and_weights_checks(spark, labels):
    # Account 3's only label was propagated (botwatch's own decision never counts); the rest as resolved by hand.
    without_propagated = spark.createDataFrame([r for r in EXPECTED_ALL if r[0] != 3], RESOLVED_SCHEMA)
    assert_df_equality(resolve_labels(labels, WEIGHTS, exclude_sources=("botwatch", "propagated")),
                       without_propagated, ignore_row_order=True, ignore_nullable=True)
    with pytest.raises(LabelConfigError, match="never used"):
        resolve_labels(labels, {**WEIGHTS, "botwatch": 1.0})
    with pytest.raises(LabelConfigError, match="lacks a weight"):
        resolve_labels(labels, {k: v for k, v in WEIGHTS.items() if k != "appeal"})
    for weight in (-1.0, float("inf"), float("nan")):  # an infinite weight made every gradient NaN
        with pytest.raises(LabelConfigError, match="finite numbers >= 0"):
            resolve_labels(labels, {**WEIGHTS, "propagated": weight})
    # Weight 0 in conf leaves a source out, as exclude_sources does (conf cannot reach that argument).
    assert_df_equality(resolve_labels(labels, {**WEIGHTS, "propagated": 0}), without_propagated,
                       ignore_row_order=True, ignore_nullable=True)
    assert dropped_sources({**WEIGHTS, "propagated": 0}) == ["propagated"] and dropped_sources(WEIGHTS) == []
    kept = labels_kept(labels, ["propagated"])
    assert kept.count() == labels.where(F.col(t.SOURCE) != "propagated").count() < labels.count()
    with pytest.raises(SchemaMismatchError, match="labeled_at"):
        resolve_labels(labels.drop(t.LABELED_AT), WEIGHTS)


def test_resolution_matches_pandas_on_random_rows(spark):
    rng = np.random.default_rng(0)
    n = 600
    sources = np.array([*LABEL_PRECEDENCE, "botwatch", "model"])
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    pdf = pd.DataFrame({
        t.ACCOUNT_ID: rng.integers(0, 150, n),
        t.LABEL: rng.integers(0, 2, n),
        t.SOURCE: rng.choice(sources, n),
        # whole hours over 40 days: some exact timestamp ties within an account
        t.LABELED_AT: [base + dt.timedelta(hours=int(h)) for h in rng.integers(0, 40 * 24, n)],
    })
    rows = [(int(a), int(b), str(c), e.to_pydatetime()) for a, b, c, e in pdf.itertuples(index=False)]
    as_of = dt.date(2024, 1, 30)
    got = resolve_labels(spark.createDataFrame(rows, LABELS_SCHEMA), WEIGHTS, as_of=as_of).toPandas()

    ref = pdf[pdf[t.SOURCE].isin(LABEL_PRECEDENCE) & (pdf[t.LABELED_AT].dt.date < as_of)].copy()
    # investigator and appeal share the top rank (written out here, not read from the module)
    ref["rank"] = ref[t.SOURCE].map({"investigator": 0, "appeal": 0, "user_report": 1, "propagated": 2})
    ref["order"] = ref[t.SOURCE].map({"investigator": 0, "appeal": 1, "user_report": 2, "propagated": 3})
    ref = ref.sort_values(["rank", t.LABELED_AT, t.LABEL, "order"], ascending=[True, False, True, True])
    ref = ref.groupby(t.ACCOUNT_ID, as_index=False).first()
    ref[t.AS_OF_DATE] = ref[t.LABELED_AT].dt.date
    ref[t.WEIGHT] = ref[t.SOURCE].map(WEIGHTS)
    cols = list(RESOLVED_SCHEMA.names)
    pd.testing.assert_frame_equal(
        got[cols].sort_values(t.ACCOUNT_ID).reset_index(drop=True),
        ref[cols].sort_values(t.ACCOUNT_ID).reset_index(drop=True),
        check_dtype=False,
    )


def test_a_tie_between_sources_of_one_rank_goes_to_the_investigator_whatever_the_rows_order(spark):
    """An appeal and an investigator's verdict of the same label at the same instant: the winner's source
    decides its weight and whether the account is in the golden set, so it may not follow the rows' order."""
    at = dt.datetime(2024, 5, 3, 9, tzinfo=UTC)
    rows = [(1, 1, "appeal", at), (1, 1, "investigator", at)]
    for ordered in (rows, rows[::-1]):
        got = resolve_labels(spark.createDataFrame(ordered, LABELS_SCHEMA).coalesce(1), WEIGHTS).collect()
        assert [(r[t.SOURCE], r[t.WEIGHT]) for r in got] == [("investigator", WEIGHTS["investigator"])], ordered


FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType()),
        T.StructField(t.RUN_DATE, T.DateType()),
        T.StructField("f", T.DoubleType()),
    ]
)


def test_planted_future_feature_row_is_never_used(spark):
    resolved = spark.createDataFrame(
        [(1, d(10), 1, 1.0, "investigator"), (2, d(5), 0, 0.3, "user_report"), (3, d(4), 1, 0.1, "propagated")],
        RESOLVED_SCHEMA,
    )
    features = spark.createDataFrame(
        [
            (1, d(7), 7.0), (1, d(9), 9.0),  # d(9): the last run before the label -> used
            (1, d(10), 999.0), (1, d(11), 999.0),  # planted: on and after the label day
            (2, d(1), 1.0),
            (3, d(4), 999.0), (3, d(6), 999.0),  # only on/after the label: account 3 is dropped
        ],
        FEATURES_SCHEMA,
    )
    got = point_in_time_join(resolved, features)
    assert got.columns == [*RESOLVED_SCHEMA.names, t.RUN_DATE, "f"]
    assert sorted((r[t.ACCOUNT_ID], r[t.RUN_DATE], r["f"]) for r in got.collect()) == [
        (1, d(9), 9.0), (2, d(1), 1.0)
    ]
    assert [r[t.ACCOUNT_ID] for r in labels_without_features(resolved, features).collect()] == [3]
    # a staleness limit drops account 2 (features 4 days before its label)
    stale = point_in_time_join(resolved, features, max_lag_days=3)
    assert [r[t.ACCOUNT_ID] for r in stale.collect()] == [1]


def test_point_in_time_matches_pandas_merge_asof(spark):
    rng = np.random.default_rng(1)
    labels_pdf = pd.DataFrame({
        t.ACCOUNT_ID: np.arange(200),
        t.AS_OF_DATE: [d(1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 30, 200)],
    })
    feat = pd.DataFrame({
        t.ACCOUNT_ID: rng.integers(0, 200, 1500),
        t.RUN_DATE: [d(1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 30, 1500)],
    }).drop_duplicates([t.ACCOUNT_ID, t.RUN_DATE])
    feat["f"] = rng.normal(size=len(feat))
    resolved = spark.createDataFrame(
        [(int(a), b, 1, 1.0, "investigator") for a, b in labels_pdf.itertuples(index=False)], RESOLVED_SCHEMA
    )
    features = spark.createDataFrame(
        [(int(a), b, float(c)) for a, b, c in feat.itertuples(index=False)], FEATURES_SCHEMA
    )
    got = point_in_time_join(resolved, features).select(t.ACCOUNT_ID, t.RUN_DATE, "f").toPandas()

    left = labels_pdf.assign(key=pd.to_datetime(labels_pdf[t.AS_OF_DATE])).sort_values("key")
    right = feat.assign(key=pd.to_datetime(feat[t.RUN_DATE])).sort_values("key")
    ref = pd.merge_asof(left, right, on="key", by=t.ACCOUNT_ID, allow_exact_matches=False, direction="backward")
    ref = ref.dropna(subset=["f"])[[t.ACCOUNT_ID, t.RUN_DATE, "f"]]
    pd.testing.assert_frame_equal(
        got.sort_values(t.ACCOUNT_ID).reset_index(drop=True),
        ref.sort_values(t.ACCOUNT_ID).reset_index(drop=True),
        check_dtype=False,
    )
    assert labels_without_features(resolved, features).count() == len(labels_pdf) - len(ref)


def test_point_in_time_refuses_clashing_columns(spark):
    resolved = spark.createDataFrame([(1, d(3), 1, 1.0, "investigator")], RESOLVED_SCHEMA)
    features = spark.createDataFrame([(1, d(2), 0.5)], FEATURES_SCHEMA).withColumnRenamed("f", t.WEIGHT)
    with pytest.raises(LabelConfigError, match="weight"):
        point_in_time_join(resolved, features)


def test_time_split_never_mixes_dates(spark):
    days = [d(1) + dt.timedelta(days=i) for i in range(20)]
    rows = spark.createDataFrame(
        [(i, day, i % 2, 1.0, "investigator") for i, day in enumerate(days * 3)], RESOLVED_SCHEMA
    )
    split, valid_days = d(10), 4
    train, valid = time_split(rows, split, valid_days)
    train_days = {r[t.AS_OF_DATE] for r in train.collect()}
    valid_days_seen = {r[t.AS_OF_DATE] for r in valid.collect()}
    assert train_days == {x for x in days if x < d(10)}
    assert valid_days_seen == {d(10), d(11), d(12), d(13)}
    assert max(train_days) < min(valid_days_seen)
    assert train.count() == 27 and valid.count() == 12
    with pytest.raises(LabelConfigError, match="valid_days"):
        time_split(rows, split, 0)


def test_golden_mask_share_and_stability(spark):
    ids = spark.range(10_000).withColumnRenamed("id", t.ACCOUNT_ID)
    picked = ids.where(golden_mask(t.ACCOUNT_ID, 0.2, "golden-v1"))
    first = sorted(r[0] for r in picked.collect())
    # same ids in another order and partitioning: the same accounts
    again = ids.orderBy(F.rand(seed=3)).repartition(7).where(golden_mask(F.col(t.ACCOUNT_ID), 0.2, "golden-v1"))
    assert sorted(r[0] for r in again.collect()) == first
    # binomial sd at n=10k, p=0.2 is 0.004: 0.015 is almost 4 sd
    assert abs(len(first) / 10_000 - 0.2) < 0.015
    other = {r[0] for r in ids.where(golden_mask(t.ACCOUNT_ID, 0.2, "golden-v2")).collect()}
    assert 0.1 < len(other & set(first)) / len(first) < 0.3  # a new salt draws an unrelated set
    assert ids.where(golden_mask(t.ACCOUNT_ID, 0.0, "s")).count() == 0
    assert ids.where(golden_mask(t.ACCOUNT_ID, 1.0, "s")).count() == 10_000
    with pytest.raises(LabelConfigError, match="golden_share"):
        golden_mask(t.ACCOUNT_ID, 1.5, "s")


def test_split_golden_keeps_golden_accounts_out_of_training(spark):
    rows = spark.createDataFrame(
        [(i, d(1 + i % 20), i % 2, 1.0, LABEL_PRECEDENCE[i % 4]) for i in range(2000)], RESOLVED_SCHEMA
    )
    masked = {r[0] for r in rows.where(golden_mask(t.ACCOUNT_ID, 0.2, "g")).select(t.ACCOUNT_ID).collect()}
    rest, golden = split_golden(rows, 0.2, "g")
    rest_ids = {r[0] for r in rest.select(t.ACCOUNT_ID).collect()}
    golden_rows = golden.collect()
    assert not rest_ids & masked
    assert {r[t.SOURCE] for r in golden_rows} == {"investigator"}
    assert {r[t.ACCOUNT_ID] for r in golden_rows} == {i for i in masked if i % 4 == 0}
    assert rest_ids == set(range(2000)) - masked


def test_train_conf_keys(conf):
    train = conf.section("train")
    assert train["label_weights"] == WEIGHTS
    assert set(train["label_weights"]) == set(LABEL_PRECEDENCE)
    assert train["golden_share"] == 0.2 and train["golden_salt"] == "golden-v1"
    assert train["valid_days"] == 7 and train["target_precision"] == 0.95
