"""Benchmark: the stage-1 XGBoost training (``xgboost.spark`` through botwatch's ``fit_booster``,
``num_workers`` Spark tasks) next to single-process ``xgboost.train`` on the same rows.

Synthetic rows (numpy, seeded): ``--rows`` x ``--features`` float features with ~10 % missing
(NaN, as new accounts have), a logistic label with ~5 % positives, weights from a label-source
mix; 10 % of the rows are the validation set. Written once as Parquet (untimed). Both sides run
the same hyper-parameters and the same number of rounds (early stopping off, so the work is
equal), ``hist`` trees, 2 threads in all (Spark: 2 workers x 1 core; xgboost.train: nthread=2).
Peak memory: psutil RSS of the whole process tree, and of the Spark Python workers alone.

    .venv/bin/python bench/train_xgb.py                      # 1M rows x 60 features (the recorded run)
    .venv/bin/python bench/train_xgb.py --rows 200000        # smaller
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from common import PeakMemory, timed  # noqa: E402


def make_data(rows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features)).astype(np.float32)
    coef = rng.normal(scale=0.6, size=n_features) * (rng.random(n_features) < 0.3)
    logit = x @ coef + 0.8 * np.sin(2 * x[:, 0]) * x[:, 1] - 3.6
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = np.nan
    weight = rng.choice([1.0, 0.3, 0.1], size=rows, p=[0.2, 0.5, 0.3])
    valid = rng.random(rows) < 0.1
    return x, y, weight, valid


def write_parquet(path: Path, x, y, weight, valid, cols: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(x[:, i]).cast(pa.float64()) for i in range(x.shape[1])]
    names = cols + ["label", "weight", "valid"]
    table = pa.table(arrays + [pa.array(y), pa.array(weight), pa.array(valid)], names=names)
    pq.write_table(table, path, row_group_size=128 * 1024)


def worker_rss_peak(stop, box) -> None:
    # Spark's Python workers are pyspark.daemon children of the JVM.
    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for p in me.children(recursive=True):
            try:
                if "pyspark" in " ".join(p.cmdline()) and "daemon" in " ".join(p.cmdline()):
                    total += p.memory_info().rss
            except psutil.Error:
                pass
        box["peak"] = max(box.get("peak", 0), total)
        stop.wait(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=60)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import threading

    import pandas as pd
    import xgboost as xgb

    from botwatch.config import load_config
    from botwatch.models.stage1 import XGBParams, fit_booster
    from botwatch.spark import get_spark

    cols = [f"f{i:02d}" for i in range(args.features)]
    x, y, weight, valid = make_data(args.rows, args.features, args.seed)
    out: dict = {"rows": args.rows, "features": args.features, "rounds": args.rounds,
                 "loadavg_start": os.getloadavg()[0]}
    params = XGBParams(n_estimators=args.rounds, max_depth=args.max_depth, learning_rate=0.1, subsample=0.9,
                       colsample_bytree=0.9, early_stopping_rounds=args.rounds + 1,
                       num_workers=args.num_workers, seed=args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        write_parquet(path, x, y, weight, valid, cols)

        # Single process first: xgboost.train with the same parameters on 2 threads.
        with PeakMemory() as mem, timed() as single:
            dtrain = xgb.DMatrix(x[~valid], label=y[~valid], weight=weight[~valid], missing=np.nan, nthread=2)
            dvalid = xgb.DMatrix(x[valid], label=y[valid], weight=weight[valid], missing=np.nan, nthread=2)
            booster = xgb.train(
                {"objective": "binary:logistic", "tree_method": "hist", "max_depth": args.max_depth, "eta": 0.1,
                 "subsample": 0.9, "colsample_bytree": 0.9, "nthread": 2, "seed": args.seed,
                 "eval_metric": "logloss"},
                dtrain, num_boost_round=args.rounds, evals=[(dvalid, "valid")], verbose_eval=False,
            )
        out["xgboost_train_s"] = single["seconds"]
        out["xgboost_train_peak_gib"] = mem.peak_gib
        single_pred = booster.predict(dvalid)
        del dtrain, dvalid

        conf = load_config("conf/local.yaml", [
            "spark.master=local[2]", "spark.ui_enabled=false", f"spark.driver_memory={args.driver_memory}",
            "spark.shuffle_partitions=4", f"warehouse={tmp}/wh",
        ])
        spark = get_spark(conf, app_name="bench-train-xgb")
        df = spark.read.parquet(str(path)).repartition(args.num_workers).cache()
        df.count()  # untimed: reading the Parquet file
        train = df.where(~df.valid).drop("valid")
        vdf = df.where(df.valid).drop("valid")
        stop, box = threading.Event(), {}
        watcher = threading.Thread(target=worker_rss_peak, args=(stop, box), daemon=True)
        watcher.start()
        with PeakMemory() as mem, timed() as distributed:
            spark_booster = fit_booster(train, vdf, cols, params, label_col="label", weight_col="weight")
        stop.set()
        watcher.join()
        out["spark_xgb_s"] = distributed["seconds"]
        out["spark_xgb_peak_tree_gib"] = mem.peak_gib
        out["spark_xgb_peak_workers_gib"] = box.get("peak", 0) / 2**30
        out["ratio_spark_over_single"] = distributed["seconds"] / single["seconds"]
        pdf = pd.DataFrame(x[valid], columns=cols)
        spark_pred = spark_booster.inplace_predict(pdf, missing=np.nan)
        out["mean_abs_pred_diff"] = float(np.mean(np.abs(spark_pred - single_pred)))
        out["trees_spark"] = spark_booster.num_boosted_rounds()
        out["loadavg_end"] = os.getloadavg()[0]
        spark.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
