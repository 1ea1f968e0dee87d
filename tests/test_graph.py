"""Graph features against independent references: triangles and clustering against networkx
(exact below the hub cap, hub estimates within the documented standard error), degrees,
reciprocity, growth and neighbour aggregates against pandas, the as-of-date edge filter, and
point-in-time labels in ``bot_neighbor_share``."""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import shutil
import time

import networkx as nx
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import functions as F

from botwatch.delta_io import scratch_frames
from botwatch.features.graph import (
    clustering_coef,
    graph_context,
    graph_features,
    triangle_counts,
    undirected_simple,
)
from botwatch.schemas import SchemaMismatchError

EDGE_COLS = ["src", "dst"]


def _messy_directed(g: nx.Graph, rnd: random.Random, offset: int) -> list[tuple[int, int]]:
    """Directed follows whose undirected simple graph is ``g``: random directions, duplicates,
    reciprocal edges and self-loops mixed in."""
    out = []
    for a, b in g.edges():
        a, b = a + offset, b + offset
        out.append((a, b) if rnd.random() < 0.5 else (b, a))
        if rnd.random() < 0.3:
            out.append((b, a))  # reciprocal
        if rnd.random() < 0.2:
            out.append(out[-1])  # duplicate
    out += [(v + offset, v + offset) for v in rnd.sample(list(g.nodes()), 5)]  # self-loops
    rnd.shuffle(out)
    return out


def test_undirected_simple_and_triangles_exact_below_cap(spark):
    # Three random graphs as one disjoint union (one Spark job): a dense G(n,p), a clustered
    # power-law graph and a graph with a star, so some vertices exceed the cap.
    rnd = random.Random(11)
    star = nx.gnp_random_graph(60, 0.05, seed=5)
    star.add_edges_from((0, v) for v in range(1, 60))
    graphs = [nx.gnp_random_graph(50, 0.2, seed=1), nx.powerlaw_cluster_graph(200, 3, 0.6, seed=2), star]
    union, rows, offset = nx.Graph(), [], 0
    for g in graphs:
        rows += _messy_directed(g, rnd, offset)
        union.add_edges_from((a + offset, b + offset) for a, b in g.edges())
        offset += 1000
    cap, pairs = 8, 50
    edges = spark.createDataFrame(rows, EDGE_COLS)
    simple = {(r["u"], r["v"]) for r in undirected_simple(edges).collect()}
    assert simple == {(min(a, b), max(a, b)) for a, b in union.edges()}
    tri = triangle_counts(edges, hub_degree_cap=cap, hub_sample_pairs=pairs)
    got = {
        r["account_id"]: r
        for r in tri.withColumn("cc", clustering_coef(F.col("triangles"), F.col("degree"))).collect()
    }

    want_t, want_c, deg = nx.triangles(union), nx.clustering(union), dict(union.degree())
    assert set(got) == set(union.nodes())
    assert any(d > cap for d in deg.values()) and any(math.comb(d, 2) > pairs for d in deg.values())
    for v, r in got.items():
        assert r["degree"] == deg[v]
        # Estimated exactly for hubs with more neighbour pairs than the sample; all others exact.
        assert r["triangles_estimated"] == (deg[v] > cap and math.comb(deg[v], 2) > pairs), v
        if not r["triangles_estimated"]:
            assert r["triangles"] == want_t[v], v
            assert r["cc"] == pytest.approx(want_c[v], abs=1e-12), v
            assert r["triangles_stderr"] == 0.0


def _hub_graph(seed: int) -> tuple[nx.Graph, dict[int, int]]:
    """A sparse background graph plus three hubs of 300 neighbours each; among each hub's
    neighbours a different number of planted edges closes triangles at the hub."""
    rnd = random.Random(seed)
    g = nx.gnm_random_graph(1200, 1500, seed=seed)
    hubs = {}
    for hub, planted in ((5000, 300), (5001, 900), (5002, 3000)):
        nbrs = rnd.sample(range(1200), 300)
        g.add_edges_from((hub, x) for x in nbrs)
        closing = g.subgraph(nbrs).number_of_edges()
        while closing < planted:
            a, b = rnd.sample(nbrs, 2)
            closing += not g.has_edge(a, b)
            g.add_edge(a, b)
        hubs[hub] = len(nbrs)
    return g, hubs


def test_hub_estimate_within_documented_error(spark):
    g, hubs = _hub_graph(7)
    cap, k = 5, 2000
    rnd = random.Random(1)
    edges = spark.createDataFrame(_messy_directed(g, rnd, 0), EDGE_COLS)
    got = {r["account_id"]: r for r in triangle_counts(edges, hub_degree_cap=cap, hub_sample_pairs=k, seed=3).collect()}
    want = nx.triangles(g)
    for hub, d in hubs.items():
        r = got[hub]
        pairs = math.comb(d, 2)
        p = want[hub] / pairs
        se = pairs * math.sqrt(p * (1 - p) / k)  # the documented binomial standard error
        assert r["triangles_estimated"]
        assert abs(r["triangles"] - want[hub]) <= 4 * se, (hub, r["triangles"], want[hub], se)
        # the reported plug-in error is of the right size
        assert 0.5 * se <= r["triangles_stderr"] <= 2 * se, (hub, r["triangles_stderr"], se)
    for v, r in got.items():
        if g.degree(v) <= cap:
            assert not r["triangles_estimated"]
            assert r["triangles"] == want[v], v
        elif not r["triangles_estimated"]:  # every neighbour pair checked: exact too
            assert r["triangles"] == want[v], v


def test_hub_estimates_do_not_depend_on_salt_buckets(spark):
    """``salt_buckets`` only spreads a hub's rows over tasks (a speed knob: changing it reruns nothing), so
    the neighbour pairs sampled for a hub, and its estimate, must be the same for any number of buckets."""
    g, hubs = _hub_graph(7)
    edges = spark.createDataFrame(_messy_directed(g, random.Random(1), 0), EDGE_COLS)
    runs = [
        {r["account_id"]: (r["triangles"], r["triangles_stderr"])
         for r in triangle_counts(edges, hub_degree_cap=5, hub_sample_pairs=200, seed=3, salt_buckets=b).collect()}
        for b in (1, 3, 32)
    ]
    assert all(runs[0][hub][1] > 0 for hub in hubs)  # sampled, not every pair
    assert runs[0] == runs[1] == runs[2]


# ---------------------------------------------------------------- graph_features

D = dt.date(2024, 5, 10)
MIDNIGHT_D = dt.datetime(2024, 5, 10)
END_D = MIDNIGHT_D + dt.timedelta(days=1)
ACTIVITY_COLS = ["n_events_7d", "hour_entropy_7d"]


def _scenario():
    rnd = random.Random(42)
    accounts = list(range(60)) + [100, 101, 102, 103, 104, 105, 200, 201, 202, 203]
    edges = []
    for _ in range(400):
        a, b = rnd.randrange(60), rnd.choice(list(range(60)) + [500, 501, 502])  # some ends outside accounts
        if rnd.random() < 0.5:
            a, b = b, a
        when = None if rnd.random() < 0.1 else MIDNIGHT_D + dt.timedelta(seconds=rnd.randint(-20 * 86400, 3 * 86400))
        edges.append((a, b, when))
        if rnd.random() < 0.15:
            edges.append((b, a, MIDNIGHT_D - dt.timedelta(days=rnd.randint(0, 10))))  # reciprocal
        if rnd.random() < 0.1:
            edges.append((a, b, MIDNIGHT_D - dt.timedelta(days=rnd.randint(0, 30))))  # re-follow
    edges += [(v, v, MIDNIGHT_D - dt.timedelta(days=2)) for v in (3, 7, 102)]  # self-loops
    edges += [
        (103, 5, END_D),  # created the moment D ends: not yet
        (7, 103, END_D + dt.timedelta(days=1)),
        (6, 8, END_D - dt.timedelta(seconds=1)),  # last second of D: counts
        (104, 105, END_D - dt.timedelta(seconds=1)),  # ... between accounts with no other edge
        (200, 201, MIDNIGHT_D - dt.timedelta(days=40)),
        (202, 203, None),
    ]
    labels = []
    for v in rnd.sample(range(60), 35):
        for _ in range(rnd.randint(1, 3)):
            ts = MIDNIGHT_D + dt.timedelta(seconds=rnd.randint(-15 * 86400, 5 * 86400))
            labels.append((v, rnd.randint(0, 1), "user_report", ts))
    labels += [
        (201, 0, "investigator", MIDNIGHT_D - dt.timedelta(days=3)),
        (201, 1, "investigator", MIDNIGHT_D),  # observed at D 00:00: not before D
        (201, 1, "investigator", MIDNIGHT_D + dt.timedelta(days=1)),
        (203, 1, "investigator", MIDNIGHT_D - dt.timedelta(seconds=1)),
        # Training's rules: an investigator's 0 outranks a later user report's 1, botwatch's own decisions
        # never count, and an exact tie between opposite labels of one source goes to human.
        (5, 0, "investigator", MIDNIGHT_D - dt.timedelta(days=5)),
        (5, 1, "user_report", MIDNIGHT_D - dt.timedelta(days=1)),
        (9, 1, "botwatch", MIDNIGHT_D - dt.timedelta(days=1)),
        (11, 1, "appeal", MIDNIGHT_D - dt.timedelta(days=2)),
        (11, 0, "appeal", MIDNIGHT_D - dt.timedelta(days=2)),
    ]
    activity = [
        (v, rnd.randint(0, 50), None if rnd.random() < 0.2 else rnd.uniform(0, 4.5))
        for v in range(0, 60) if rnd.random() < 0.8
    ] + [(500, 7, 1.5)]
    return accounts, edges, labels, activity


def _reference(accounts, edges, labels, activity, growth_days=7) -> list[dict]:
    """Every feature from the raw rows with pandas and networkx."""
    e = pd.DataFrame(edges, columns=["src", "dst", "created_at"])
    e = e[(e.created_at.isna() | (e.created_at < END_D)) & (e.src != e.dst)]
    firsts = e.groupby(["src", "dst"]).created_at.agg(lambda s: pd.NaT if s.isna().any() else s.min())
    pairs = set(firsts.index)
    growth_start = pd.Timestamp(MIDNIGHT_D - dt.timedelta(days=growth_days - 1))
    new = {p for p, first in firsts.items() if not pd.isna(first) and first >= growth_start}
    g = nx.Graph(list(pairs))
    tri, clu = nx.triangles(g), nx.clustering(g)

    lab = pd.DataFrame(labels, columns=["account_id", "label", "source", "labeled_at"])
    # training's ranks: investigator and appeal share the top one (a won appeal overturns a verdict)
    precedence = {"investigator": 0, "appeal": 0, "user_report": 1, "propagated": 2}
    lab = lab[(lab.labeled_at < MIDNIGHT_D) & lab.source.isin(list(precedence))].assign(
        rank=lambda d: d.source.map(precedence))
    lab = lab.sort_values(["rank", "labeled_at", "label"], ascending=[True, False, True])
    latest = lab.groupby("account_id").label.first().to_dict()
    act = pd.DataFrame(activity, columns=["account_id", *ACTIVITY_COLS]).set_index("account_id")

    def mean_of(ids, col):
        vals = [float(act.at[i, col]) for i in ids if i in act.index and not pd.isna(act.at[i, col])]
        return sum(vals) / len(vals) if vals else None

    out = []
    for a in accounts:
        followees = [d for s, d in pairs if s == a]
        followers = [s for s, d in pairs if d == a]
        has = a in g and g.degree(a) > 0
        row = {
            "account_id": a,
            "in_degree": len(followers),
            "out_degree": len(followees),
            "reciprocity": sum((d, a) in pairs for d in followees) / len(followees) if followees else None,
            "follow_growth_7d": sum((a, d) in new for d in followees),
            "undirected_degree": g.degree(a) if has else 0,
            "triangles": float(tri.get(a, 0)),
            "clustering_coef": float(clu[a]) if has else None,
            "triangles_estimated": False,
            "has_graph": has,
        }
        for c in ACTIVITY_COLS:
            row[f"followee_mean_{c}"] = mean_of(followees, c)
            row[f"follower_mean_{c}"] = mean_of(followers, c)
        nbrs = list(g.neighbors(a)) if has else []
        row["bot_neighbor_share"] = sum(latest.get(n) == 1 for n in nbrs) / len(nbrs) if nbrs else None
        out.append(row)
    return out


@pytest.fixture(scope="module", params=["own graph", "shared graph from scratch files"])
def scenario_result(spark, request, tmp_path_factory):
    accounts, edges, labels, activity = _scenario()
    accounts_df = spark.createDataFrame([(a, "US") for a in accounts], "account_id long, country string")
    edges_df = spark.createDataFrame(edges, "src long, dst long, created_at timestamp")
    labels_df = spark.createDataFrame(labels, "account_id long, label int, source string, labeled_at timestamp")
    activity_df = spark.createDataFrame(activity, "account_id long, n_events_7d long, hour_entropy_7d double")
    # A small cap so hubs exist and the salted joins and the every-pair hub path run; with
    # C(d,2) <= hub_sample_pairs for every hub here, all counts stay exact.
    knobs = {"activity": activity_df, "labels": labels_df, "hub_degree_cap": 4, "salt_buckets": 3}
    if request.param == "own graph":
        got = graph_features(edges_df, accounts_df, D, **knobs).cache()
    else:
        # The features step's way: the graph as of D built once, written to scratch files and read back.
        with scratch_frames(spark, str(tmp_path_factory.mktemp("wh")), "test-graph") as materialize:
            context = graph_context(edges_df, D, 4, materialize=materialize)
            shared = graph_features(None, accounts_df, D, context=context, **knobs)
            got = spark.createDataFrame(shared.collect(), shared.schema).cache()
    return got, _reference(accounts, edges, labels, activity)


def test_graph_features_match_pandas_and_networkx(spark, scenario_result):
    got, want = scenario_result
    assert got.where("undirected_degree > 4").count() > 5  # hubs present
    assert set(got.columns) == set(want[0]), "the reference computes other columns than the code returns"
    expected = spark.createDataFrame([tuple(row[c] for c in got.columns) for row in want], got.schema)
    assert_approx_df_equality(got, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_edges_after_run_date_are_ignored(scenario_result):
    got, _ = scenario_result
    rows = {r["account_id"]: r for r in got.where("account_id in (103, 104, 105)").collect()}
    assert rows[103]["in_degree"] == 0 and rows[103]["out_degree"] == 0 and not rows[103]["has_graph"]
    # The last second of D counts: 104 -> 105 is each one's only edge.
    assert (rows[104]["out_degree"], rows[104]["in_degree"], rows[105]["in_degree"]) == (1, 0, 1)
    assert rows[104]["has_graph"] and rows[105]["has_graph"]


def test_later_label_never_reaches_bot_neighbor_share(scenario_result):
    got, _ = scenario_result
    share = {r["account_id"]: r["bot_neighbor_share"] for r in got.where("account_id in (200, 202)").collect()}
    assert share[200] == 0.0  # 201 was human before D; its bot labels came at and after D
    assert share[202] == 1.0  # 203 labeled bot one second before D


def test_accounts_without_edges_get_nulls_not_zeros(scenario_result):
    got, _ = scenario_result
    rows = got.where("account_id in (100, 101, 102, 103)").collect()
    assert len(rows) == 4
    for r in rows:
        assert r["has_graph"] is False
        assert (r["in_degree"], r["out_degree"], r["undirected_degree"]) == (0, 0, 0)
        for c in ("reciprocity", "clustering_coef", "bot_neighbor_share", "followee_mean_n_events_7d"):
            assert r[c] is None, c


def test_one_row_per_account(scenario_result):
    got, want = scenario_result
    assert got.count() == len(want) == got.select("account_id").distinct().count()


def test_bad_inputs_say_what_to_do(spark):
    edges = spark.createDataFrame([(1, 2)], "src long, dst long")
    accounts = spark.createDataFrame([(1,)], "account_id long")
    with pytest.raises(SchemaMismatchError, match="created_at"):
        graph_features(edges, accounts, D)
    edges = spark.createDataFrame([(1, 2, None)], "src long, dst long, created_at timestamp")
    activity = spark.createDataFrame([(1, "x")], "account_id long, country string")
    with pytest.raises(SchemaMismatchError, match="not numeric"):
        graph_features(edges, accounts, D, activity=activity, activity_columns=["country"])
    with pytest.raises(ValueError, match="features.graph"):
        triangle_counts(edges, hub_degree_cap=0)


def test_a_shared_graph_must_match_the_run_and_its_scratch_files_go_when_the_step_ends(spark, warehouse):
    edges = spark.createDataFrame([(1, 2, None), (2, 3, None)], "src long, dst long, created_at timestamp")
    accounts = spark.createDataFrame([(1,), (2,), (3,)], "account_id long")
    root = spark.conf.get("spark.checkpoint.dir")
    # What a killed driver leaves: swept by the next run once a day old, not before. Another run's folder in
    # use, whose own time says 1970 (S3A gives folders the time 0) but whose files are new, stays.
    stale, recent, busy = (os.path.join(root, f"features-2024-05-{d}-{'ab' * 16}") for d in ("08", "09", "07"))
    for folder in (stale, recent, busy):
        os.makedirs(os.path.join(folder, "pairs"))
    two_days_ago = time.time() - 48 * 3600
    old_file = os.path.join(stale, "pairs", "part-0.parquet")
    open(old_file, "wb").close()
    os.utime(old_file, (two_days_ago, two_days_ago))
    os.utime(stale, (two_days_ago, two_days_ago))
    open(os.path.join(busy, "pairs", "part-0.parquet"), "wb").close()
    os.utime(busy, (0, 0))
    with pytest.raises(RuntimeError, match="boom"):
        with scratch_frames(spark, warehouse, "test-scratch") as materialize:
            context = graph_context(edges, D, 10, materialize=materialize)
            folders = [p for p in os.listdir(root) if p.startswith("test-scratch-")]
            assert len(folders) == 1 and sorted(os.listdir(os.path.join(root, folders[0]))) == [
                "degrees", "directed", "pairs"]
            assert context.degrees.count() == 3
            with pytest.raises(ValueError, match="run date 2024-05-10 and hub_degree_cap 10, not 2024-05-11 and 10"):
                graph_features(None, accounts, D + dt.timedelta(days=1), hub_degree_cap=10, context=context)
            with pytest.raises(ValueError, match="hub_degree_cap 10, not 2024-05-10 and 1000"):
                graph_features(None, accounts, D, context=context)
            raise RuntimeError("boom")  # a failed step still deletes its scratch files
    assert not [p for p in os.listdir(root) if p.startswith("test-scratch-")]
    assert not os.path.exists(stale) and os.path.isdir(recent) and os.path.isdir(busy)
    shutil.rmtree(recent)
    shutil.rmtree(busy)
    with pytest.raises(ValueError, match="pass the edges or a GraphContext"):
        graph_features(None, accounts, D)


def test_without_activity_or_labels(spark):
    edges = spark.createDataFrame([(1, 2, None), (2, 1, None)], "src long, dst long, created_at timestamp")
    accounts = spark.createDataFrame([(1,), (2,), (3,)], "account_id long")
    got = graph_features(edges, accounts, D)
    assert not [c for c in got.columns if c.startswith(("followee_mean_", "follower_mean_"))]
    # An activity table without a numeric column gives no means either (not Spark's "exprs should not be empty").
    text_only = spark.createDataFrame([(1, "US")], "account_id long, country string")
    assert graph_features(edges, accounts, D, activity=text_only).columns == got.columns
    rows = {r["account_id"]: r for r in got.collect()}
    assert rows[1]["reciprocity"] == 1.0 and rows[1]["clustering_coef"] == 0.0 and rows[1]["has_graph"]
    assert rows[1]["bot_neighbor_share"] is None  # no labels given: unknown, not 0
    assert rows[3]["has_graph"] is False and rows[3]["in_degree"] == 0


def test_metadata_and_neighbour_activity_inputs_are_checked(spark, caplog):
    from botwatch.features.build import metadata_features, neighbour_activity

    accounts = spark.createDataFrame(
        [(1, "US", dt.datetime(2024, 1, 1), True, float("nan")), (2, "US", dt.datetime(2024, 1, 1), False, 0.5),
         (3, "US", dt.datetime(2024, 1, 1), False, None)],
        "account_id long, country string, created_at timestamp, verified boolean, profile_completeness double",
    )
    got = {r["account_id"]: r["profile_completeness"] for r in metadata_features(accounts, D, 30).collect()}
    assert got == {1: None, 2: 0.5, 3: None}  # NaN is missing, like a null: never a number
    activity = spark.createDataFrame([(1, 3.0)], "account_id long, n_events_7d double")
    with caplog.at_level("WARNING", logger="botwatch.features.build"):
        kept = neighbour_activity(activity, {"neighbor_activity_columns": ["n_events_7d", "n_events_9d"]})
    assert kept is not None and kept.columns == ["account_id", "n_events_7d"]
    assert "'n_events_9d' is not an activity feature" in caplog.text
    # A flag is averaged as 0/1, not dropped as non-numeric: the share of ALL neighbours that have
    # it (4 has no activity row: no activity in any window). A number averages over those with one.
    flags = spark.createDataFrame([(1, True, 2.0), (2, False, 4.0)],
                                  "account_id long, has_activity_7d boolean, n double")
    shares = neighbour_activity(flags, {"neighbor_activity_columns": ["has_activity_7d", "n"]})
    assert shares is not None
    edges = spark.createDataFrame([(3, 1, None), (3, 2, None), (3, 4, None), (4, 1, None)],
                                  "src long, dst long, created_at timestamp")
    four = spark.createDataFrame([(1,), (2,), (3,), (4,)], "account_id long")
    got = {r["account_id"]: r for r in graph_features(edges, four, D, activity=shares,
                                                      activity_columns=["has_activity_7d", "n"]).collect()}
    assert got[3]["followee_mean_has_activity_7d"] == pytest.approx(1 / 3) and got[3]["followee_mean_n"] == 3.0
    assert got[1]["follower_mean_has_activity_7d"] == 0.0 and got[1]["follower_mean_n"] is None
    assert got[4]["follower_mean_has_activity_7d"] == 0.0
