"""``botwatch demo``: simulate a small platform, build the features of every simulated day, train
the stage-1 model on the last day and score it, then say where the tables are.

Sized (conf ``demo``) to finish in a few minutes on 2 cores.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from botwatch import steps
from botwatch import tables as t
from botwatch.config import Config, warehouse_path
from botwatch.simulate import write_platform


def run_demo(spark: SparkSession, conf: Config, echo: Callable[[str], None] = print) -> dict:
    params = conf.section("demo")
    warehouse = warehouse_path(conf)
    start = dt.date.fromisoformat(conf["simulate.start_date"])
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        echo(f"[{timings[name]:6.1f}s] {name}: {out}")
        return out

    timed("simulate", lambda: write_platform(
        spark, warehouse, accounts=params["accounts"], days=params["days"], seed=params["seed"],
        start_date=start, params=conf.section("simulate"),
    ))
    days = [start + dt.timedelta(days=i) for i in range(params["days"])]
    for day in days:
        timed(f"features {day}", lambda day=day: steps.features_step(spark, conf, day))
    last = days[-1]
    trained = timed(f"train {last}", lambda: steps.train_step(spark, conf, last))
    if trained["promoted"]:
        scored = timed(f"score {last}", lambda: steps.score_step(spark, conf, last))
    else:
        # The gate refused the only model: with no champion there is nothing to score with.
        echo(f"not scored: the promotion gate refused the model ({trained['reason']})")
        scored = {}
    echo("")
    echo(f"Tables (Delta) under {warehouse}:")
    for table in (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.ACTIVITY_DAILY, t.FEATURES, t.MODEL_REGISTRY, t.SCORES):
        echo(f"  {table:16s} {t.table_path(warehouse, table)}")
    echo(
        f"Headline (golden set): stage-1 PR-AUC {trained['golden_pr_auc']:.3f} vs canary "
        f"{trained['canary_golden_pr_auc']:.3f}; operating threshold {trained['threshold']}; "
        f"actions {scored.get('n_action', 0)}, reviews {scored.get('n_review', 0)}"
    )
    echo(f"Total {sum(timings.values()):.0f}s. Query: spark.read.format('delta').load('{t.table_path(warehouse, t.SCORES)}')")
    return {"timings": timings, "train": trained, "score": scored}
