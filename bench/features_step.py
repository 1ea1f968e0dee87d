"""Benchmark: where one features step's time goes, on an existing warehouse (e.g. the demo's).

Runs ``build_features`` for ``--date`` three times in one session (the first pays the JVM's JIT
warm-up), then each part alone, forced with a ``noop`` write (a ``count`` would let Spark prune
most columns): the activity windows, the graph features (and triangles alone), the attribute and
neighbour features. Prints seconds and the number of Spark jobs and stages of each.

    .venv/bin/botwatch demo --warehouse /tmp/demo_wh
    .venv/bin/python bench/features_step.py --warehouse /tmp/demo_wh --date 2026-01-12
"""
from __future__ import annotations

import argparse
import datetime as dt

from common import local_spark  # bench/ is on sys.path when the script runs
from common import timed as clock

from botwatch import tables as t
from botwatch.delta_io import read_table
from botwatch.features import activity, attributes, build, graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--set", action="append", default=[], help="conf override key=value (repeatable)")
    args = parser.parse_args()
    wh, day = args.warehouse, args.date
    spark, conf = local_spark(wh, "bench-features-step", shuffle_partitions=4, overrides=args.set)
    tracker = spark.sparkContext.statusTracker()

    def timed(name, fn):
        """Run ``fn`` as Spark job group ``name``; print its seconds, jobs and stages as a table row."""
        spark.sparkContext.setJobGroup(name, name)
        with clock() as took:
            out = fn()
        jobs = [tracker.getJobInfo(i) for i in tracker.getJobIdsForGroup(name)]
        stages = sum(len(j.stageIds) for j in jobs if j is not None)
        print(f"| {name} | {took['seconds']:.1f} | {len(jobs)} | {stages} |", flush=True)
        return out

    def noop(df):
        return lambda: df.write.format("noop").mode("overwrite").save()

    params = conf.section("features")
    gp = params.get("graph", {}) or {}
    windows = tuple(params["windows"])
    print("| part | seconds | jobs | stages |\n| --- | ---: | ---: | ---: |")
    for run in ("first", "second", "third"):
        timed(f"features step ({run})", lambda: build.build_features(spark, wh, day, params))
    accounts = build.accounts_as_of(read_table(spark, wh, t.ACCOUNTS), day)
    act = timed("activity windows (state write)", lambda: activity.activity_features(spark, wh, day, windows))
    timed("activity features", noop(act))
    edges, labels = read_table(spark, wh, t.EDGES), read_table(spark, wh, t.LABELS)
    knobs = build.hub_settings(gp)
    timed("graph features", noop(graph.graph_features(
        edges, accounts, day, activity=build.neighbour_activity(act, gp), labels=labels, **knobs)))
    timed("triangles alone", noop(graph.triangle_counts(graph.edges_as_of(edges, day), **knobs)))
    extra, _ = attributes.run_attribute_features(edges, accounts, act, day, params, reserved=[])
    if extra is not None:
        timed("attribute and neighbour features", noop(extra))


if __name__ == "__main__":
    main()
