"""Distribution drift of features and scores: PSI and the KS statistic against a reference
profile, computed in Spark from binned counts.

The reference profile (``reference.json``, saved with every trained model) holds, per feature,
the reference's quantile edges (``approxQuantile`` at 1/100 .. 99/100, ties merged) and the
count of reference rows in each bin. A value that several quantiles share (a point mass: a flag, the
zeros of a zero-inflated count) also gets the next double above it as an edge, so it has a bin of its
own: otherwise 2 % of accounts verified drifting to 40 % stays inside one bin and moves neither PSI
nor KS. Bins are left-closed: bin ``j`` holds ``e[j-1] <= x < e[j]``
(bin 0 everything ``< e[0]``, bin ``K`` everything ``>= e[K-1]``); null/NaN go to a separate
*missing* bin ``K + 1`` (missing is not 0).

* **PSI** uses deciles: the fine bins are merged into the bins of the 1/10 .. 9/10 edges (a value
  several deciles share keeps its own bin), plus the missing bin; ``PSI = sum (p - q) ln(p / q)``
  with shares floored at :data:`PSI_EPSILON`.
* **KS** is read off the binned CDFs of the present (non-missing) values. Counts are exact, so
  the CDFs are exact just below each edge and ``ks = max_j |F(e_j-) - G(e_j-)|`` is a lower
  bound of the exact two-sample statistic; inside a bin both CDFs are monotone, which gives the
  upper bound ``ks_upper = max_j max(|F(e_j-) - G(e_{j-1}-)|, |F(e_{j-1}-) - G(e_j-)|)``. With 100 reference
  quantiles the gap is about one percentile of mass (the tests check
  ``ks <= scipy.stats.ks_2samp <= ks_upper``).

Everything per account happens in Spark (one pass bins all features and counts them); only the
per-(feature, bin) tables, a few thousand rows, are ever small enough to be collected.

Usage::

    profile = reference_profile(train_features, cols)          # at training time
    stats = drift_statistics(todays_features, profile)         # feature, psi, ks, ks_upper, ...
"""
from __future__ import annotations

import bisect
import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.delta_io import read_table

REFERENCE_ARTIFACT = "reference.json"
# 100 quantiles keep the KS bound within ~1 % of mass; deciles are the usual PSI bins.
REFERENCE_QUANTILES = 100
PSI_BINS = 10
QUANTILE_RELATIVE_ERROR = 1e-3
# Shares are floored before the log so an empty bin gives a large but finite PSI.
PSI_EPSILON = 1e-4

FEATURE = "feature"
BIN = "bin"

STATS_SCHEMA = T.StructType(
    [
        T.StructField(FEATURE, T.StringType()),
        T.StructField("psi", T.DoubleType()),
        T.StructField("ks", T.DoubleType()),
        T.StructField("ks_upper", T.DoubleType()),
        T.StructField("missing_share", T.DoubleType()),
        T.StructField("reference_missing_share", T.DoubleType()),
    ]
)


class ReferenceError(LookupError):
    """The champion has no usable reference profile (trained before profiles were saved)."""


def _splits(edges: Sequence[float]) -> list[float]:
    # Bucketizer needs at least one inner split; an all-missing reference gets a dummy one.
    return [-math.inf, *(edges or [0.0]), math.inf]


def binned_counts(df: DataFrame, edges: dict[str, Sequence[float]]) -> DataFrame:
    """``(feature, bin, n)``: rows of ``df`` per bin of each feature, in one pass.

    Spark ML's ``Bucketizer`` bins every column (binary search in the JVM; a CASE tree per
    feature outgrows the 64 KB code-generation limit at ~60 features x 100 bins), then the bins
    are posexploded and counted with map-side partial aggregation. Null and NaN land in the
    last bin (``handleInvalid="keep"``).
    """
    from pyspark.ml.feature import Bucketizer

    names = list(edges)
    inputs = [f"_in{i}" for i in range(len(names))]
    outputs = [f"_bin{i}" for i in range(len(names))]
    def value(c: str) -> Column:
        # -0.0 as 0.0: the Bucketizer's binary search orders -0.0 below an edge at 0.0 (a point mass's bin).
        x = F.col(c).cast("double")
        return F.coalesce(F.when(x == 0.0, F.lit(0.0)).otherwise(x), F.lit(math.nan))

    data = df.select(*[value(c).alias(i) for c, i in zip(names, inputs, strict=True)])
    bucketizer = Bucketizer(
        inputCols=inputs, outputCols=outputs, splitsArray=[_splits(edges[c]) for c in names], handleInvalid="keep"
    )
    lookup = F.array(*[F.lit(c) for c in names])
    return (
        bucketizer.transform(data)
        .select(F.posexplode(F.array(*[F.col(o).cast("int") for o in outputs])).alias("pos", BIN))
        .groupBy("pos", BIN)
        .agg(F.count(F.lit(1)).alias("n"))
        .select(F.element_at(lookup, F.col("pos") + 1).alias(FEATURE), BIN, "n")
    )


def approx_quantiles(df: DataFrame, cols: Sequence[str], probs: Sequence[float], relative_error: float
                     ) -> list[list[float]]:
    """``df.stat.approxQuantile(cols, probs, relative_error)``, read back from the JVM in one call.

    PySpark reads that result element by element over Py4J, a round trip each: 178 features x 99
    quantiles took 8-11 s of a train step here (BENCHMARKS.md). The JVM's list prints each double as
    ``Double.toString``, which parses back to the same double (``NaN``, ``Infinity``: JSON's extensions)."""
    if not cols:
        return []
    from pyspark.sql.classic.column import _to_list

    sc = df.sparkSession.sparkContext
    probabilities: list[Any] = [float(p) for p in probs]
    found = df._jdf.stat().approxQuantile(_to_list(sc, list(cols)), _to_list(sc, probabilities), float(relative_error))
    return json.loads(found.toString())


def _with_point_masses(values: Sequence[float]) -> list[float]:
    """The distinct finite ``values``, plus the next double above each one that repeats: left-closed
    bins then hold a repeated value (a point mass) alone. An infinite quantile (an ingested inf) is no
    edge: +-inf fall in the outer bins, and Spark's Bucketizer refuses a split repeated at the ends."""
    finite = [float(v) + 0.0 for v in values if math.isfinite(v)]  # + 0.0: -0.0 as 0.0, as binned_counts bins it
    repeated = {v for v, n in Counter(finite).items() if n > 1}
    above = {math.nextafter(v, math.inf) for v in repeated}
    return sorted(set(finite) | {v for v in above if math.isfinite(v)})


def fine_edges(quantiles: Sequence[float]) -> list[float]:
    """A feature's fine bin edges from its reference quantiles (``[0.0]`` when all are missing)."""
    return _with_point_masses(quantiles) or [0.0]


def coarse_bins(quantiles: Sequence[float], edges: Sequence[float], psi_bins: int, n_quantiles: int) -> list[int]:
    """For each fine bin (and the missing bin last) the PSI bin it merges into."""
    step = n_quantiles // psi_bins
    coarse = _with_point_masses([quantiles[k * step - 1] for k in range(1, psi_bins)]) if quantiles else []
    groups = [0] + [bisect.bisect_right(coarse, e) for e in edges]
    return groups + [len(coarse) + 1]


def reference_profile(
    df: DataFrame,
    cols: Sequence[str],
    n_quantiles: int = REFERENCE_QUANTILES,
    psi_bins: int = PSI_BINS,
    relative_error: float = QUANTILE_RELATIVE_ERROR,
) -> dict:
    """The reference profile of ``cols`` in ``df`` (a JSON-able dict; see the module doc)."""
    if n_quantiles % psi_bins:
        raise ValueError(f"n_quantiles ({n_quantiles}) must be a multiple of psi_bins ({psi_bins})")
    cols = list(cols)
    probs = [k / n_quantiles for k in range(1, n_quantiles)]
    data = df.select(*[F.col(c).cast("double").alias(c) for c in cols])
    quantiles = approx_quantiles(data, cols, probs, relative_error)
    edges: dict[str, Sequence[float]] = {c: fine_edges(q) for c, q in zip(cols, quantiles, strict=True)}
    counts: dict[str, dict[int, int]] = {c: {} for c in cols}
    for row in binned_counts(data, edges).collect():
        counts[row[FEATURE]][row[BIN]] = row["n"]
    features: dict[str, dict[str, list]] = {
        c: {
            "edges": list(edges[c]),
            "psi_bin": coarse_bins(q, edges[c], psi_bins, n_quantiles),
            "counts": [counts[c].get(b, 0) for b in range(len(edges[c]) + 2)],
        }
        for c, q in zip(cols, quantiles, strict=True)
    }
    n_rows = sum(features[cols[0]]["counts"]) if cols else 0
    return {
        "n_rows": n_rows, "n_quantiles": n_quantiles, "psi_bins": psi_bins,
        "relative_error": relative_error, "features": features,
    }


def training_reference(spark: SparkSession, warehouse: str, run_date: dt.date, cols: Sequence[str]) -> dict:
    """Profile of the features partition a model was trained on: the whole account population
    of its training date (the labelled rows alone are a biased sample of it)."""
    features = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(run_date))
    profile = reference_profile(features, [c for c in cols if c in features.columns])
    profile["run_date"] = run_date.isoformat()
    return profile


def _reference_frame(spark: SparkSession, profile: dict) -> DataFrame:
    rows = [
        (name, b, int(n), int(spec["psi_bin"][b]), b == len(spec["edges"]) + 1)
        for name, spec in profile["features"].items()
        for b, n in enumerate(spec["counts"])
    ]
    schema = "feature string, bin int, ref_n long, psi_bin int, is_missing boolean"
    return spark.createDataFrame(rows, schema)


def drift_statistics(df: DataFrame, profile: dict) -> DataFrame:
    """Per profiled feature: ``psi``, ``ks`` (binned lower bound), ``ks_upper``, ``missing_share`` and
    ``reference_missing_share`` of ``df`` against the profile. A profiled feature ``df`` lacks (renamed or
    dropped upstream) counts as missing on every row: its PSI is huge, not silently absent."""
    spark = df.sparkSession
    specs = dict(profile["features"])
    if not specs:
        return spark.createDataFrame([], STATS_SCHEMA)
    df = df.withColumns({c: F.lit(None).cast("double") for c in specs if c not in df.columns})
    current = binned_counts(df, {c: s["edges"] for c, s in specs.items()})
    ref = _reference_frame(spark, {"features": specs})
    joined = ref.join(current, [FEATURE, BIN], "left").withColumn("n", F.coalesce(F.col("n"), F.lit(0)))
    by_feature = Window.partitionBy(FEATURE)

    # PSI over decile bins plus the missing bin.
    eps = F.lit(PSI_EPSILON)
    coarse = joined.groupBy(FEATURE, "psi_bin").agg(F.sum("n").alias("n"), F.sum("ref_n").alias("ref_n"))
    # try_divide: an all-empty side gives null (ANSI mode would raise on 0/0).
    p = F.greatest(F.coalesce(F.try_divide(F.col("n"), F.sum("n").over(by_feature)), F.lit(0.0)), eps)
    q = F.greatest(F.coalesce(F.try_divide(F.col("ref_n"), F.sum("ref_n").over(by_feature)), F.lit(0.0)), eps)
    psi = (
        coarse.withColumn("term", (p - q) * F.log(p / q))
        .groupBy(FEATURE)
        .agg(F.when(F.sum("n") > 0, F.sum("term")).alias("psi"))  # no rows today: undefined, not drift
    )

    # KS on the CDFs of present values at the edges, with the within-bin upper bound.
    present = joined.where(~F.col("is_missing"))
    ordered = by_feature.orderBy(BIN).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    cur_cdf = F.try_divide(F.sum("n").over(ordered), F.sum("n").over(by_feature))
    ref_cdf = F.try_divide(F.sum("ref_n").over(ordered), F.sum("ref_n").over(by_feature))
    cdfs = present.withColumn("c", cur_cdf).withColumn("r", ref_cdf)
    prev = by_feature.orderBy(BIN)
    cdfs = cdfs.withColumn("c0", F.coalesce(F.lag("c").over(prev), F.lit(0.0))).withColumn(
        "r0", F.coalesce(F.lag("r").over(prev), F.lit(0.0))
    )
    ks = cdfs.groupBy(FEATURE).agg(
        F.max(F.abs(F.col("c") - F.col("r"))).alias("ks"),
        # Where a side has no present values its CDF is null: KS undefined, and its bound too (not |0 - r|).
        F.max(F.when(F.col("c").isNotNull() & F.col("r").isNotNull(), F.greatest(
            F.abs(F.col("c") - F.col("r0")), F.abs(F.col("c0") - F.col("r"))))).alias("ks_upper"),
    )
    missing = joined.groupBy(FEATURE).agg(
        F.try_divide(F.sum(F.when(F.col("is_missing"), F.col("n")).otherwise(0)), F.sum("n")).alias("missing_share"),
        F.try_divide(F.sum(F.when(F.col("is_missing"), F.col("ref_n")).otherwise(0)), F.sum("ref_n")).alias(
            "reference_missing_share"
        ),
    )
    return psi.join(ks, FEATURE, "left").join(missing, FEATURE, "left").select(*STATS_SCHEMA.fieldNames())
