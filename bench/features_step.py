"""Benchmark: where one features step's time goes, on an existing warehouse (e.g. the demo's).

Runs ``build_features`` for ``--date`` three times in one session (the first pays the JVM's JIT
warm-up), then each part alone, forced with a ``noop`` write (a ``count`` would let Spark prune
most columns): the activity windows, the graph features (and triangles alone), the attribute and
neighbour features, each with its own graph and then with one graph shared as the step shares it.
Prints seconds and the number of Spark jobs and stages of each, and for each
part the size of the physical plan Spark optimises: its exchanges (shuffles and broadcasts) and its
Parquet scans per table (a table read many times is a subplan rebuilt by each consumer).

    .venv/bin/botwatch demo --warehouse /tmp/demo_wh
    .venv/bin/python bench/features_step.py --warehouse /tmp/demo_wh --date 2026-01-12
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
from collections import Counter

from common import local_spark  # bench/ is on sys.path when the script runs
from common import timed as clock

from botwatch import tables as t
from botwatch.delta_io import read_table, scratch_frames
from botwatch.features import activity, attributes, build, graph


def plan_size(df) -> str:
    """Exchanges (of which broadcasts) and Parquet scans per table in ``df``'s physical plan."""
    plan = df._jdf.queryExecution().executedPlan().toString()
    exchanges = len(re.findall(r"\bExchange\b|BroadcastExchange", plan))
    broadcasts = plan.count("BroadcastExchange")
    # Spark cuts long locations short ("..."): the step's scratch files live under the checkpoint dir.
    locations = re.findall(r"FileScan parquet .*?Location: \w+\(\d+ paths\)\[([^\],]*)", plan)
    scans = Counter("scratch files" if "/_checkpoints/" in loc else loc.rstrip("/").rsplit("/", 1)[-1]
                    for loc in locations)
    per_table = ", ".join(f"{table} {n}" for table, n in scans.most_common())
    return f"{exchanges} ({broadcasts} broadcast) | {per_table}"


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

    sizes: dict[str, str] = {}

    def timed_noop(name, df):
        """Note ``df``'s plan size, then time writing it to ``noop``."""
        sizes[name] = plan_size(df)
        timed(name, lambda: df.write.format("noop").mode("overwrite").save())

    params = conf.section("features")
    gp = params.get("graph", {}) or {}
    windows = tuple(params["windows"])
    print("| part | seconds | jobs | stages |\n| --- | ---: | ---: | ---: |")
    for run in ("first", "second", "third"):
        timed(f"features step ({run})", lambda: build.build_features(spark, wh, day, params))
    accounts = build.accounts_as_of(read_table(spark, wh, t.ACCOUNTS), day)
    act = timed("activity windows (state write)", lambda: activity.activity_features(spark, wh, day, windows))
    timed_noop("activity features", act)
    edges, labels = read_table(spark, wh, t.EDGES), read_table(spark, wh, t.LABELS)
    knobs = build.hub_settings(gp)
    timed_noop("graph features", graph.graph_features(
        edges, accounts, day, activity=build.neighbour_activity(act, gp), labels=labels, **knobs))
    timed_noop("triangles alone", graph.triangle_counts(graph.edges_as_of(edges, day), **knobs))
    extra, _ = attributes.run_attribute_features(edges, accounts, act, day, params, reserved=[])
    if extra is not None:
        timed_noop("attribute and neighbour features", extra)
    # As the step runs them: the graph as of D built once into scratch files, then shared.
    with scratch_frames(spark, wh, "bench-features-step") as materialize:
        context = timed("shared graph (written once)", lambda: graph.graph_context(
            edges, day, knobs["hub_degree_cap"], materialize=materialize))
        timed_noop("graph features, shared graph", graph.graph_features(
            None, accounts, day, activity=build.neighbour_activity(act, gp), labels=labels, context=context, **knobs))
        extra, _ = attributes.run_attribute_features(None, accounts, act, day, params, reserved=[], context=context)
        if extra is not None:
            timed_noop("attribute and neighbour features, shared graph", extra)
    print("\n| part | exchanges in the plan | Parquet scans per table |\n| --- | ---: | --- |")
    for name, size in sizes.items():
        print(f"| {name} | {size} |")


if __name__ == "__main__":
    main()
