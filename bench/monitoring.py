"""Benchmark: the monitor step (drift, review queue, prevalence, report) at N accounts x ~60 features.

Synthetic data is generated in Spark (``spark.range`` + seeded ``randn``/``rand``) and written once,
untimed, into a scratch warehouse: the ``features`` partitions of the training date T and of the
run date D (60 features: normal, lognormal, counts, flags, 5 % missing in some; 3 of them shifted
at D), 8 days of ``scores`` ending at D, investigator ``labels`` for 0.5 % of accounts, and a
champion in the registry. Then, timed (wall, and peak RSS of the process tree):

* ``reference_profile`` of T (the training-time cost: approxQuantile at 99 probabilities for 60
  columns, then one binning pass);
* ``drift_statistics`` of D against it alone (PSI and binned KS for 60 features, in Spark);
* the whole monitor step (``botwatch.monitoring.run.monitor``), report included.

    .venv/bin/python bench/monitoring.py --accounts 100000,300000          # the recorded run
    .venv/bin/python bench/monitoring.py --accounts 20000                   # a quick check
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from common import PeakMemory, local_spark, timed

N_FEATURES = 60
DRIFTED = ("f_normal_0", "f_lognormal_1", "f_count_2")


def feature_columns(F, shift: float):
    cols = []
    for i in range(N_FEATURES):
        kind = ("normal", "lognormal", "count", "flag", "missing")[i % 5]
        name = f"f_{kind}_{i}"
        d = shift if name in DRIFTED else 0.0
        if kind == "normal":
            c = F.randn(i) + F.lit(d)
        elif kind == "lognormal":
            c = F.exp(F.randn(i) + F.lit(d))
        elif kind == "count":
            c = F.floor(F.exp(F.randn(i) * 1.2 + 1 + F.lit(d)))
        elif kind == "flag":
            c = (F.rand(i) < 0.3).cast("double")
        else:
            c = F.when(F.rand(1000 + i) < 0.05, None).otherwise(F.randn(i))
        cols.append(c.alias(name))
    return cols


def build(spark, wh: str, n: int, run: dt.date, train: dt.date) -> tuple[str, list[str]]:
    from pyspark.sql import functions as F

    from botwatch import registry
    from botwatch.delta_io import write_table

    def features(day, shift):
        base = spark.range(n).withColumnRenamed("id", "account_id")
        return base.select(
            "account_id", F.lit(day).alias("run_date"),
            F.element_at(F.array(*[F.lit(c) for c in ("US", "IN", "BR", "DE")]),
                         (F.col("account_id") % 4 + 1).cast("int")).alias("country"),
            (F.col("account_id") % 5 == 0).alias("is_new_account"),
            *feature_columns(F, shift),
        ).repartition(max(2, n // 250_000))

    for day, shift in ((train, 0.0), (run, 1.0)):
        write_table(features(day, shift), wh, "features", mode="append", partition_by=["run_date"])
    days = [run - dt.timedelta(days=k) for k in range(8)]
    scores = (
        spark.range(n).withColumnRenamed("id", "account_id")
        .crossJoin(spark.createDataFrame([(d,) for d in days], "run_date date"))
        .withColumn("bot", F.xxhash64("account_id") % 100 < 3)
        .withColumn("score", F.when(F.col("bot"), F.lit(0.6) + F.rand(7) * 0.4).otherwise(F.pow(F.rand(8), 8)))
        .withColumn("stage1_score", F.col("score"))
        .withColumn("decision", F.when(F.col("score") >= 0.8, "action").when(F.col("score") >= 0.7, "review")
                    .otherwise("none"))
        .withColumn("holdout", (F.col("decision") == "action") & (F.col("account_id") % 100 == 0))
        .withColumn("stage2_reached", F.col("score") >= 0.5)
        .withColumn("actioned", (F.col("decision") == "action") & ~F.col("holdout"))
        .withColumn("model_version", F.lit("stage1_xgb:1"))
        .drop("bot")
    )
    write_table(scores, wh, "scores", mode="append", partition_by=["run_date"])
    labels = (
        spark.range(n).withColumnRenamed("id", "account_id").where(F.xxhash64("account_id", F.lit(1)) % 200 == 0)
        .select("account_id", (F.xxhash64("account_id") % 100 < 3).cast("int").alias("label"),
                F.lit("investigator").alias("source"),
                (F.lit(run).cast("timestamp") - F.expr("INTERVAL 3 DAYS")
                 + (F.col("account_id") % 3).cast("int") * F.expr("INTERVAL 1 DAY")).alias("labeled_at"))
    )
    write_table(labels, wh, "labels", mode="append")
    art = registry.artifact_dir(wh, "stage1_xgb", 1)
    cols = [f"f_{('normal', 'lognormal', 'count', 'flag', 'missing')[i % 5]}_{i}" for i in range(N_FEATURES)]
    registry.write_artifact(art, "features.json", {"features": cols})
    registry.upsert(spark, wh, registry.ModelRecord("stage1_xgb", 1, "champion", train, artifact_path=art,
                                                    threshold=0.8, train_end=train))
    return art, cols


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", default="100000,1000000", help="comma-separated sizes")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    from pyspark.sql import functions as F

    from botwatch import registry
    from botwatch.delta_io import read_table
    from botwatch.monitoring.drift import REFERENCE_ARTIFACT, drift_statistics, reference_profile
    from botwatch.monitoring.run import MonitorParams, monitor

    run, train = dt.date(2026, 3, 10), dt.date(2026, 3, 4)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_monitoring_"))
    spark, _ = local_spark(f"{root}/warehouse", "bench-monitoring", driver_memory=args.driver_memory)
    print(f"loadavg at start: {open('/proc/loadavg').read().split()[:3]}")
    for n in [int(x) for x in args.accounts.split(",")]:
        wh = f"{root}/wh_{n}"
        with timed() as tb:
            art, cols = build(spark, wh, n, run, train)
        features = read_table(spark, wh, "features")
        with timed() as tr, PeakMemory() as mr:
            profile = reference_profile(features.where(F.col("run_date") == F.lit(train)), cols)
        registry.write_artifact(art, REFERENCE_ARTIFACT, profile | {"run_date": train.isoformat()})
        with timed() as td, PeakMemory() as md:
            stats = drift_statistics(features.where(F.col("run_date") == F.lit(run)), profile).toPandas()
        flagged = sorted(stats.loc[stats["psi"] >= 0.25, "feature"])
        with timed() as tm, PeakMemory() as mm:
            summary = monitor(spark, wh, run, MonitorParams())
        load = open("/proc/loadavg").read().split()[:3]
        print(f"accounts={n:,} features={len(cols)} (data build {tb['seconds']:.0f}s)")
        print(f"  reference_profile  {tr['seconds']:7.1f}s  peak {mr.peak_gib:.1f} GiB")
        print(f"  drift_statistics   {td['seconds']:7.1f}s  peak {md.peak_gib:.1f} GiB  PSI>=0.25: {flagged}")
        print(f"  monitor step       {tm['seconds']:7.1f}s  peak {mm.peak_gib:.1f} GiB  "
              f"queue {summary['review_queue']} alert {summary['drift_alert']}")
        print(f"  loadavg after: {load}")
        shutil.rmtree(wh, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
