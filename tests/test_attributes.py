"""Bring-your-own account attributes (botwatch.features.attributes): selection and validation of
extra accounts columns, neighbour distributions checked against pandas/numpy on a hand-built graph,
neighbourhood overlap against networkx, and, on the shared simulated platform (whose accounts carry
an attribute that differs only among bots' neighbours), a model with the neighbour aggregates beats
the same model without them."""
from __future__ import annotations

import datetime as dt
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.delta_io import scratch_frames
from botwatch.features import attributes as A
from botwatch.features.build import METADATA_COLUMNS
from botwatch.features.graph import graph_context
from botwatch.models.sequences import neighbor_col
from botwatch.models.stage1 import booster_bytes, top_contributions
from botwatch.schemas import ACCOUNTS_SCHEMA

D = dt.date(2026, 2, 1)
BEFORE = dt.datetime(2026, 1, 20)
AFTER = dt.datetime(2026, 2, 3)  # created after D: not an edge yet

# A small directed graph: reciprocal pairs, a duplicate, a self-loop, a null end, an edge from the
# future, and account 1 with 12 neighbours (a "hub" for hub_degree_cap=3, so its rows are salted).
EDGES = (
    [(1, k, BEFORE) for k in range(2, 9)]  # 1 follows 2..8
    + [(k, 1, None) for k in (2, 3, 9, 10, 11, 12, 13)]  # followed by 2, 3 (reciprocal) and 9..13
    + [(2, 3, BEFORE), (3, 2, BEFORE), (2, 4, BEFORE), (4, 5, BEFORE), (5, 4, BEFORE), (9, 10, BEFORE),
       (10, 9, BEFORE), (6, 7, BEFORE), (7, 8, BEFORE), (8, 6, BEFORE), (12, 13, BEFORE)]
    + [(2, 3, BEFORE), (5, 5, BEFORE), (4, None, BEFORE), (14, 15, AFTER), (15, 1, AFTER)]
)
ACCOUNTS = list(range(1, 17))  # 16 has no edge at all; 14 and 15 only future ones
# x: zeros, nulls, a NaN (missing), negatives; account 13 has no values row at all.
X = {1: 3.0, 2: 0.0, 3: None, 4: 5.0, 5: float("nan"), 6: -2.0, 7: 1.5, 8: 0.0, 9: 4.0, 10: 2.0, 11: 7.0,
     12: 1.0, 14: 9.0, 15: 3.0, 16: 8.0}
Y = {a: float(a % 3) for a in ACCOUNTS if a != 13}  # many exact zeros


@pytest.fixture(scope="module")
def graph_frames(spark):
    edges = spark.createDataFrame(EDGES, "src long, dst long, created_at timestamp")
    accounts = spark.createDataFrame([(a,) for a in ACCOUNTS], "account_id long")
    values = spark.createDataFrame([(a, X.get(a), Y[a]) for a in Y], "account_id long, x double, y double")
    return edges, accounts, values


@pytest.fixture(params=["own graph", "shared graph from scratch files"])
def context_of(request, spark, warehouse):
    """``context_of(edges, cap)``: None (each function builds its own graph), or the graph built as the
    features step builds it: once, written to scratch files that stay until the test ends."""
    if request.param == "own graph":
        yield lambda edges, cap: None
        return
    with scratch_frames(spark, warehouse, "test-neighbours") as materialize:
        yield lambda edges, cap: graph_context(edges, D, cap, materialize=materialize)


def _reference_neighbours() -> dict[str, dict[int, set[int]]]:
    """Neighbour sets per direction from plain Python (the same as-of and cleaning rules)."""
    current = {(s, d) for s, d, c in EDGES if s is not None and d is not None and s != d
               and (c is None or c < dt.datetime(2026, 2, 2))}
    nbrs: dict[str, dict[int, set[int]]] = {d: {a: set() for a in ACCOUNTS} for d in A.DIRECTIONS}
    for s, d in current:
        nbrs["out"][s].add(d)
        nbrs["in"][d].add(s)
        nbrs["all"][s].add(d)
        nbrs["all"][d].add(s)
    return nbrs


def _value(values: dict, b: int) -> float:
    v = values.get(b)
    return np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else v


def test_neighbor_distributions_equal_pandas(graph_frames, context_of):
    edges, accounts, values = graph_frames
    got = A.neighbor_distributions(edges, accounts, D, values, ["x", "y"], hub_degree_cap=3, salt_buckets=4,
                                   context=context_of(edges, 3))
    got = got.toPandas().set_index(t.ACCOUNT_ID).sort_index()
    assert list(got.columns) == A.nbr_columns(["x", "y"])
    nbrs = _reference_neighbours()
    checked = 0
    for name, vals in (("x", X), ("y", Y)):
        for d in A.DIRECTIONS:
            for a in ACCOUNTS:
                s = pd.Series([_value(vals, b) for b in sorted(nbrs[d][a])], dtype="float64")
                present = s.dropna().to_numpy()
                row = got.loc[a]
                col = {agg: row[A.nbr_col(d, agg, name)] for agg in A.AGGREGATES}.__getitem__
                assert col("count") == len(present), (name, d, a)
                if len(s) == 0:
                    assert all(pd.isna(col(agg)) for agg in ("mean", "std", "median", "p10", "p90", "share_zero"))
                    continue
                assert col("share_zero") == pytest.approx(((s == 0) | s.isna()).mean(), abs=1e-12)
                if len(present) == 0:
                    assert pd.isna(col("mean")) and pd.isna(col("median"))
                    continue
                assert col("mean") == pytest.approx(s.mean(), abs=1e-12)
                if len(present) >= 2:
                    assert col("std") == pytest.approx(s.std(ddof=1), abs=1e-12)
                else:
                    assert pd.isna(col("std"))
                # At most percentile_sample neighbours: exact (numpy's inverted CDF).
                for agg, pc in A.PERCENTILES:
                    assert col(agg) == np.percentile(present, pc, method="inverted_cdf"), (name, d, a, agg)
                checked += 1
    assert checked > 40
    # The hub's own neighbourhood was aggregated (salted rows), and a future edge does not count.
    assert got.loc[1, A.nbr_col("all", "count", "x")] == 9  # 2..12 minus 3 (null) and 5 (NaN)
    assert got.loc[14, A.nbr_col("all", "count", "x")] == 0
    assert pd.isna(got.loc[16, A.nbr_col("all", "mean", "x")])


def test_percentiles_of_a_large_neighbourhood_are_within_the_documented_rank_error(spark):
    """A hub with 3,001 followers: with percentile_sample 300 each percentile's rank share is within
    four of the documented standard deviations sqrt(p(1-p)/k) of p; with the sample above the
    degree, every percentile is exact. Mean and std always use every neighbour."""
    n, k = 3001, 300
    rng = np.random.default_rng(5)
    vals = rng.lognormal(0.0, 1.0, n)
    edges = spark.createDataFrame([(i + 1, 0, None) for i in range(n)], "src long, dst long, created_at timestamp")
    values = spark.createDataFrame([(i + 1, float(v)) for i, v in enumerate(vals)], "account_id long, z double")
    accounts = spark.createDataFrame([(0,)], "account_id long")

    def hub_row(sample: int):
        return A.neighbor_distributions(
            edges, accounts, D, values, ["z"], hub_degree_cap=100, salt_buckets=8, percentile_sample=sample
        ).first()

    sampled, exact = hub_row(k), hub_row(n)
    ordered = np.sort(vals)
    for agg, pc in A.PERCENTILES:
        p = pc / 100
        got = sampled[A.nbr_col("in", agg, "z")]
        share = np.searchsorted(ordered, got, side="right") / n  # share of values <= got
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / k), (agg, share)
        assert exact[A.nbr_col("in", agg, "z")] == np.percentile(vals, pc, method="inverted_cdf"), agg
    for row in (sampled, exact):
        assert row[A.nbr_col("in", "mean", "z")] == pytest.approx(vals.mean(), rel=1e-12)
        assert row[A.nbr_col("in", "std", "z")] == pytest.approx(vals.std(ddof=1), rel=1e-9)
        assert row[A.nbr_col("in", "count", "z")] == n and row[A.nbr_col("out", "count", "z")] == 0


def test_each_direction_samples_its_own_neighbours_for_percentiles(spark):
    """A hub with 3,001 followers and 40 followees, percentile_sample 300: the followees' percentiles are
    exact (all 40 kept), the followers' within the documented rank error, and the undirected ones too."""
    n_in, n_out, k = 3001, 40, 300
    rng = np.random.default_rng(7)
    vals = rng.lognormal(0.0, 1.0, n_in + n_out)
    followers = [(i + 1, 0, None) for i in range(n_in)]
    followees = [(0, n_in + 1 + j, None) for j in range(n_out)]
    edges = spark.createDataFrame(followers + followees, "src long, dst long, created_at timestamp")
    values = spark.createDataFrame([(i + 1, float(v)) for i, v in enumerate(vals)], "account_id long, z double")
    accounts = spark.createDataFrame([(0,)], "account_id long")
    row = A.neighbor_distributions(edges, accounts, D, values, ["z"], hub_degree_cap=100, salt_buckets=8,
                                   percentile_sample=k).first()
    for direction, ref in (("out", vals[n_in:]), ("in", vals[:n_in]), ("all", vals)):
        assert row[A.nbr_col(direction, "count", "z")] == len(ref)
        ordered = np.sort(ref)
        for agg, pc in A.PERCENTILES:
            got = row[A.nbr_col(direction, agg, "z")]
            if direction == "out":
                assert got == np.percentile(ref, pc, method="inverted_cdf"), (direction, agg)
            else:
                p = pc / 100
                share = np.searchsorted(ordered, got, side="right") / len(ref)
                assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / k), (direction, agg, share)


def test_overlap_equals_networkx(graph_frames, context_of):
    edges, accounts, _ = graph_frames
    cap = 4
    got = A.neighbor_overlap(edges, accounts, D, overlap_degree_cap=cap, hub_degree_cap=3, salt_buckets=4,
                             context=context_of(edges, 3))
    got = got.toPandas().set_index(t.ACCOUNT_ID)
    g = nx.Graph()
    g.add_nodes_from(ACCOUNTS)
    g.add_edges_from((a, b) for a, bs in _reference_neighbours()["all"].items() for b in bs)
    for a in ACCOUNTS:
        shared = sum(1 for b in g[a] if g.degree(b) >= 2)
        best = max((len({b for b in nx.common_neighbors(g, a, c) if g.degree(b) <= cap})
                    for c in g.nodes if c != a), default=0)
        assert got.loc[a, A.OVERLAP_SHARED] == shared, a
        assert got.loc[a, A.OVERLAP_MAX] == best, a
        if g.degree(a):
            assert got.loc[a, A.OVERLAP_MAX_SHARE] == pytest.approx(best / g.degree(a))
        else:
            assert pd.isna(got.loc[a, A.OVERLAP_MAX_SHARE])
    assert got[A.OVERLAP_MAX].max() >= 2  # the graph has real overlaps, so the check means something


# ---------------------------------------------------------------- selection and validation


def _accounts_with_extras(spark):
    schema = T.StructType([
        T.StructField(t.ACCOUNT_ID, T.LongType()), T.StructField(t.CREATED_AT, T.TimestampType()),
        T.StructField(t.COUNTRY, T.StringType()), T.StructField(t.VERIFIED, T.BooleanType()),
        T.StructField(t.PROFILE_COMPLETENESS, T.DoubleType()),
        T.StructField("posts", T.LongType()), T.StructField("phone", T.BooleanType()),
        T.StructField("nickname", T.StringType()), T.StructField("empty", T.DoubleType()),
        T.StructField("void", T.NullType()), T.StructField("n posts", T.DoubleType()),
        T.StructField("n_posts", T.DoubleType()), T.StructField("n_events_7d", T.IntegerType()),
        T.StructField("score", T.DoubleType()),
    ])
    rows = [
        (1, None, "US", False, 0.5, 10, True, "a", None, None, 1.0, 2.0, 3, float("nan")),
        (2, None, "GB", True, 0.1, None, False, "b", None, None, None, 0.0, None, 0.25),
    ]
    return spark.createDataFrame(rows, schema)


def test_selection_skips_strings_contract_names_and_clashes_with_messages(spark):
    df = _accounts_with_extras(spark)
    sel = A.select_attributes(df.schema, "auto", reserved=["n_events_7d", "in_degree"])
    assert sel.columns == {"posts": "attr_posts", "phone": "attr_phone", "empty": "attr_empty", "void": "attr_void",
                           "n posts": "attr_n_posts", "n_events_7d": "attr_n_events_7d", "score": "attr_score"}
    assert "string, not numeric or boolean" in sel.skipped["nickname"]
    assert "would be named attr_n_posts" in sel.skipped["n_posts"]
    assert any("'n_events_7d' has the name of a botwatch feature" in n for n in sel.notes)
    assert any("'n posts' is carried as attr_n_posts" in n for n in sel.notes)

    listed = A.select_attributes(df.schema, ["Country", "verified", "missing_col", "posts"])
    assert listed.columns == {"posts": "attr_posts"}
    assert "contract column" in listed.skipped["Country"] and "contract column" in listed.skipped["verified"]
    assert "no column 'missing_col' in accounts" in listed.skipped["missing_col"]
    with pytest.raises(A.AttributeConfigError, match="account_attributes"):
        A.select_attributes(df.schema, "everything")


def test_auto_leaves_out_columns_named_like_a_label_and_a_list_takes_them():
    schema = T.StructType([*ACCOUNTS_SCHEMA.fields, *[T.StructField(n, typ) for n, typ in [
        ("is_bot", T.IntegerType()), ("isBot", T.BooleanType()), ("label_score", T.DoubleType()),
        ("banned", T.BooleanType()), ("suspension_count", T.LongType()), ("bot_probability", T.DoubleType()),
        ("user_reports", T.LongType()), ("appealsWon", T.LongType()), ("investigator_verdict", T.StringType()),
        ("is_spam", T.BooleanType()), ("suspensions", T.LongType()), ("BOTScore", T.DoubleType()),
        ("robot_clicks", T.DoubleType()), ("botany_posts", T.LongType()), ("about", T.DoubleType()),
        ("status_updates", T.LongType()),
        # moderation outcomes (botwatch's own `actioned` among them), joined and digit-suffixed names
        ("is_restricted", T.BooleanType()), ("was_actioned", T.BooleanType()), ("strikes", T.LongType()),
        ("enforcement_actions", T.LongType()), ("isspam", T.BooleanType()), ("shadowbanned", T.BooleanType()),
        ("unbanned", T.BooleanType()), ("botscore", T.DoubleType()), ("BOTscore", T.DoubleType()),
        ("bot7d", T.DoubleType()), ("reports7d", T.LongType()),
        # joined and plural
        ("botscores", T.DoubleType()), ("spamscores", T.DoubleType()), ("fraudflags", T.LongType()),
        ("reportcounts", T.LongType()), ("botness", T.DoubleType()), ("fraudrisk", T.DoubleType()),
        ("BotLikelihood", T.DoubleType()), ("spamprobability", T.DoubleType()),
        # kinds of bot: a taken-down botnet's members, joined spam and bot
        ("is_botnet", T.BooleanType()), ("botnet_id", T.LongType()), ("isBotnet", T.BooleanType()),
        ("is_spambot", T.BooleanType()), ("spambot_score", T.DoubleType()), ("is_sybil", T.BooleanType()),
        ("cyborg_flag", T.BooleanType()), ("sockpuppets", T.LongType()),
        # ... and names that only contain such letters
        ("island_count", T.LongType()), ("unlocked_achievements", T.LongType()), ("posts30d", T.LongType()),
        ("account_status", T.LongType()), ("business_hours", T.DoubleType()), ("happiness", T.DoubleType()),
    ]]])
    sel = A.select_attributes(schema, "auto")
    leaky = ["is_bot", "isBot", "label_score", "banned", "suspension_count", "bot_probability",
             "user_reports", "appealsWon", "investigator_verdict", "is_spam", "suspensions", "BOTScore",
             "is_restricted", "was_actioned", "strikes", "enforcement_actions", "isspam", "shadowbanned",
             "unbanned", "botscore", "BOTscore", "bot7d", "reports7d", "botscores", "spamscores", "fraudflags",
             "reportcounts", "botness", "fraudrisk", "BotLikelihood", "spamprobability", "is_botnet", "botnet_id",
             "isBotnet", "is_spambot", "spambot_score", "is_sybil", "cyborg_flag", "sockpuppets"]
    # "bot" only as a whole word
    assert sorted(sel.columns) == ["about", "account_status", "botany_posts", "business_hours", "happiness",
                                   "island_count", "posts30d", "robot_clicks", "status_updates",
                                   "unlocked_achievements"]
    assert sorted(sel.skipped) == sorted(leaky)
    assert all("looks like a label" in sel.skipped[n] and "features.account_attributes" in sel.skipped[n]
               for n in leaky)
    listed = A.select_attributes(schema, ["is_bot", "banned"])  # the user says they are known before D
    assert listed.columns == {"is_bot": "attr_is_bot", "banned": "attr_banned"} and not listed.skipped


def test_attribute_values_keep_nulls_and_the_run_reports_every_problem(spark):
    df = _accounts_with_extras(spark)
    edges = spark.createDataFrame([(1, 2, None), (2, 1, None)], "src long, dst long, created_at timestamp")
    params = {"account_attributes": None, "neighbor_aggregates": True,
              "neighbors": {"activity_columns": ["n_events_7d", "no_such_feature"], "overlap": True,
                            "overlap_degree_cap": 10}}
    activity = spark.createDataFrame([(1, 4.0)], "account_id long, n_events_7d double")
    out, summary = A.run_attribute_features(edges, df, activity, D, params, reserved=["n_events_7d"])
    pdf = out.toPandas().set_index(t.ACCOUNT_ID).sort_index()
    assert pdf["attr_posts"].iloc[0] == 10 and pd.isna(pdf["attr_posts"].iloc[1])  # null stays null
    assert list(pdf["attr_phone"]) == [1.0, 0.0]
    assert pd.isna(pdf["attr_score"].iloc[0]) and pdf["attr_score"].iloc[1] == 0.25  # NaN is missing
    assert pdf["attr_empty"].isna().all() and pdf["attr_void"].isna().all()
    assert pdf.loc[1, A.nbr_col("out", "mean", "attr_score")] == 0.25
    assert pdf.loc[1, A.nbr_col("out", "count", "attr_posts")] == 0  # its one neighbour has no posts value
    assert pdf.loc[2, A.nbr_col("in", "mean", "n_events_7d")] == 4.0
    assert pdf.loc[1, A.nbr_col("all", "share_zero", "attr_empty")] == 1.0
    assert "nickname" in summary["attributes_skipped"] and "n_posts" in summary["attributes_skipped"]
    notes = " ".join(summary["attributes_notes"])
    assert "'empty' is null for every account" in notes and "'void' is null for every account" in notes
    assert "['no_such_feature'] are not activity features" in notes
    assert set(summary["attributes"]) == {c for c in pdf.columns if c.startswith(A.ATTR_PREFIX)}

    off, _ = A.run_attribute_features(edges, df, activity, D, {**params, "neighbor_aggregates": False})
    assert not [c for c in off.columns if c.startswith(t.NBR_PREFIX)]
    none, summary = A.run_attribute_features(edges, df.select(t.ACCOUNT_ID, t.CREATED_AT), None, D,
                                             {"neighbor_aggregates": False})
    assert none is None and summary["attributes"] == []


def test_a_neighbour_without_activity_lacks_an_activity_flag_rather_than_missing_it(spark):
    """3 follows 1 (active), 2 (not) and 4 (no activity row at all): its neighbours' share with the flag is 1/3
    of 3, as the graph features' followee mean has it, not 1/2 of the 2 with a row."""
    accounts = spark.createDataFrame([(i, None) for i in (1, 2, 3, 4)], "account_id long, created_at timestamp")
    edges = spark.createDataFrame([(3, 1, None), (3, 2, None), (3, 4, None)],
                                  "src long, dst long, created_at timestamp")
    activity = spark.createDataFrame([(1, True), (2, False)], "account_id long, has_activity_7d boolean")
    params = {"account_attributes": None, "neighbor_aggregates": True,
              "neighbors": {"activity_columns": ["has_activity_7d"], "overlap": False}}
    out, _ = A.run_attribute_features(edges, accounts, activity, D, params)
    row = out.where(F.col(t.ACCOUNT_ID) == 3).first()
    assert row[A.nbr_col("out", "count", "has_activity_7d")] == 3
    assert row[A.nbr_col("out", "mean", "has_activity_7d")] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- on the simulated platform


@pytest.fixture(scope="module")
def platform_frames(platform):
    pconf, dates = platform
    w = pconf["warehouse"]
    feats = DeltaTable(f"{w}/{t.FEATURES}").to_pandas()
    truth = DeltaTable(f"{w}/{t.TRUTH}").to_pandas().set_index(t.ACCOUNT_ID)[t.FAMILY]
    accounts = DeltaTable(f"{w}/{t.ACCOUNTS}").to_pandas().set_index(t.ACCOUNT_ID)
    feats["is_bot"] = (feats[t.ACCOUNT_ID].map(truth) != "human").astype(int)
    return pconf, dates, feats, accounts


def test_platform_features_carry_attributes_and_their_neighbour_distributions(platform_frames):
    pconf, dates, feats, accounts = platform_frames
    last = feats[feats[t.RUN_DATE] == pd.Timestamp(dates[-1]).date()].set_index(t.ACCOUNT_ID)
    for name in ("photos", "has_phone", "linked_apps_score"):
        assert f"attr_{name}" in last.columns
        assert A.nbr_col("in", "mean", f"attr_{name}") in last.columns
    joined = last[["attr_photos"]].join(accounts["photos"])
    assert joined["photos"].isna().sum() > 0  # the simulator leaves some unknown ...
    pd.testing.assert_series_equal(joined["attr_photos"], joined["photos"].astype(float), check_names=False)
    assert A.nbr_col("all", "p90", "n_events_7d") in last.columns and A.OVERLAP_MAX in last.columns
    # The heavy model's nbr_<feature> columns can never take one of these names.
    ours = set(A.nbr_columns([c for c in last.columns])) | set(A.OVERLAP_COLUMNS)
    assert not ours & {neighbor_col(c) for c in last.columns}
    assert t.NBR_COUNT not in last.columns


def _fit(train: pd.DataFrame, cols: list[str]):
    import xgboost as xgb

    model = xgb.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, tree_method="hist", n_jobs=1,
                              random_state=0)
    return model.fit(train[cols].astype("float64"), train["is_bot"])


def _pr_auc_by_fold(feats: pd.DataFrame, cols: list[str], folds: int = 5) -> float:
    from sklearn.metrics import average_precision_score

    fold = feats[t.ACCOUNT_ID] % folds
    last = feats[t.RUN_DATE] == feats[t.RUN_DATE].max()
    scores = []
    for k in range(folds):
        test = feats[(fold == k) & last]
        model = _fit(feats[fold != k], cols)
        scores.append(average_precision_score(test["is_bot"], model.predict_proba(test[cols].astype("float64"))[:, 1]))
    return float(np.mean(scores))


def test_neighbour_aggregates_raise_pr_auc_and_show_up_in_reason_codes(platform_frames):
    """Accounts split into 5 folds by id; each fold's accounts on the last date are scored by a
    model trained on the other folds' rows (all dates). The injected attribute differs only among
    bots' followers, so the aggregates must help."""
    _, _, feats, _ = platform_frames
    numeric = [c for c in feats.columns if c not in (t.ACCOUNT_ID, t.RUN_DATE, "is_bot")
               and (pd.api.types.is_numeric_dtype(feats[c]) or pd.api.types.is_bool_dtype(feats[c]))]
    aggregates = [c for c in numeric if c.startswith(tuple(f"{t.NBR_PREFIX}{d}_" for d in A.DIRECTIONS))]
    base = [c for c in numeric if c not in aggregates]
    assert len(aggregates) >= 5 * 21 and "attr_linked_apps_score" in base
    # The platform's activity and graph features already separate its bots almost perfectly
    # (PR-AUC ~0.998), so the attribute channel is measured on its own: the accounts' own
    # attributes and metadata, then the same plus the attributes' neighbour distributions.
    own = [c for c in base if c.startswith("attr_")] + [c for c in METADATA_COLUMNS if c in base]
    attribute_aggregates = [c for c in aggregates if "_attr_" in c]
    off = _pr_auc_by_fold(feats, own)
    on = _pr_auc_by_fold(feats, own + attribute_aggregates)
    print(f"PR-AUC on own attributes {off:.3f}, with their neighbour distributions {on:.3f}")
    assert on > off + 0.2, (off, on)
    # With every feature the aggregates must not cost anything either.
    all_off, all_on = _pr_auc_by_fold(feats, base), _pr_auc_by_fold(feats, base + aggregates)
    assert all_on >= all_off - 0.01, (all_off, all_on)

    # Reason codes name them: stage 1's TreeSHAP top contributions for the bots.
    cols = base + aggregates
    raw = booster_bytes(_fit(feats, cols).get_booster())
    bots = feats[feats["is_bot"] == 1][cols].astype("float64")
    named = {c["feature"] for row in top_contributions(raw, bots, k=3) for c in row}
    assert named & set(aggregates), named
