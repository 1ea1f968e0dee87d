"""``botwatch demo``: simulate a small platform and run the nightly run on every simulated day, then
say where the tables and the run report are and print the headline metrics.

Sized (conf ``demo``) to finish in minutes on 2 cores (see BENCHMARKS.md). Every day runs
``validate``. The last ``demo.full_run_days`` days run the whole pipeline (features, train, score,
publish, monitor). Training needs labelled rows whose features predate their labels, split by time
into train and validation, so the days listed in ``demo.history_feature_days`` (counted back from
the last day) also build features: a label pairs with the latest features before it, and the
earliest of those days must come before both the train and the validation labels
(``train.valid_days``). Whole runs on the days in between would only wait for labels. The early
days' ``activity_daily`` partials are built by the next features step, one job per run of missing
days (what a first nightly run does), rather than one activity step per day: the same rows, without
a Spark job and a run-log entry per day. The investigator rate is raised so a small platform has
enough labels to train and promote a model (``demo.*`` overrides, see :func:`demo_conf`).
"""
from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from botwatch import files, nightly, registry
from botwatch import tables as t
from botwatch.config import Config, warehouse_path
from botwatch.delta_io import read_table, table_exists
from botwatch.monitoring.run import report_path
from botwatch.simulate import write_platform
from botwatch.training import STAGE1_MODEL

# An early day is validated; the next features step builds its activity partial.
EARLY_STEPS = ("validate",)
HISTORY_STEPS = (*EARLY_STEPS, "features")


def demo_conf(conf: Config, user_sets: Sequence[str] = ()) -> Config:
    """``conf`` with the demo's bot share (simulated, and assumed by the threshold until the monitor
    estimates it), label rate and training minimums (a small platform has few bots and labels; its
    golden set must hold both classes for a model to be promoted), then ``user_sets`` (the command
    line's ``--set``: what the user asked for wins over the demo's choices)."""
    return conf.with_overrides([
        f"simulate.prevalence={conf['demo.prevalence']}",
        f"simulate.labels.investigator_per_week_per_100k={conf['demo.investigator_per_week_per_100k']}",
        f"train.min_train_rows={conf['demo.min_train_rows']}",
        f"train.valid_days={conf['demo.valid_days']}",
        f"train.n_bootstrap={conf['demo.n_bootstrap']}",
        f"train.prevalence_fallback={conf['demo.prevalence']}",
        *user_sets,
    ])


def run_demo(spark: SparkSession, conf: Config, echo: Callable[[str], None] = print) -> dict:
    params = conf.section("demo")
    warehouse = warehouse_path(conf)
    start = dt.date.fromisoformat(conf["simulate.start_date"])
    per_step: dict[str, float] = defaultdict(float)

    t0 = time.perf_counter()
    counts = write_platform(
        spark, warehouse, accounts=params["accounts"], days=params["days"], seed=params["seed"],
        start_date=start, params=conf.section("simulate"),
    )
    per_step["simulate"] = time.perf_counter() - t0
    echo(f"[{per_step['simulate']:6.1f}s] simulated {params['accounts']} accounts x {params['days']} days: {counts}")

    days = [start + dt.timedelta(days=i) for i in range(params["days"])]
    full_from = len(days) - params["full_run_days"]
    history = {len(days) - 1 - k for k in params["history_feature_days"]}
    statuses: dict[dt.date, dict[str, str]] = {}
    for i, day in enumerate(days):
        which = None if i >= full_from else list(HISTORY_STEPS if i in history else EARLY_STEPS)
        t1 = time.perf_counter()
        echo(f"run {day} ({'whole run' if which is None else ', '.join(which)})")
        results = nightly.run_steps(spark, conf, day, which, echo=echo)
        for step, result in results.items():
            per_step[step] += result["seconds"]
        per_step["run overhead (lock, log, skip checks)"] += (time.perf_counter() - t1) - sum(
            r["seconds"] for r in results.values()
        )
        statuses[day] = {s: r["status"] for s, r in results.items()}
    last = days[-1]
    total = time.perf_counter() - t0

    echo("")
    echo(f"Tables (Delta) under {warehouse}:")
    for table in (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.QUARANTINE, t.ACTIVITY_DAILY, t.FEATURES,
                  t.MODEL_REGISTRY, t.SCORES, t.SCORES_LATEST, t.REVIEW_QUEUE, t.METRICS, t.DRIFT, t.RUN_LOG):
        if table_exists(spark, warehouse, table):
            echo(f"  {table:16s} {t.table_path(warehouse, table)}")
    report = report_path(warehouse, last)
    echo(f"Report of {last}: {report}" if files.exists(report, spark) else f"Report of {last}: none written (monitor: "
         f"{statuses[last].get('monitor')})")

    headline = headline_metrics(spark, warehouse, last)
    for line in headline["lines"]:
        echo(line)
    echo("")
    echo(f"Time per step (all days), total {total:.0f}s:")
    for step, secs in sorted(per_step.items(), key=lambda kv: -kv[1]):
        echo(f"  {step:40s} {secs:7.1f}s")
    echo(f"Query: spark.read.format('delta').load('{t.table_path(warehouse, t.SCORES_LATEST)}')")
    return {"per_step": dict(per_step), "total": total, "statuses": statuses, "headline": headline,
            "last_day": last}


def headline_metrics(spark: SparkSession, warehouse: str, run_date: dt.date) -> dict:
    """The champion's golden-set figures and D's decisions, as lines and values."""
    champ = registry.champion(spark, warehouse, STAGE1_MODEL)
    out: dict = {"champion": None, "decisions": {}, "lines": []}
    if champ is None:
        out["lines"].append("No champion model: the promotion gate refused every model (see model_registry.reason).")
        return out
    m = champ["metrics"] or {}
    out["champion"] = champ[t.VERSION]
    out["lines"].append(
        f"Champion {STAGE1_MODEL} v{champ[t.VERSION]} (trained {champ[t.RUN_DATE]}): golden PR-AUC "
        f"{m.get('golden_pr_auc', float('nan')):.3f} vs canary {m.get('canary_golden_pr_auc', float('nan')):.3f}; "
        f"threshold {champ['threshold']}"
    )
    if table_exists(spark, warehouse, t.SCORES):
        scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == F.lit(run_date))
        out["decisions"] = {r[t.DECISION]: r["count"] for r in scores.groupBy(t.DECISION).count().collect()}
        out["lines"].append(f"Scored {sum(out['decisions'].values())} accounts on {run_date}: {out['decisions']}")
    return out
