"""Monitoring: drift (PSI, binned KS) against numpy/scipy, the drift alert read by the refresh
policy, the review queue's budget and probabilities, prevalence coverage, and the run report in
headless Chromium."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from botwatch.monitoring.drift import PSI_EPSILON, drift_statistics, reference_profile

N = 4000


def _frame(seed: int, shift: float = 0.0, scale: float = 1.0, null_share: float = 0.05) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    with_nulls = rng.normal(size=N)
    with_nulls[rng.random(N) < null_share] = np.nan
    return pd.DataFrame({
        "x_shift": rng.normal(size=N) + shift,
        "x_scale": rng.normal(size=N) * scale,
        "x_same": rng.lognormal(size=N),
        "x_count": rng.poisson(2.0, size=N).astype("int64"),  # heavy ties: merged edges
        "x_flag": rng.random(N) < 0.3,
        "x_nulls": with_nulls,
    })


def _psi_numpy(ref: np.ndarray, cur: np.ndarray, edges: list[float], coarse_of: list[int]) -> float:
    """PSI from numpy histograms over the profile's edges (left-closed), missing as its own bin."""
    def shares(x):
        miss = np.isnan(x)
        fine = np.searchsorted(edges, x[~miss], side="right")
        coarse = np.asarray(coarse_of)[fine]
        n = np.bincount(coarse, minlength=max(coarse_of) + 1).astype(float)
        n[max(coarse_of)] = miss.sum()
        return np.maximum(n / x.size, PSI_EPSILON)

    p, q = shares(cur), shares(ref)
    return float(np.sum((p - q) * np.log(p / q)))


@pytest.fixture(scope="module")
def drifted(spark):
    ref_pdf, cur_pdf = _frame(0), _frame(1, shift=1.0, scale=2.0)
    ref, cur = spark.createDataFrame(ref_pdf), spark.createDataFrame(cur_pdf)
    profile = reference_profile(ref, list(ref_pdf.columns))
    got = drift_statistics(cur, profile).toPandas().set_index("feature")
    return ref_pdf, cur_pdf, profile, got


def test_psi_flags_the_drifted_features_and_not_the_others(drifted):
    _, _, _, got = drifted
    assert set(got.index) == {"x_shift", "x_scale", "x_same", "x_count", "x_flag", "x_nulls"}
    assert got.loc["x_shift", "psi"] > 0.25 and got.loc["x_scale", "psi"] > 0.25
    for name in ("x_same", "x_count", "x_flag", "x_nulls"):
        assert got.loc[name, "psi"] < 0.05, name


def test_psi_matches_numpy_histograms(drifted):
    ref_pdf, cur_pdf, profile, got = drifted
    for name, spec in profile["features"].items():
        ref = ref_pdf[name].to_numpy(dtype=float)
        cur = cur_pdf[name].to_numpy(dtype=float)
        # reference counts are exact numpy histogram counts too
        fine = np.searchsorted(spec["edges"], ref[~np.isnan(ref)], side="right")
        counts = np.bincount(fine, minlength=len(spec["edges"]) + 1).tolist() + [int(np.isnan(ref).sum())]
        assert spec["counts"] == counts, name
        assert got.loc[name, "psi"] == pytest.approx(_psi_numpy(ref, cur, spec["edges"], spec["psi_bin"]), rel=1e-9)
    # The PSI bins of a continuous feature are the reference's deciles: each holds a tenth of it, and the PSI
    # is close to one over numpy's own deciles.
    for name in ("x_shift", "x_scale", "x_same"):
        spec, ref, cur = profile["features"][name], ref_pdf[name].to_numpy(), cur_pdf[name].to_numpy()
        coarse = np.asarray(spec["psi_bin"])[np.searchsorted(spec["edges"], ref, side="right")]
        np.testing.assert_allclose(np.bincount(coarse, minlength=10) / ref.size, 0.1, atol=0.01, err_msg=name)
        deciles = np.quantile(ref, np.arange(1, 10) / 10)
        p = np.bincount(np.searchsorted(deciles, cur, side="right"), minlength=10) / cur.size
        q = np.bincount(np.searchsorted(deciles, ref, side="right"), minlength=10) / ref.size
        p, q = np.maximum(p, PSI_EPSILON), np.maximum(q, PSI_EPSILON)
        assert got.loc[name, "psi"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=0.05, abs=0.005), name


def test_binned_ks_brackets_scipy(drifted):
    ref_pdf, cur_pdf, _, got = drifted
    for name in ref_pdf.columns:
        ref = ref_pdf[name].to_numpy(dtype=float)
        cur = cur_pdf[name].to_numpy(dtype=float)
        exact = stats.ks_2samp(cur[~np.isnan(cur)], ref[~np.isnan(ref)]).statistic
        assert got.loc[name, "ks"] - 1e-12 <= exact <= got.loc[name, "ks_upper"] + 1e-12, name
    # continuous features: 100 reference quantiles keep the bracket narrow
    for name in ("x_shift", "x_scale", "x_same"):
        assert got.loc[name, "ks_upper"] - got.loc[name, "ks"] < 0.03


def test_missing_shares(drifted):
    ref_pdf, cur_pdf, _, got = drifted
    assert got.loc["x_nulls", "missing_share"] == pytest.approx(cur_pdf["x_nulls"].isna().mean())
    assert got.loc["x_nulls", "reference_missing_share"] == pytest.approx(ref_pdf["x_nulls"].isna().mean())
    assert got.loc["x_shift", "missing_share"] == 0.0


def test_feature_gone_missing_gives_a_huge_psi(spark, drifted):
    ref_pdf, _, profile, _ = drifted
    broken = ref_pdf.assign(x_same=np.nan)
    got = drift_statistics(spark.createDataFrame(broken), profile).toPandas().set_index("feature")
    assert got.loc["x_same", "psi"] > 5.0
    assert np.isnan(got.loc["x_same", "ks"])  # no present values: KS undefined, not 0
    assert np.isnan(got.loc["x_same", "ks_upper"])  # and its bound too, not |0 - reference CDF| = 1
    assert got.loc["x_shift", "psi"] == pytest.approx(0.0, abs=1e-12)


def test_a_profiled_feature_gone_from_the_table_is_all_missing_not_skipped(spark, drifted):
    ref_pdf, _, profile, _ = drifted
    got = drift_statistics(spark.createDataFrame(ref_pdf.drop(columns=["x_same"])), profile).toPandas()
    got = got.set_index("feature")
    assert sorted(got.index) == sorted(profile["features"])
    assert got.loc["x_same", "psi"] > 5.0 and got.loc["x_same", "missing_share"] == 1.0
    assert got.loc["x_shift", "psi"] == pytest.approx(0.0, abs=1e-12)


def test_no_rows_today_gives_no_psi_rather_than_a_huge_one(spark, drifted):
    # Every share would sit at the epsilon floor: PSI ~7 per feature would read as drift of every feature.
    ref_pdf, _, profile, _ = drifted
    empty = spark.createDataFrame(ref_pdf).limit(0)
    got = drift_statistics(empty, profile).toPandas().set_index("feature")
    assert sorted(got.index) == sorted(profile["features"])
    assert got["psi"].isna().all() and got["missing_share"].isna().all()


# ---- review queue ----------------------------------------------------------------------------

EDGES = [0.0, 0.01, 0.05, 0.2, 0.5, 0.8]


def _population(seed: int, n: int, prevalence: float = 0.03):
    """Accounts with a truth flag and a score that separates bots from humans imperfectly."""
    rng = np.random.default_rng(seed)
    bot = rng.random(n) < prevalence
    score = np.where(bot, rng.beta(4, 2, n), rng.beta(0.6, 25, n))
    return bot.astype(int), score


@pytest.fixture(scope="module")
def queue(spark):
    import datetime as dt

    from botwatch.monitoring.review import review_queue

    bot, score = _population(3, 20_000)
    pdf = pd.DataFrame({
        "account_id": np.arange(20_000, dtype="int64"), "score": score, "model_version": "stage1_xgb:1",
        "holdout": (score >= 0.8) & (np.arange(20_000) % 10 == 0), "bot": bot,
    })
    scores = spark.createDataFrame(pdf)
    kwargs = dict(threshold=0.8, budget=200, shares={"uncertain": 0.3, "stratified": 0.5, "exploration": 0.2},
                  uncertain_band=0.05, strata_edges=EDGES, min_per_stratum=2, salt="t")
    day = dt.date(2026, 2, 1)
    got = review_queue(scores, day, **kwargs).toPandas()
    again = review_queue(scores, day, **kwargs).toPandas()
    return pdf, got, again, kwargs


def test_review_queue_respects_budget_and_reasons(queue):
    pdf, got, again, _ = queue
    assert len(got) == 200 and got["account_id"].is_unique
    counts = got["reason"].value_counts().to_dict()
    band = (pdf["score"] - 0.8).abs() <= 0.05
    # Sizes fixed by the pools' counts: exploration's 20 % share of the holdout, uncertain its 30 % of the
    # band outside the holdout plus what exploration could not draw, stratified the rest.
    assert counts["exploration"] == min(40, int(pdf["holdout"].sum()))
    assert counts["uncertain"] == min(60 + 40 - counts["exploration"], int((band & ~pdf["holdout"]).sum()))
    assert counts["stratified"] == 200 - counts["exploration"] - counts["uncertain"]
    # Disjoint pools: holdout, band outside it, the rest.
    merged = got.merge(pdf, on="account_id", suffixes=("", "_in"))
    merged["band"] = (merged["score"] - 0.8).abs() <= 0.05
    assert merged.loc[merged.reason == "exploration", "holdout"].all()
    unc = merged[merged.reason == "uncertain"]
    assert (unc["band"] & ~unc["holdout"]).all()
    strat = merged[merged.reason == "stratified"]
    assert not (strat["band"] | strat["holdout"]).any()
    # deterministic: a rerun of the date draws the same queue
    pd.testing.assert_frame_equal(got.sort_values("account_id").reset_index(drop=True),
                                  again.sort_values("account_id").reset_index(drop=True))


def test_review_queue_stays_within_a_budget_its_rounded_shares_overshoot(spark):
    import datetime as dt

    from botwatch.monitoring.review import review_queue

    scores = spark.createDataFrame([(i, 0.8 + (i % 5) / 100, "stage1_xgb:1", i % 2 == 0) for i in range(40)],
                                   "account_id long, score double, model_version string, holdout boolean")
    # Rounded alone, 3 x 0.5 gave 2 for both reasons: 4 rows asked of a budget of 3.
    got = review_queue(scores, dt.date(2026, 2, 1), threshold=0.8, budget=3,
                       shares={"uncertain": 0.5, "exploration": 0.5}, uncertain_band=0.05, strata_edges=EDGES,
                       min_per_stratum=2, salt="t").toPandas()
    assert len(got) == 3 and got["account_id"].is_unique
    # 5 x 0.5 rounded alone gave 2 + 2 and a stratified row that no share asked for.
    pools = spark.createDataFrame([(i, 0.8 if 10 <= i < 30 else 0.1, "stage1_xgb:1", i < 10) for i in range(60)],
                                  "account_id long, score double, model_version string, holdout boolean")
    for shares, want in (({"uncertain": 0.5, "exploration": 0.5}, {"uncertain": 3, "exploration": 2}),
                         ({"uncertain": 0.9, "exploration": 0.1}, {"uncertain": 5})):
        got = review_queue(pools, dt.date(2026, 2, 1), threshold=0.8, budget=5, shares=shares, uncertain_band=0.05,
                           strata_edges=EDGES, min_per_stratum=2, salt="t").toPandas()
        assert got["reason"].value_counts().to_dict() == want, shares


def test_review_queue_fills_its_budget_when_the_band_is_smaller_than_its_share(spark):
    """3 band accounts among 1,000 low scores: the uncertain part draws all 3 of its 10, the stratified part
    the other 17 from the accounts outside the band (a stratified sample of them): 20 rows."""
    import datetime as dt

    from botwatch.monitoring.review import review_queue

    rows = [(i, 0.001) for i in range(1000)] + [(1000, 0.80), (1001, 0.81), (1002, 0.82)]
    pdf = pd.DataFrame(rows, columns=["account_id", "score"]).assign(model_version="stage1_xgb:1", holdout=False)
    got = review_queue(spark.createDataFrame(pdf), dt.date(2026, 2, 1), threshold=0.8, budget=20,
                       shares={"uncertain": 0.5, "stratified": 0.5}, uncertain_band=0.05,
                       strata_edges=[0, 0.01, 0.05, 0.2, 0.5, 0.8], min_per_stratum=2, salt="t").toPandas()
    assert len(got) == 20 and got["account_id"].is_unique
    uncertain = got[got.reason == "uncertain"]
    assert sorted(uncertain["account_id"]) == [1000, 1001, 1002] and set(uncertain["stratum_size"]) == {3}
    strat = got[got.reason == "stratified"]
    assert len(strat) == 17 and (strat["score"] < 0.75).all()
    np.testing.assert_allclose(strat["sampling_probability"], 17 / 1000)
    assert set(strat["stratum_size"]) == {1000}


def test_review_queue_sizes_do_not_depend_on_its_draw(spark):
    """4 accounts, one of them held out (a bot), budget 2 split between exploration and the strata. The
    stratified part once drew first and, when it took the holdout account, was drawn again bigger: the
    holdout's inclusion probability was 1/4 and each other's 1/3, not the 1/4 and 1/2 recorded, and the
    prevalence read 0.125 on average for a truth of 0.25. Now every salt draws the same sizes, and the
    labelled queue's stratified estimate is the truth, whichever accounts were drawn."""
    import datetime as dt

    from botwatch.monitoring.prevalence import stratified_estimate
    from botwatch.monitoring.review import review_queue

    scores = spark.createDataFrame([(i, 0.9, "stage1_xgb:1", i == 0) for i in range(4)],
                                   "account_id long, score double, model_version string, holdout boolean")
    for salt in [f"s{k}" for k in range(8)]:
        got = review_queue(scores, dt.date(2026, 2, 1), threshold=None, budget=2,
                           shares={"exploration": 0.5, "stratified": 0.5}, uncertain_band=0.05, strata_edges=[0.0],
                           min_per_stratum=1, salt=salt).toPandas().set_index("reason")
        assert got.loc["exploration", "account_id"] == 0 and got.loc["exploration", "sampling_probability"] == 1.0
        assert got.loc["stratified", "account_id"] in (1, 2, 3), salt
        assert got.loc["stratified", "sampling_probability"] == pytest.approx(1 / 3)
        assert got.loc["stratified", "stratum_size"] == 3
        bot = (got["account_id"] == 0).astype(int)
        assert stratified_estimate(got["stratum_size"], [1, 1], bot)["estimate"] == pytest.approx(0.25)


def test_review_queue_without_holdout_on_another_date_and_with_bad_edges(spark, queue):
    import datetime as dt

    from botwatch.monitoring.review import ReviewConfigError, review_queue

    pdf, got, _, kwargs = queue
    scores = spark.createDataFrame(pdf.drop(columns=["holdout"]))
    other_day = review_queue(scores, dt.date(2026, 2, 2), **kwargs).toPandas()
    assert len(other_day) == 200 and "exploration" not in set(other_day["reason"])
    # Another night draws other accounts from the big low-score stratum (2 of ~19,000 drawn each night).
    low = EDGES[1]
    first = set(got.loc[(got.reason == "stratified") & (got.score < low), "account_id"])
    second = set(other_day.loc[(other_day.reason == "stratified") & (other_day.score < low), "account_id"])
    assert first and second and not first & second
    # Two NaN edges made names no precision could tell apart (StopIteration); an infinite one an empty stratum.
    for edges in ([], [0.1, 0.5], [0.0, float("nan"), float("nan")], [float("nan")], [0.0, 0.5, float("inf")]):
        with pytest.raises(ReviewConfigError, match="strata_edges must list the strata's lower edges, finite"):
            review_queue(scores, dt.date(2026, 2, 2), **{**kwargs, "strata_edges": edges})


def test_strata_a_general_format_would_print_alike_keep_their_own_names(spark):
    import datetime as dt

    from botwatch.monitoring.prevalence import stratified_prevalence
    from botwatch.monitoring.review import review_queue, stratum_labels

    # Usual edges keep their short names, as dashboards show them.
    assert stratum_labels([0.0, 0.5]) == ["score[0,0.5)", "score[0.5,inf)"]
    # Edges 1e-7 apart print alike to six digits: [0.3,0.3) twice, and the estimate merged two strata.
    edges = [0.0, 0.3000001, 0.3000002, 0.3000003]
    assert len(set(stratum_labels(edges))) == len(edges)
    score = np.repeat([0.1, 0.30000015, 0.30000025, 0.9], [30, 10, 5, 20])
    bot = (np.arange(score.size) % 3 == 0).astype(int)
    scores = spark.createDataFrame(pd.DataFrame({"account_id": np.arange(score.size, dtype="int64"),
                                                 "score": score, "model_version": "stage1_xgb:1"}))
    got = review_queue(scores, dt.date(2026, 2, 1), threshold=None, budget=score.size,
                       shares={"stratified": 1.0}, uncertain_band=0.0, strata_edges=edges, min_per_stratum=1,
                       salt="t").toPandas()
    assert sorted(got.groupby("stratum")["stratum_size"].max()) == [5, 10, 20, 30]
    # Every account drawn and labelled: the estimate is the population's share of bots, with no error.
    got["label"] = bot[got["account_id"].to_numpy()]
    labelled = spark.createDataFrame(got[["account_id", "stratum", "stratum_size", "label"]],
                                     "account_id long, stratum string, stratum_size long, label int")
    assert stratified_prevalence(labelled)["estimate"] == pytest.approx(bot.mean())


def test_review_queue_strata_and_probabilities(queue):
    pdf, got, _, _ = queue
    strat = got[got.reason == "stratified"]
    rest = pdf[~pdf.holdout & ((pdf.score - 0.8).abs() > 0.05)]  # outside the other parts' pools
    bucket = np.searchsorted(EDGES, rest["score"].to_numpy(), side="right") - 1
    sizes = np.bincount(bucket, minlength=len(EDGES))
    drawn = np.searchsorted(EDGES, strat["score"].to_numpy(), side="right") - 1
    n_h = np.bincount(drawn, minlength=len(EDGES))
    assert (n_h >= np.minimum(2, sizes)).all() and (n_h > 0).sum() == (sizes > 0).sum()
    # inclusion probability n_h / N_h; Horvitz-Thompson weights add up to each stratum's size
    np.testing.assert_allclose(strat["sampling_probability"].to_numpy(), (n_h / sizes)[drawn])
    np.testing.assert_allclose(strat["stratum_size"].to_numpy(), sizes[drawn])
    np.testing.assert_allclose(np.bincount(drawn, weights=1 / strat["sampling_probability"].to_numpy()), sizes)
    # the other parts: probability = drawn / pool (the holdout; the band outside it)
    for reason in ("exploration", "uncertain"):
        part = got[got.reason == reason]
        assert part["sampling_probability"].to_numpy() == pytest.approx(len(part) / part["stratum_size"].to_numpy())
    band = (pdf.score - 0.8).abs() <= 0.05
    assert set(got.loc[got.reason == "exploration", "stratum_size"]) == {int(pdf.holdout.sum())}
    assert set(got.loc[got.reason == "uncertain", "stratum_size"]) == {int((band & ~pdf.holdout).sum())}
    # one design: the weights of all three parts add up to every scored account
    assert (1 / got["sampling_probability"]).sum() == pytest.approx(len(pdf))


def test_uncertain_band_lies_around_each_rows_deciding_model(spark, tmp_path):
    """Stage 1 decides at 0.8, the heavy model (for the rows it scored) at 0.6: a heavy-decided score of
    0.61 is uncertain and one of 0.79 is not, while a stage-1 score of 0.79 is."""

    from botwatch import registry
    from botwatch.monitoring.review import review_queue
    from botwatch.monitoring.run import decision_thresholds, model_versions

    wh, day = str(tmp_path / "wh"), dt.date(2026, 2, 1)
    registry.upsert(spark, wh, registry.ModelRecord("stage2_heavy", 2, "champion", day, artifact_path="-",
                                                    threshold=0.6, train_end=day))
    s1, both = "stage1_xgb:1", "stage1_xgb:1+stage2_heavy:2"
    rows = [(1, 0.79, s1), (2, 0.60, s1), (3, 0.61, both), (4, 0.79, both), (5, 0.20, s1), (6, 0.35, both)]
    scores = spark.createDataFrame([(*r, False) for r in rows],
                                   "account_id long, score double, model_version string, holdout boolean")
    def uncertain(threshold):
        queue = review_queue(scores, day, threshold=threshold, budget=2, shares={"uncertain": 1.0},
                             uncertain_band=0.05, strata_edges=EDGES, min_per_stratum=0, salt="t").toPandas()
        return sorted(queue.loc[queue["reason"] == "uncertain", "account_id"])

    assert uncertain(decision_thresholds(spark, wh, model_versions(scores), 0.8)) == [1, 3]
    assert uncertain(0.8) == [1, 4]  # stage 1's threshold for every row: the heavy model's decisions misread


def test_the_estimate_sums_over_one_designs_strata_and_skips_a_queue_missing_one():
    """Today's queues: every part a stratum, their sizes adding up to the 1,000 scored accounts. A queue
    written before the pools were disjoint: its stratified part alone (its other parts are also in its
    buckets). Either kind missing a bucket is left out, even when its other parts' sizes make up the sum
    (they would be counted twice and the unsampled bucket not at all)."""
    from botwatch.monitoring.run import design_strata

    def queue(reasons, sizes):
        return pd.DataFrame({"reason": reasons, "N": sizes})

    parts = ["stratified"] * 3 + ["exploration", "uncertain"]
    new = queue(parts, [700, 200, 50, 10, 40])
    assert design_strata(new, 1000) is new
    old = queue(parts, [700, 250, 50, 12, 45])
    assert design_strata(old, 1000)["N"].tolist() == [700, 250, 50]
    assert design_strata(queue(parts, [700, 250, 20, 12, 45]), 1000) is None  # old, a bucket of 30 unsampled
    assert design_strata(queue(parts, [700, 200, 20, 10, 40]), 1000) is None  # new, the same
    only = queue(["stratified"] * 2, [800, 200])
    assert design_strata(only, 1000) is only and design_strata(only.iloc[:1], 1000) is None


def test_neyman_allocation_is_proportional_to_size_times_spread():
    from botwatch.monitoring.review import neyman_allocation

    sizes, spreads = [10_000, 2_000, 500, 3], [0.05, 0.2, 0.45, 0.5]
    alloc = neyman_allocation(sizes, spreads, 100, minimum=2)
    assert sum(alloc) == 100 and alloc[3] == 2
    ideal = np.array(sizes[:3]) * spreads[:3] / np.dot(sizes[:3], spreads[:3]) * (100 - 2)
    assert np.abs(np.array(alloc[:3]) - ideal).max() <= 2.0
    assert neyman_allocation([5, 1, 0], [0.5, 0.5, 0.5], 100, minimum=2) == [5, 1, 0]
    assert neyman_allocation([50, 60, 50], [0.1, 0.1, 0.1], 2, minimum=2) == [1, 1, 0]
    # minimums that do not fit: the whole budget still goes out, as evenly as they allow
    assert neyman_allocation([100, 100, 100], [0.1, 0.5, 0.9], 10, minimum=5) == [4, 3, 3]
    assert neyman_allocation([100, 50, 2, 0], [0.5] * 4, 5, minimum=3) == [2, 2, 1, 0]
    with pytest.raises(ValueError, match="finite spreads"):  # a NaN share looped forever
        neyman_allocation([100, 50, 10], [0.1, 0.2, float("nan")], 40, minimum=2)


def test_a_nan_score_is_no_score_to_the_review_queue(spark):
    """A NaN score (a broken model's) fell in the top stratum (Spark orders NaN above every number), made
    its spread NaN and the allocation loop forever: the monitor hung. It is left out like a null score."""
    import datetime as dt

    from pyspark.sql import functions as F

    from botwatch.monitoring.review import review_queue

    pdf = pd.DataFrame({"account_id": range(300), "score": np.linspace(0.0, 0.99, 300)})
    pdf = pdf.assign(model_version="stage1_xgb:1", holdout=False)
    # Set in Spark: a pandas NaN arrives as null.
    scores = spark.createDataFrame(pdf).withColumn(
        "score", F.when(F.col("account_id") == 7, F.lit(float("nan"))).otherwise(F.col("score")))
    assert scores.where(F.isnan("score")).count() == 1
    got = review_queue(scores, dt.date(2026, 2, 1), threshold=0.8, budget=40,
                       shares={"stratified": 1.0}, uncertain_band=0.05, strata_edges=EDGES, min_per_stratum=2,
                       salt="t").toPandas()
    assert len(got) == 40 and 7 not in set(got["account_id"]) and got["score"].notna().all()
    assert got.groupby("stratum")["stratum_size"].first().sum() == 299
    # Nor is it counted in the report's score histogram (it fell in bin 0), against numpy's.
    from botwatch.monitoring.run import _score_histograms

    hist = _score_histograms(scores.withColumn("run_date", F.lit(dt.date(2026, 2, 1))), dt.date(2026, 2, 1), 7)
    kept = pdf["score"].drop(7).to_numpy()
    counts = np.bincount(np.minimum(np.floor(kept * 50), 49).astype(int), minlength=50)
    got_counts = hist.set_index("bin")["count"].reindex(range(50), fill_value=0).to_numpy()
    assert hist["current"].all() and got_counts.tolist() == counts.tolist()


# ---- prevalence ------------------------------------------------------------------------------


def test_prevalence_interval_covers_the_truth_and_saves_variance():
    from botwatch.monitoring.prevalence import srs_estimate, stratified_estimate
    from botwatch.monitoring.review import neyman_allocation

    n, budget, covered, srs_covered, est, srs, design_effects = 20_000, 150, 0, 0, [], [], []
    seeds = range(300)
    for seed in seeds:
        bot, score = _population(seed, n, prevalence=0.02 + 0.02 * (seed % 3))
        rng = np.random.default_rng(10_000 + seed)
        h = np.searchsorted(EDGES, score, side="right") - 1
        sizes = np.bincount(h, minlength=len(EDGES))
        means = [np.clip(score[h == k].mean(), 1e-3, 1 - 1e-3) if sizes[k] else 0.5 for k in range(len(EDGES))]
        spreads = [np.sqrt(m * (1 - m)) for m in means]
        alloc = neyman_allocation(sizes, spreads, budget, minimum=2)
        ys = [bot[rng.choice(np.flatnonzero(h == k), alloc[k], replace=False)].sum() if alloc[k] else 0
              for k in range(len(EDGES))]
        got = stratified_estimate(sizes, alloc, ys)
        design_effects.append(got["design_effect"])
        truth = bot.mean()
        covered += got["low"] <= truth <= got["high"]
        est.append(got["estimate"] - truth)
        plain = srs_estimate(bot[rng.choice(n, budget, replace=False)], n)
        srs.append(plain["estimate"] - truth)
        srs_covered += plain["low"] <= truth <= plain["high"]
    assert covered / len(seeds) >= 0.90
    assert abs(np.mean(est)) < 2 * np.std(est) / np.sqrt(len(seeds)) + 1e-4  # unbiased
    assert np.var(est) < 0.5 * np.var(srs)  # the strata save at least half the variance
    # ... and the reported design effect says so: near the empirical variance ratio (0.0098 here; comparing
    # the interval's shrunk variance with a plain one reported 0.64)
    assert 0.5 < np.nanmedian(design_effects) / (np.var(est) / np.var(srs)) < 2


def test_sampled_precision_and_recall_estimate_the_populations_where_the_arrived_labels_do_not():
    """Actions at score >= 0.4; labels of a pool 60 % bots (what investigators pick) against the stratified
    sample weighted by its inclusion probabilities, each against the population's own precision and recall."""
    from botwatch.monitoring.prevalence import stratified_ratio
    from botwatch.monitoring.review import neyman_allocation

    n, budget, errors, naive_errors = 20_000, 400, [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        bot = (rng.random(n) < 0.03).astype(int)
        score = np.where(bot == 1, rng.beta(2, 2, n), rng.beta(1, 12, n))  # classes overlap: neither figure is 1
        act = score >= 0.4
        truth = (bot[act].mean(), act[bot == 1].mean())
        rng = np.random.default_rng(20_000 + seed)
        h = np.searchsorted(EDGES, score, side="right") - 1
        sizes = np.bincount(h, minlength=len(EDGES))
        alloc = neyman_allocation(sizes, [0.5] * len(EDGES), budget, minimum=2)
        picked = [rng.choice(np.flatnonzero(h == k), alloc[k], replace=False) for k in range(len(EDGES))]
        both = [int((bot[p] & act[p]).sum()) for p in picked]
        got = (stratified_ratio(sizes, alloc, both, [int(act[p].sum()) for p in picked]),
               stratified_ratio(sizes, alloc, both, [int(bot[p].sum()) for p in picked]))
        errors.append(np.subtract(got, truth))
        pool = np.concatenate([rng.choice(np.flatnonzero(bot == 1), 240), rng.choice(np.flatnonzero(bot == 0), 160)])
        naive_errors.append(bot[pool][act[pool]].mean() - truth[0])
    errors = np.asarray(errors)
    assert np.all(np.abs(errors.mean(axis=0)) < 0.02)  # a ratio estimator: unbiased up to O(1/n)
    assert np.mean(naive_errors) > 0.05  # the labels that happen to arrive overstate precision
    assert np.isnan(stratified_ratio([10, 5], [3, 0], [1, 0], [2, 0]))  # a stratum without labels
    assert np.isnan(stratified_ratio([10, 5], [3, 2], [0, 0], [0, 0]))  # nothing actioned in the sample


def _horvitz_thompson(sizes, n_h, y_h) -> tuple[float, float]:
    """The stratified estimate written out: the sum over sampled accounts of y_i / pi_i, divided by N, and
    its standard error with each stratum's share shrunk as (y + 0.5) / (n + 1)."""
    sizes, n_h, y_h = (np.asarray(v, dtype=float) for v in (sizes, n_h, y_h))
    estimate = float(np.sum(sizes * y_h / n_h) / sizes.sum())
    w, p = sizes / sizes.sum(), (y_h + 0.5) / (n_h + 1)
    return estimate, float(np.sqrt(np.sum(w**2 * (1 - n_h / sizes) * p * (1 - p) / (n_h - 1))))


def test_stratified_estimate_is_horvitz_thompson():
    from botwatch.monitoring.prevalence import stratified_estimate

    sizes, n_h, y_h = [1000, 200, 50], [20, 10, 5], [1, 4, 5]
    got = stratified_estimate(sizes, n_h, y_h)
    assert (got["estimate"], got["se"]) == pytest.approx(_horvitz_thompson(sizes, n_h, y_h))
    assert np.isnan(stratified_estimate([10, 5], [3, 0], [1, 0])["estimate"])  # an unlabelled stratum


def test_prevalence_from_the_queue_in_spark(spark, queue):
    from botwatch.monitoring.prevalence import stratified_prevalence

    pdf, got, _, _ = queue
    # simulated investigators: truth labels for the sampled accounts (tests only); in each stratum of 3 or
    # more, one account is not labelled yet (null): it counts in neither n_h nor y_h
    strat = got.merge(pdf[["account_id", "bot"]], on="account_id")  # every part is a stratum of the design
    strat = strat.sort_values("account_id").reset_index(drop=True)
    first = strat.groupby("stratum").cumcount() == 0
    pending = first & (strat.groupby("stratum")["account_id"].transform("size") >= 3)
    assert pending.any()
    strat["label"] = strat["bot"].astype(object).where(~pending, None)
    labelled = spark.createDataFrame(strat[["account_id", "stratum", "stratum_size", "label"]],
                                     "account_id long, stratum string, stratum_size long, label int")
    est = stratified_prevalence(labelled)
    done = strat[~pending]
    groups = done.groupby("stratum").agg(N=("stratum_size", "max"), n=("bot", "size"), y=("bot", "sum"))
    assert (est["estimate"], est["se"]) == pytest.approx(_horvitz_thompson(groups["N"], groups["n"], groups["y"]))
    assert est["low"] <= pdf["bot"].mean() <= est["high"]


def _two_strata_queue(spark, wh: str, day: dt.date, budget: int) -> np.ndarray:
    """200 scored accounts on ``day``, 20 bots (ids 180..199, scored 0.95 and actioned) and 180
    humans (0.001); D's review queue with ``budget``; returns the stratified sample's ids."""
    from pyspark.sql import functions as F

    from botwatch.delta_io import write_table
    from botwatch.monitoring.review import review_queue
    from botwatch.monitoring.run import MonitorParams

    ids = np.arange(200, dtype="int64")
    pdf = pd.DataFrame({"account_id": ids, "score": np.where(ids < 180, 0.001, 0.95),
                        "decision": np.where(ids < 180, "none", "action"), "model_version": "stage1_xgb:1",
                        "holdout": False})
    scores = spark.createDataFrame(pdf).withColumn("run_date", F.lit(day))
    write_table(scores, wh, "scores", partition_by=["run_date"])
    queue = review_queue(scores, day, threshold=None, budget=budget, shares={"stratified": 1.0},
                         uncertain_band=0.05, strata_edges=MonitorParams().strata_edges, min_per_stratum=2, salt="t")
    write_table(queue, wh, "review_queue", partition_by=["run_date"])
    return queue.select("account_id").toPandas()["account_id"].to_numpy()


def _write_labels(spark, wh: str, ids, labeled_at, source: str = "investigator") -> None:
    from botwatch.delta_io import write_table

    ids = np.asarray(ids, dtype="int64")
    labels = pd.DataFrame({"account_id": ids, "label": (ids >= 180).astype("int32"), "source": source,
                           "labeled_at": pd.Timestamp(labeled_at)})
    write_table(spark.createDataFrame(labels), wh, "labels")


def test_prevalence_is_not_estimated_from_a_queue_that_skipped_a_stratum(spark, tmp_path):
    """200 scored accounts in two strata; a review budget of 1 samples only the larger one. Its labels
    alone would estimate the whole population's prevalence from 180 of the 200 accounts: no estimate."""
    from botwatch.monitoring.run import MonitorParams, _prevalence_history

    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    params = MonitorParams()

    def estimate_with_budget(budget: int) -> dict:
        _write_labels(spark, wh, _two_strata_queue(spark, wh, day, budget), pd.Timestamp(day) + pd.Timedelta(hours=36))
        return _prevalence_history(spark, wh, day + dt.timedelta(days=1), params)

    assert "estimate" not in estimate_with_budget(1)
    both = estimate_with_budget(4)
    assert both["estimate"] == pytest.approx(0.1)  # both strata sampled: 20 bots of 200
    assert (both["sampled_precision"], both["sampled_recall"]) == (1.0, 1.0)  # the actions are the bots


def test_prevalence_counts_only_the_queues_answers(spark, tmp_path):
    """Labels that predate the queue, and appeals, are not answers to it: with only those, no estimate
    (before, they made one: an earlier verdict or an appeal is there because of what the account is).
    The queue of D is written after D ends, so a label of D itself predates it too."""
    from botwatch.monitoring.run import MonitorParams, _prevalence_history

    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    sampled = _two_strata_queue(spark, wh, day, 4)
    params, nxt = MonitorParams(), day + dt.timedelta(days=1)
    humans, bots = sampled[sampled < 180], sampled[sampled >= 180]
    assert len(humans) and len(bots)
    _write_labels(spark, wh, humans, pd.Timestamp(day) - pd.Timedelta(days=10))  # earlier verdicts
    _write_labels(spark, wh, bots, pd.Timestamp(day) - pd.Timedelta(days=3))
    assert "estimate" not in _prevalence_history(spark, wh, nxt, params)
    _write_labels(spark, wh, sampled, pd.Timestamp(day) + pd.Timedelta(hours=12))  # verdicts of D itself
    assert "estimate" not in _prevalence_history(spark, wh, nxt, params)
    _write_labels(spark, wh, sampled, pd.Timestamp(nxt) + pd.Timedelta(hours=6), source="appeal")
    assert "estimate" not in _prevalence_history(spark, wh, nxt, params)
    # The queue's answers, the day after its date: counted (the same labels as a source the conf names, too).
    _write_labels(spark, wh, sampled, pd.Timestamp(nxt) + pd.Timedelta(hours=12))
    assert _prevalence_history(spark, wh, nxt, params)["estimate"] == pytest.approx(0.1)
    _write_labels(spark, wh, sampled, pd.Timestamp(nxt) + pd.Timedelta(hours=6), source="appeal")
    with_appeals = dataclasses.replace(params, review_label_sources=["investigator", "appeal"])
    assert _prevalence_history(spark, wh, nxt, with_appeals)["estimate"] == pytest.approx(0.1)


@pytest.mark.parametrize("appeal_first", [False, True])
def test_a_tie_between_opposite_labels_goes_to_the_human_as_in_training(spark, tmp_path, appeal_first):
    """A verdict and an appeal with one ``labeled_at``: the monitor pairs the decision with 0, as
    winning_labels does for training, whichever row the table holds first (``max_by`` on
    ``labeled_at`` alone kept the row it read first), and so does the prevalence estimate."""
    from botwatch.delta_io import write_table
    from botwatch.labels import winning_labels
    from botwatch.monitoring.run import MonitorParams, _past_decisions, _prevalence_history
    from botwatch.schemas import LABELS_SCHEMA

    wh, day = str(tmp_path / "wh"), dt.date(2026, 3, 10)
    at = dt.datetime(2026, 3, 10, 9)
    rows = [(1, 1, "investigator", at), (1, 0, "appeal", at)]
    labels = spark.createDataFrame(rows[::-1] if appeal_first else rows, LABELS_SCHEMA).coalesce(1)
    write_table(labels, wh, "labels")
    assert [r.label for r in winning_labels(labels).collect()] == [0]
    yesterday = day - dt.timedelta(days=1)
    scores = spark.createDataFrame([(1, yesterday, 0.9, "action")], "account_id long, run_date date, score double, "
                                   "decision string")
    write_table(scores.select("account_id", "run_date"), wh, "features", partition_by=["run_date"])
    params = MonitorParams()
    assert _past_decisions(spark, wh, scores, day, params)["label"].tolist() == [0]
    # The same tie in every answer to a queue (yesterday's): each reads 0 (human), so the estimate is 0 bots.
    sampled = _two_strata_queue(spark, wh, yesterday, 4)
    tied = [(int(a), lab, "investigator", at) for a in sampled for lab in (1, 0)]
    write_table(spark.createDataFrame(tied, LABELS_SCHEMA).coalesce(1), wh, "labels", mode="overwrite")
    assert _prevalence_history(spark, wh, day, params)["estimate"] == pytest.approx(0.0)


# ---- the monitor step end to end, on hand-built tables -------------------------------------

import datetime as dt  # noqa: E402
import html as html_lib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DAY = dt.date(2026, 3, 10)
TRAIN_DAY = DAY - dt.timedelta(days=6)
N_ACC = 3000


def _accounts(seed: int = 5):
    rng = np.random.default_rng(seed)
    bot = (rng.random(N_ACC) < 0.05).astype(int)
    country = rng.choice(["US", "IN", "BR"], N_ACC)
    new = rng.random(N_ACC) < 0.2
    return bot, country, new


def _features(day: dt.date, drift: float, seed: int, broken: bool = False) -> pd.DataFrame:
    bot, country, new = _accounts()
    rng = np.random.default_rng(seed)
    f_drift = rng.normal(size=N_ACC) + drift
    return pd.DataFrame({
        "account_id": np.arange(N_ACC, dtype="int64"), "run_date": day, "country": country, "is_new_account": new,
        "f_drift": f_drift if not broken else np.full(N_ACC, np.nan),
        "f_stable": rng.lognormal(size=N_ACC) + bot, "f_count": rng.poisson(3, N_ACC).astype("int64"),
    })


def _scores(day: dt.date, seed: int) -> pd.DataFrame:
    bot, _, _ = _accounts()
    rng = np.random.default_rng(seed)
    score = np.where(bot == 1, rng.beta(4, 2, N_ACC), rng.beta(0.6, 25, N_ACC))
    decision = np.where(score >= 0.8, "action", np.where(score >= 0.7, "review", "none"))
    ids = np.arange(N_ACC, dtype="int64")
    holdout = (decision == "action") & (ids % 7 == 0)
    return pd.DataFrame({
        "account_id": ids, "run_date": day, "stage1_score": score, "score": score, "decision": decision,
        "model_version": "stage1_xgb:1", "stage2_reached": score >= 0.5, "holdout": holdout,
        "actioned": (decision == "action") & ~holdout, "golden": False,
    })


def _labels_for(ids: np.ndarray, day: dt.date) -> pd.DataFrame:
    """Simulated investigators: the truth for the queued accounts (tests only)."""
    bot, _, _ = _accounts()
    return pd.DataFrame({
        "account_id": ids.astype("int64"), "label": bot[ids].astype("int32"), "source": "investigator",
        "labeled_at": pd.Timestamp(day) + pd.Timedelta(hours=12),
    })


def _write(spark, pdf: pd.DataFrame, warehouse: str, table: str, mode: str = "append") -> None:
    from botwatch.delta_io import write_table

    df = spark.createDataFrame(pdf)
    if "run_date" in pdf:
        df = df.withColumn("run_date", df["run_date"].cast("date"))
    if "label" in pdf:
        df = df.withColumn("label", df["label"].cast("int"))
    write_table(df, warehouse, table, mode=mode, partition_by=["run_date"] if "run_date" in pdf else [])


def _register_champion(spark, wh: str, train_features, cols: list[str], train_day: dt.date) -> None:
    """stage1_xgb v1 as champion, trained on ``train_day``, with the reference profile of ``train_features``."""
    from botwatch import registry
    from botwatch.monitoring.drift import reference_profile

    art = registry.artifact_dir(wh, "stage1_xgb", 1)
    profile = reference_profile(train_features, cols) | {"run_date": train_day.isoformat()}
    registry.write_artifact(art, "reference.json", profile)
    registry.write_artifact(art, "features.json", {"features": cols})
    registry.upsert(spark, wh, registry.ModelRecord("stage1_xgb", 1, "champion", train_day, artifact_path=art,
                                                    threshold=0.8, train_end=train_day))


@pytest.fixture(scope="module")
def monitored(spark, tmp_path_factory):
    """Two monitored days: D-1 (queue then labelled by simulated investigators) and D, where
    f_drift has shifted by one standard deviation since the model's training date."""
    from botwatch.monitoring.run import MonitorParams, monitor

    wh = str(tmp_path_factory.mktemp("monitor_wh"))
    feats = [_features(TRAIN_DAY, 0.0, 1), _features(DAY - dt.timedelta(days=1), 0.0, 2), _features(DAY, 1.0, 3)]
    _write(spark, pd.concat(feats, ignore_index=True), wh, "features")
    _write(spark, pd.concat([_scores(DAY - dt.timedelta(days=k), 100 + k) for k in range(7)], ignore_index=True),
           wh, "scores")
    cols = ["f_drift", "f_stable", "f_count"]
    _register_champion(spark, wh, spark.createDataFrame(feats[0]), cols, TRAIN_DAY)
    params = MonitorParams(review_budget=120)
    first = monitor(spark, wh, DAY - dt.timedelta(days=1), params)
    queue = spark.read.format("delta").load(f"{wh}/review_queue").toPandas()
    _write(spark, _labels_for(queue["account_id"].to_numpy(), DAY), wh, "labels")
    second = monitor(spark, wh, DAY, params)
    return wh, params, first, second


def _table(spark, wh, name):
    return spark.read.format("delta").load(f"{wh}/{name}").toPandas()


def test_monitor_flags_the_drifted_feature_and_sets_the_alert(spark, monitored):
    wh, params, first, second = monitored
    drift = _table(spark, wh, "drift")
    psi = drift[(drift.name == "psi")].pivot_table(index="feature", columns="run_date", values="value")
    today, yesterday = psi[DAY], psi[DAY - dt.timedelta(days=1)]
    assert today["f_drift"] > params.psi_soft
    assert today[["f_stable", "f_count"]].max() < params.psi_soft
    assert yesterday.max() < params.psi_soft
    metrics = _table(spark, wh, "metrics").set_index(["run_date", "name"])["value"]
    assert metrics[(DAY, "drift_alert")] == 1.0 and metrics[(DAY - dt.timedelta(days=1), "drift_alert")] == 0.0
    assert metrics[(DAY, "drift_hard_alert")] == 0.0
    assert second["drift_alert"] and not first["drift_alert"]


def test_the_alert_makes_the_next_run_retrain(spark, monitored):
    from botwatch.monitoring.run import drift_alert_before
    from botwatch.training import needs_training

    wh, _, _, _ = monitored
    assert drift_alert_before(spark, wh, DAY + dt.timedelta(days=1))
    assert not drift_alert_before(spark, wh, DAY)  # D-1 was quiet
    assert not drift_alert_before(spark, wh, DAY - dt.timedelta(days=1))  # nothing before
    fresh = {"run_date": DAY - dt.timedelta(days=1), "version": 1}
    nxt = DAY + dt.timedelta(days=1)
    retrain, reason = needs_training(fresh, nxt, 7, drift_alert_before(spark, wh, nxt))
    assert retrain and "drift" in reason
    assert not needs_training(fresh, DAY, 7, drift_alert_before(spark, wh, DAY))[0]
    # The model that run trained was promoted: rerunning its date trains nothing new (rerun D = same tables).
    answered = {"run_date": nxt, "version": 2}
    assert needs_training(answered, nxt, 7, drift_alert_before(spark, wh, nxt)) == (
        False, "champion version 2 is 0 days old; reused")


def test_a_stale_alert_retrains_once_while_the_monitor_is_stuck(spark, monitored):
    """A hard alert fails monitor(D) and, with depends_on_past, every later monitor: the alert of D
    stays the latest. The model trained on D+1 answered it; D+3 does not retrain for it again."""
    from botwatch.monitoring.run import drift_alert_before
    from botwatch.training import needs_training

    wh, _, _, _ = monitored
    stuck = DAY + dt.timedelta(days=3)
    assert drift_alert_before(spark, wh, stuck) == DAY
    answered = {"run_date": DAY + dt.timedelta(days=1), "version": 2}
    assert needs_training(answered, stuck, 7, drift_alert_before(spark, wh, stuck)) == (
        False, "champion version 2 is 2 days old; reused")
    unanswered = {"run_date": DAY, "version": 1}
    assert needs_training(unanswered, stuck, 7, DAY) == (True, f"drift alert set by the monitored run of {DAY}")


def test_monitor_metrics_against_pandas(spark, monitored):
    wh, params, _, _ = monitored
    metrics = _table(spark, wh, "metrics").set_index(["run_date", "name"])["value"]
    scores = _table(spark, wh, "scores")
    flag = scores.decision.isin(["action", "review"]) | scores.stage2_reached
    daily = flag.groupby(scores.run_date).mean()
    assert metrics[(DAY, "flagged_rate")] == pytest.approx(daily[DAY])
    assert metrics[(DAY, "flagged_rate_trailing")] == pytest.approx(daily.drop(DAY).mean())
    # past decisions: D-1's decisions against the labels observed on D
    labels = _table(spark, wh, "labels")
    d1 = scores[scores.run_date == DAY - dt.timedelta(days=1)].merge(labels, on="account_id")
    act = d1.decision == "action"
    assert metrics[(DAY, "past_precision")] == pytest.approx((d1.label[act] == 1).mean())
    assert metrics[(DAY, "past_recall")] == pytest.approx(act[d1.label == 1].mean())
    # prevalence from D-1's labelled stratified sample covers the truth
    bot, _, _ = _accounts()
    assert metrics[(DAY, "prevalence_low")] <= bot.mean() <= metrics[(DAY, "prevalence_high")]
    # the same sample's precision and recall of D-1's actions: each labelled pick weighted by 1 / its probability
    queue = _table(spark, wh, "review_queue")
    picks = queue[queue.run_date == DAY - dt.timedelta(days=1)].merge(
        d1[["account_id", "decision", "label"]], on="account_id")
    w, y, a = 1 / picks.sampling_probability, picks.label == 1, picks.decision == "action"
    assert metrics[(DAY, "sampled_precision")] == pytest.approx((w * y * a).sum() / (w * a).sum())
    assert metrics[(DAY, "sampled_recall")] == pytest.approx((w * y * a).sum() / (w * y).sum())
    assert metrics[(DAY, "sampled_n_actioned")] == a.sum()
    sizes = queue.groupby("run_date").size()
    # the budget is a cap: band accounts already drawn by the strata are not drawn twice
    assert sizes[DAY] == params.review_budget and 0.9 * params.review_budget <= sizes.max() <= params.review_budget


@pytest.mark.parametrize("bad, says", [
    ({"flagged_ratio_soft": 0.5}, "flagged_ratio_soft (0.5) must be above 1"),
    ({"flagged_ratio_soft": 12.0}, "at most monitoring.flagged_ratio_hard (10.0)"),
    ({"psi_soft": 3.0}, "psi_soft (3.0) must be above 0 and at most monitoring.psi_hard (2.0)"),
    ({"psi_soft": 0}, "psi_soft (0) must be above 0"),
    ({"trailing_days": 0}, "trailing_days must be at least 1"),
])
def test_monitor_thresholds_that_would_alert_every_night_are_refused(bad, says):
    from botwatch.config import ConfigError
    from botwatch.monitoring.run import MonitorParams

    with pytest.raises(ConfigError, match=re.escape(says)):
        MonitorParams.from_conf(bad)


def test_flagged_rate_alerts_on_a_jump_from_flagging_nobody():
    from botwatch.monitoring.run import _outside, flagged_rate_ratio

    assert _outside(flagged_rate_ratio(0.4, 0.0), 10.0)  # a new champion flags 40% where nobody was
    assert _outside(flagged_rate_ratio(0.0, 0.04), 10.0)  # and the other way round
    assert not _outside(flagged_rate_ratio(0.0, 0.0), 2.0)
    assert not _outside(flagged_rate_ratio(0.05, 0.04), 2.0) and _outside(flagged_rate_ratio(0.09, 0.04), 2.0)
    assert math.isnan(flagged_rate_ratio(0.04, math.nan))  # no trailing days: no alert either way
    assert not _outside(flagged_rate_ratio(0.04, math.nan), 2.0)


def test_scores_of_an_unknown_version_are_read_with_the_champion_as_of_their_date(spark, tmp_path):
    from botwatch import registry
    from botwatch.monitoring.run import _model_record

    wh = str(tmp_path)
    for version, stage, days in ((1, "retired", -10), (2, "champion", 5)):
        trained = DAY + dt.timedelta(days=days)
        registry.upsert(spark, wh, registry.ModelRecord("stage1_xgb", version, stage, trained, threshold=0.1 * version))
    assert _model_record(spark, wh, ["stage1_xgb:2"], DAY)["version"] == 2  # the version that scored D
    assert _model_record(spark, wh, ["handmade"], DAY)["version"] == 1  # not the later champion
    assert _model_record(spark, wh, ["handmade"], DAY + dt.timedelta(days=6))["version"] == 2


def test_monitor_rerun_replaces_its_partitions(spark, monitored):
    from botwatch.monitoring.run import monitor

    wh, params, _, _ = monitored

    def contents() -> dict[str, pd.DataFrame]:
        out = {}
        for name in ("metrics", "drift", "review_queue"):
            df = _table(spark, wh, name)
            out[name] = df.sort_values(list(df.columns)).reset_index(drop=True)
        return out

    before = contents()
    monitor(spark, wh, DAY, params)
    after = contents()
    for name, df in before.items():
        pd.testing.assert_frame_equal(after[name], df, obj=name)  # the same rows and values, not just as many


def test_hard_drift_fails_loudly_after_writing(spark, monitored, tmp_path):
    from tests.helpers import copy_warehouse

    from botwatch.monitoring.run import DriftHardAlert, monitor
    from botwatch.training import needs_training

    wh, params, _, _ = monitored
    wh2 = copy_warehouse(wh, tmp_path / "wh")
    later = DAY + dt.timedelta(days=1)
    _write(spark, _features(later, 0.0, 4, broken=True), wh2, "features")
    _write(spark, _scores(later, 200), wh2, "scores")
    with pytest.raises(DriftHardAlert, match="f_drift") as raised:
        monitor(spark, wh2, later, params)
    # The command it suggests retrains on that date even with a champion trained there (a plain run keeps it).
    assert f"botwatch run --date {later} --set train.max_champion_age_days=0" in str(raised.value)
    # ... for a real shift; broken inputs are fixed and the date rerun (retraining on them would hide them).
    assert f"are broken, fix them and rerun the date (`botwatch run --date {later}`" in str(raised.value)
    fresh = {"run_date": later, "version": "7"}
    assert needs_training(fresh, later, 0, drift_alert_on=None)[0]
    assert not needs_training(fresh, later, 7, drift_alert_on=later - dt.timedelta(days=1))[0]
    metrics = _table(spark, wh2, "metrics").set_index(["run_date", "name"])["value"]
    assert metrics[(later, "drift_hard_alert")] == 1.0
    assert (tmp_path / "wh" / "reports" / f"{later}.html").exists()


@pytest.mark.parametrize("extra_flagged, hard", [(13, False), (2, True)])
def test_a_new_champions_scores_are_not_drift_but_a_tenfold_flagged_rate_still_fails(
        spark, monitored, tmp_path, extra_flagged, hard):
    """D+1 is scored by stage1_xgb:2, which flags more accounts than v1 did on the days before: v2's
    score shift is not compared with v1's days (it set the alert, so the next night retrained, and
    again while the reference days held v1's scores). A new model flagging 10x as many still fails."""
    from tests.helpers import copy_warehouse

    from botwatch.monitoring.run import DriftHardAlert, monitor

    wh, params, _, _ = monitored
    wh2 = copy_warehouse(wh, tmp_path / "wh")
    later = DAY + dt.timedelta(days=1)
    _write(spark, _features(later, 0.0, 4), wh2, "features")
    new = _scores(later, 200).assign(model_version="stage1_xgb:2")
    more = (new.account_id % extra_flagged == 0) & (new.score < 0.5)
    new.loc[more, ["score", "stage1_score"]] = 0.6
    new.loc[more, "stage2_reached"] = True
    _write(spark, new, wh2, "scores")
    old = _table(spark, wh2, "scores")
    old = old[old.run_date != later]
    old_rate = (old.decision.isin(["action", "review"]) | old.stage2_reached).groupby(old.run_date).mean().mean()
    new_rate = (new.decision.isin(["action", "review"]) | new.stage2_reached).mean()
    if hard:
        assert new_rate / old_rate >= params.flagged_ratio_hard
        with pytest.raises(DriftHardAlert, match="of the model before"):
            monitor(spark, wh2, later, params)
        return
    assert params.flagged_ratio_soft <= new_rate / old_rate < params.flagged_ratio_hard  # an alert, compared with v1
    result = monitor(spark, wh2, later, params)
    assert not result["drift_alert"]
    metrics = _table(spark, wh2, "metrics").set_index(["run_date", "name"])["value"]
    assert metrics[(later, "drift_alert")] == 0.0
    assert metrics[(later, "flagged_rate_ratio_new_model")] == pytest.approx(new_rate / old_rate)
    assert math.isnan(result["score_psi"]) and pd.isna(metrics[(later, "flagged_rate_ratio")])
    assert metrics[(later, "flagged_rate_trailing_days")] == 0.0



def test_a_heavy_model_switched_on_is_not_drift_in_scores_or_flagged_rate(spark, monitored, tmp_path):
    """D+1 is the first night of a heavy champion: the same stage1_xgb:1 now sends its top 10 % to
    stage 2 (none before: no heavy champion) and stage2_heavy:1 rescores them. Neither the score shift
    nor the jump in flagged accounts is drift: both come from the new model, so no earlier day is a
    reference, and only the new-model (hard) check compares the rates."""
    from tests.helpers import copy_warehouse

    from botwatch.monitoring.run import monitor

    wh, params, _, _ = monitored
    wh2 = copy_warehouse(wh, tmp_path / "wh")
    old = _table(spark, wh2, "scores").assign(stage2_reached=False)
    _write(spark, old, wh2, "scores", mode="overwrite")
    later = DAY + dt.timedelta(days=1)
    _write(spark, _features(later, 0.0, 4), wh2, "features")
    new = _scores(later, 200)
    new["stage2_reached"] = new.score >= new.score.quantile(0.90)
    new.loc[new.stage2_reached, "model_version"] = "stage1_xgb:1+stage2_heavy:1"
    new.loc[new.stage2_reached, "score"] = 0.999  # the heavy model's own scale
    _write(spark, new, wh2, "scores")
    result = monitor(spark, wh2, later, params)
    metrics = _table(spark, wh2, "metrics").set_index(["run_date", "name"])["value"]
    assert math.isnan(result["score_psi"]) and not result["drift_alert"]
    assert pd.isna(metrics[(later, "flagged_rate_ratio")]) and metrics[(later, "flagged_rate_trailing_days")] == 0.0
    old = old[old.run_date >= later - dt.timedelta(days=params.trailing_days)]
    old_rate = old.decision.isin(["action", "review"]).groupby(old.run_date).mean().mean()
    new_rate = (new.decision.isin(["action", "review"]) | new.stage2_reached).mean()
    assert params.flagged_ratio_soft <= new_rate / old_rate < params.flagged_ratio_hard  # an alert keyed by stage 1
    assert metrics[(later, "flagged_rate_ratio_new_model")] == pytest.approx(new_rate / old_rate)



def test_a_night_where_nobody_reached_stage_two_is_compared_with_its_own_models_days(spark, monitored, tmp_path):
    """stage1_xgb:1 and stage2_heavy:1 scored every day; on D+1 broken inputs push every score under the flag
    threshold, so no row names the heavy model. It is still the same cascade (its heavy champion as of D+1):
    the collapse is drift against the trailing days, not "a new model"."""
    from tests.helpers import copy_warehouse

    from botwatch import registry
    from botwatch.monitoring.run import DriftHardAlert, monitor

    wh, params, _, _ = monitored
    wh2 = copy_warehouse(wh, tmp_path / "wh")
    registry.upsert(spark, wh2, registry.ModelRecord("stage2_heavy", 1, "champion", TRAIN_DAY, artifact_path="-",
                                                     threshold=0.8, train_end=TRAIN_DAY))
    old = _table(spark, wh2, "scores")
    old["stage2_reached"] = old.score >= old.groupby("run_date").score.transform(lambda s: s.quantile(0.9))
    old.loc[old.stage2_reached, "model_version"] = "stage1_xgb:1+stage2_heavy:1"
    _write(spark, old, wh2, "scores", mode="overwrite")
    later = DAY + dt.timedelta(days=1)
    _write(spark, _features(later, 0.0, 4), wh2, "features")
    new = _scores(later, 200).assign(stage2_reached=False, decision="none", actioned=False, holdout=False)
    new[["score", "stage1_score"]] = new[["score", "stage1_score"]] * 0.1
    _write(spark, new, wh2, "scores")
    with pytest.raises(DriftHardAlert) as alert:
        monitor(spark, wh2, later, params)
    assert "flagged rate 0.00x the trailing mean." in str(alert.value)
    assert "of the model before" not in str(alert.value)
    metrics = _table(spark, wh2, "metrics").set_index(["run_date", "name"])["value"]
    assert metrics[(later, "flagged_rate_trailing_days")] == 7.0 and metrics[(later, "flagged_rate_ratio")] == 0.0
    assert metrics[(later, "score_psi")] > 0  # compared with the trailing days' scores (NaN without a reference)


# ---- the report in headless Chromium ---------------------------------------------------------

PROBE = """<script>window.addEventListener('load', () => {
  const seen = [...document.querySelectorAll('section[data-plot]')].map(s => {
    const img = s.querySelector('img');
    return [s.dataset.plot, img ? img.naturalWidth : 0, img ? img.naturalHeight : 0];
  });
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(seen);
  document.body.appendChild(pre);
});</script></body>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} missing: `make browser` (apt-get install -y chromium)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         *args], capture_output=True, text=True, timeout=120, check=True,
    )


def _rendered_plots(path, tmp_path) -> dict:
    probe = tmp_path / "probe.html"
    probe.write_text(open(path).read().replace("</body>", PROBE))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return {name: (w, h) for name, w, h in json.loads(html_lib.unescape(found.group(1)))}


def test_report_operating_point_is_where_past_actions_put_it(monkeypatch):
    """The PR curve's marked point is the past ``action`` decisions' recall and precision, not a
    threshold on the scores: stage 2 decided its accounts at another threshold than stage 1's."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_score, recall_score

    from botwatch.monitoring import report
    from botwatch.monitoring.run import _past_metrics

    rng = np.random.default_rng(5)
    label = rng.integers(0, 2, 400)
    score = np.clip(0.35 * label + rng.uniform(0, 0.65, 400), 0, 1)
    heavy = rng.uniform(size=400) < 0.3  # rows the heavy model decided, at 0.8 instead of stage 1's 0.5
    action = np.where(heavy, score >= 0.8, score >= 0.5)
    pairs = pd.DataFrame({"label": label, "score": score, "decision": np.where(action, "action", "none")})
    figures = []

    def keep(fig):  # instead of encoding it: closed at once, its lines stay readable
        figures.append(fig)
        plt.close(fig)

    monkeypatch.setattr(report, "_png", keep)
    report.plot_pr_curve(pairs, _past_metrics(pairs))
    (marker,) = [line for line in figures[0].axes[0].lines if line.get_marker() == "o"]
    want = (recall_score(label, action), precision_score(label, action))
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx(want, abs=1e-12)
    assert want != pytest.approx((np.mean(score[label == 1] >= 0.5), np.mean(label[score >= 0.5])), abs=1e-3)
    # The stratified sample's population estimate is marked beside it, told apart in the legend.
    figures.clear()
    report.plot_pr_curve(pairs, {**_past_metrics(pairs), "sampled_recall": 0.4, "sampled_precision": 0.9})
    (weighted,) = [line for line in figures[0].axes[0].lines if line.get_marker() == "D"]
    assert (weighted.get_xdata()[0], weighted.get_ydata()[0]) == (0.4, 0.9)
    assert "weighted to all accounts" in weighted.get_label()
    # No past actions: no point to mark.
    figures.clear()
    none = pairs.assign(decision="none")
    report.plot_pr_curve(none, _past_metrics(none))
    assert not [line for line in figures[0].axes[0].lines if line.get_marker() == "o"]


def test_report_renders_every_plot_in_chromium(spark, monitored, tmp_path):
    from PIL import Image

    from botwatch.monitoring.report import PLOTS

    wh, _, _, second = monitored
    path = second["report"]
    assert path == f"{wh}/reports/{DAY}.html"
    plots = _rendered_plots(path, tmp_path)
    assert set(plots) == set(PLOTS)
    for name, (w, h) in plots.items():
        assert w > 100 and h > 100, f"plot {name} did not render: {plots}"
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2400", f"file://{path}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.01  # not blank


def test_first_day_report_says_what_is_missing(spark, monitored, tmp_path):
    wh, _, first, _ = monitored
    page = open(first["report"]).read()
    # D-1: no labels yet, no earlier prevalence: those plots say so instead of failing
    for name in ("pr_curve", "fpr_segments", "prevalence"):
        assert re.search(rf'data-plot="{name}"><h2>[^<]*</h2><p class="missing">', page), name
    assert "This plot failed" not in page
    plots = _rendered_plots(first["report"], tmp_path)
    assert plots["funnel"][0] > 100 and plots["score_histogram"][0] > 100


def test_report_command_prints_the_path(monitored, conf):
    from typer.testing import CliRunner

    from botwatch.cli import app

    wh, _, _, second = monitored
    runner = CliRunner()
    got = runner.invoke(app, ["report", "--date", str(DAY), "--warehouse", wh])
    assert got.exit_code == 0, got.output
    assert got.output.strip() == second["report"]
    missing = runner.invoke(app, ["report", "--date", "2020-01-01", "--warehouse", wh])
    assert missing.exit_code == 1


def test_approx_quantiles_equal_pysparks_own_and_numpys_within_the_error(spark):
    """Read back from the JVM as one string: the same doubles as ``DataFrame.stat.approxQuantile``
    (which reads them one by one), including an all-missing column and tiny/huge magnitudes."""
    from botwatch.monitoring.drift import approx_quantiles

    rng = np.random.default_rng(5)
    pdf = pd.DataFrame({
        "x": rng.normal(size=400), "tiny": rng.random(400) * 1e-300, "huge": rng.lognormal(300, 50, 400) * 1e-130,
        "empty": np.full(400, np.nan), "some_null": np.where(rng.random(400) < 0.3, np.nan, rng.random(400)),
    })
    df = spark.createDataFrame(pdf)
    cols, probs = list(pdf.columns), [k / 100 for k in range(1, 100)]
    got = approx_quantiles(df, cols, probs, 1e-3)
    assert got == df.stat.approxQuantile(cols, probs, 1e-3)
    assert got[cols.index("empty")] == []
    for name in ("x", "some_null"):
        values = np.sort(pdf[name].dropna().to_numpy())
        # Each returned quantile's rank is within the relative error (plus the rank's own rounding).
        ranks = np.searchsorted(values, got[cols.index(name)], side="right") / len(values)
        assert np.all(np.abs(ranks - np.array(probs)) <= 1e-3 + 1 / len(values)), name
    assert approx_quantiles(df, [], probs, 1e-3) == []


def test_reference_profile_of_an_all_missing_feature(spark):
    # e.g. a graph feature no account has yet on the training date: profiled, never a crash
    pdf = pd.DataFrame({"x": np.arange(50, dtype=float), "empty": np.full(50, np.nan)})
    profile = reference_profile(spark.createDataFrame(pdf), ["x", "empty"])
    assert profile["features"]["empty"]["counts"][-1] == 50 and sum(profile["features"]["empty"]["counts"]) == 50
    cur = spark.createDataFrame(pdf.assign(empty=1.0))
    got = drift_statistics(cur, profile).toPandas().set_index("feature")
    assert got.loc["empty", "psi"] > 5.0 and got.loc["x", "psi"] == pytest.approx(0.0, abs=1e-12)


def test_negative_zero_is_binned_with_zero(spark):
    """-0.0 equals 0.0 (numpy's round(-0.2) writes it): the same values today are no drift. Spark's Bucketizer
    alone puts -0.0 below an edge at 0.0, out of the zeros' point-mass bin (PSI 8.5, a hard alert)."""
    values = np.concatenate([np.zeros(50), np.arange(1, 51) / 100])
    today = np.where(values == 0, -0.0, values)
    assert np.signbit(today[:50]).all()
    profile = reference_profile(spark.createDataFrame(pd.DataFrame({"x": values})), ["x"])
    # A reference with -0.0 in it too gives the same edges.
    assert reference_profile(spark.createDataFrame(pd.DataFrame({"x": today})), ["x"])["features"]["x"]["edges"] == (
        profile["features"]["x"]["edges"])
    got = drift_statistics(spark.createDataFrame(pd.DataFrame({"x": today})), profile).toPandas().iloc[0]
    assert stats.ks_2samp(today, values).statistic == 0.0
    assert got["psi"] == pytest.approx(0.0, abs=1e-12)
    assert got["ks"] == pytest.approx(0.0, abs=1e-12)


def test_psi_and_ks_see_a_drifted_point_mass(spark):
    # 2 % verified becoming 40 %, 92 % zeros becoming 60 %: each reference value is one repeated
    # quantile, and it must not share its bin with the values above it.
    rng = np.random.default_rng(3)
    def frame(flag_share, zero_share):
        return pd.DataFrame({
            "verified": (rng.random(N) < flag_share).astype(float),
            "zero_inflated": np.where(rng.random(N) < zero_share, 0.0, rng.lognormal(size=N)),
        })
    ref_pdf, cur_pdf = frame(0.02, 0.92), frame(0.40, 0.60)
    profile = reference_profile(spark.createDataFrame(ref_pdf), list(ref_pdf.columns))
    got = drift_statistics(spark.createDataFrame(cur_pdf), profile).toPandas().set_index("feature")
    for name in ref_pdf.columns:
        spec = profile["features"][name]
        ref, cur = ref_pdf[name].to_numpy(), cur_pdf[name].to_numpy()
        zero_bin, above_bin = (spec["psi_bin"][np.searchsorted(spec["edges"], v, side="right")] for v in (0.0, 1.0))
        assert zero_bin != above_bin, name
        assert got.loc[name, "psi"] == pytest.approx(_psi_numpy(ref, cur, spec["edges"], spec["psi_bin"]), rel=1e-9)
        assert got.loc[name, "psi"] > 0.25, name
        exact = stats.ks_2samp(cur, ref).statistic
        assert got.loc[name, "ks"] - 1e-12 <= exact <= got.loc[name, "ks_upper"] + 1e-12, name
        assert got.loc[name, "ks"] == pytest.approx(exact, abs=1e-12), name  # the mass's own bin: exact here
    # the same reference again does not drift
    same = drift_statistics(spark.createDataFrame(frame(0.02, 0.92)), profile).toPandas().set_index("feature")
    assert (same["psi"] < 0.05).all()


def test_a_reference_with_infinite_quantiles_is_profiled(spark):
    """Infinite values (an ingested division by zero) at both ends: +-inf are quantiles but no edges (Spark's
    Bucketizer refused the repeated split and training failed); they count in the outer bins."""
    values = [-math.inf] * 3 + [float(i) for i in range(94)] + [math.inf] * 3
    profile = reference_profile(spark.createDataFrame([(v,) for v in values], "x double"), ["x"])
    spec = profile["features"]["x"]
    assert all(math.isfinite(e) for e in spec["edges"]) and sum(spec["counts"]) == 100
    assert spec["counts"] == np.bincount(np.searchsorted(spec["edges"], values, side="right"),
                                         minlength=len(spec["edges"]) + 1).tolist() + [0]
    got = drift_statistics(spark.createDataFrame([(v,) for v in values], "x double"), profile).first()
    assert got["psi"] == pytest.approx(0.0, abs=1e-12)


# ---- drift switched on in the simulator ---------------------------------------------------

SIM_START = dt.date(2026, 4, 6)  # a Monday: the days compared below are both weekdays
SIM_DAYS = 4  # drift.detection_wave_fraction 0.5: the wave is day 2, so day 1 is before it and day 3 after
DRIFTED = ("n_events_1d", "session_count_1d")
UNTOUCHED = ("account_age_days", "profile_completeness", "in_degree", "out_degree", "clustering_coef")


@pytest.fixture(scope="module")
def simulated_drift(spark, conf, tmp_path_factory):
    """A simulated platform whose humans act eight times as often after the wave day (and that
    otherwise stays put); a champion
    profiled on day 1's features; the monitor step run on day 3's."""
    from botwatch.features.build import build_features
    from botwatch.monitoring.run import MonitorParams, monitor
    from botwatch.simulate import write_platform

    wh = str(tmp_path_factory.mktemp("simulated_drift"))
    sconf = conf.with_overrides([
        f"warehouse={wh}", "simulate.drift.human_activity_after_wave=8.0",
        # The simulator's other changes off: no new bot family switching on, a graph that hardly grows.
        "simulate.drift.new_family=null", "simulate.graph.in_period_share=0.01",
        "simulate.graph.spam_in_period_share=0.01", "features.windows=[1]", "features.neighbor_aggregates=false",
    ])
    write_platform(spark, wh, accounts=600, days=SIM_DAYS, seed=21, start_date=SIM_START,
                   params=sconf.section("simulate"))
    before, after = SIM_START + dt.timedelta(days=1), SIM_START + dt.timedelta(days=3)
    for day in (before, after):
        build_features(spark, wh, day, sconf.section("features"))
    feats = spark.read.format("delta").load(f"{wh}/features")
    numeric = ("double", "float", "int", "bigint", "boolean")
    cols = [c for c, kind in feats.dtypes if kind in numeric and c not in ("account_id",)]
    _register_champion(spark, wh, feats.where(feats.run_date == before), cols, before)
    ids = feats.where(feats.run_date == after).select("account_id").toPandas()["account_id"].to_numpy()
    score = np.random.default_rng(3).beta(0.6, 25, ids.size)
    _write(spark, pd.DataFrame({
        "account_id": ids.astype("int64"), "run_date": after, "stage1_score": score, "score": score,
        "decision": "none", "model_version": "stage1_xgb:1", "stage2_reached": False, "holdout": False,
        "actioned": False, "golden": False,
    }), wh, "scores")
    result = monitor(spark, wh, after, MonitorParams(psi_hard=100.0))  # the soft alert is what is tested
    return wh, cols, result, after


def test_simulated_drift_raises_psi_on_the_drifted_features_only_and_retrains(spark, simulated_drift):
    from botwatch.monitoring.run import MonitorParams
    from botwatch.training import TrainParams, refresh_decision

    wh, cols, result, after = simulated_drift
    soft = MonitorParams().psi_soft
    drift = _table(spark, wh, "drift")
    psi = drift[(drift.name == "psi") & (drift.run_date == after)].set_index("feature")["value"]
    assert set(DRIFTED + UNTOUCHED) <= set(cols)
    for name in DRIFTED:
        assert psi[name] > soft, (name, psi[name])
    for name in UNTOUCHED:
        assert psi[name] < soft, (name, psi[name])
    assert result["drift_alert"]
    # The champion is a day old, so only the alert can make the next run retrain.
    retrain, reason = refresh_decision(spark, wh, after + dt.timedelta(days=1), TrainParams(label_weights={}))
    assert retrain and "drift" in reason


def test_drift_heat_map_shows_the_configured_number_of_days(spark, tmp_path, monkeypatch):
    from botwatch.delta_io import write_table
    from botwatch.monitoring import report

    wh = str(tmp_path / "wh")
    rows = [(DAY - dt.timedelta(days=k), "x", "psi", 0.1 * k) for k in range(20)]
    write_table(spark.createDataFrame(rows, "run_date date, feature string, name string, value double"), wh, "drift")
    monkeypatch.setattr(report, "_png", lambda fig: [tick.get_text() for tick in fig.axes[0].get_xticklabels()])
    shown = report.plot_drift_heatmap(spark, wh, DAY, days=14, top=5)
    assert shown == [str(DAY - dt.timedelta(days=k))[5:] for k in range(13, -1, -1)]


def test_prevalence_is_plotted_once_on_the_date_of_the_queue_it_came_from(spark, tmp_path, monkeypatch):
    from botwatch.delta_io import write_table
    from botwatch.monitoring import report

    wh = str(tmp_path / "wh")
    # D-2's queue got its labels: the runs of D-1, D and D+1 all report its estimate.
    rows = [(DAY + dt.timedelta(days=k), name, value) for k in (-1, 0, 1)
            for name, value in (("prevalence", 0.05), ("prevalence_low", 0.04), ("prevalence_high", 0.06),
                                ("prevalence_queue_age_days", float(k + 2)))]
    # A newer queue, D+1's, answered the next day.
    rows += [(DAY + dt.timedelta(days=2), name, value) for name, value in (("prevalence", 0.07),
                                                                          ("prevalence_queue_age_days", 1.0))]
    write_table(spark.createDataFrame(rows, "run_date date, name string, value double"), wh, "metrics")
    monkeypatch.setattr(report, "_png", lambda fig: [
        (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines])
    ((x, y),) = report.plot_prevalence(spark, wh, DAY + dt.timedelta(days=2))
    assert [pd.Timestamp(v).date() for v in x] == [DAY - dt.timedelta(days=2), DAY + dt.timedelta(days=1)]
    assert y == [0.05, 0.07]


def test_a_stratums_draw_sorts_only_rows_under_the_cutoff_and_stays_exact(spark, monkeypatch):
    """The n smallest hash numbers of each stratum (pandas' nsmallest as the reference), whether the
    cut-off lets enough rows through or leaves a stratum short and it is drawn again without it."""
    from pyspark.sql import functions as F

    from botwatch.monitoring import review

    n_rows = 5000
    pdf = pd.DataFrame({"account_id": np.arange(n_rows, dtype="int64"), "h": np.arange(n_rows) % 3 == 0})
    pool = spark.createDataFrame(pdf).withColumn("h", F.col("h").cast("int")).withColumn(
        "u", review.hash_uniform(F.col("account_id"), dt.date(2026, 2, 1), "t")).cache()
    ref = pool.toPandas()
    sizes, totals = {0: 7, 1: 3}, ref.groupby("h").size().to_dict()
    want = sorted(ref[ref.h == 0].nsmallest(7, "u").account_id.tolist() + ref[ref.h == 1].nsmallest(3, "u")
                  .account_id.tolist())
    assert review.draw_cutoff(7, totals[0]) < 0.02  # most of the stratum never reaches the sort
    got = review._draw(pool, 0, "u", by="h", sizes=sizes, totals=totals).toPandas()
    assert sorted(got.account_id) == want
    monkeypatch.setattr(review, "draw_cutoff", lambda n, size: 1e-6)  # every stratum left short
    again = review._draw(pool, 0, "u", by="h", sizes=sizes, totals=totals).toPandas()
    assert sorted(again.account_id) == want
    single = review._draw(pool, 4, "u", totals={0: n_rows}).toPandas()
    assert sorted(single.account_id) == sorted(ref.nsmallest(4, "u").account_id)
