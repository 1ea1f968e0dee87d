"""Evaluation metrics (botwatch.evaluation) against scikit-learn on the same arrays: random
scores with ties, sample weights with zeros, and the edge cases (no positives, one score)."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from botwatch.evaluation import (
    MetricInputError,
    bootstrap_ci,
    evaluate,
    f1_at,
    fpr_by_segment,
    operating_threshold,
    pr_auc,
    pr_curve,
    precision_at,
    prior_shift_weights,
    recall_at,
    recall_at_precision,
    recall_by_family,
    roc_auc,
)

SEEDS = range(12)


def _case(seed: int, weighted: bool):
    """Imbalanced labels, scores rounded to 1-2 decimals (many ties), weights with some zeros."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(80, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.4)).astype(int)
    y[:2] = [0, 1]  # both classes present
    s = np.round(rng.normal(size=n) + 1.5 * y, int(rng.integers(1, 3)))
    w = None
    if weighted:
        w = rng.choice([1.0, 0.3, 0.1], size=n) * rng.uniform(0.5, 1.5, size=n)
        w[rng.random(n) < 0.05] = 0.0
    return y, s, w


CASES = [(seed, weighted) for seed in SEEDS for weighted in (False, True)]


@pytest.mark.parametrize(("seed", "weighted"), CASES)
def test_ranking_metrics_match_sklearn(seed, weighted):
    y, s, w = _case(seed, weighted)
    assert pr_auc(y, s, w) == pytest.approx(skm.average_precision_score(y, s, sample_weight=w), abs=1e-12)
    assert roc_auc(y, s, w) == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    p, r, thr = pr_curve(y, s, w)
    p_ref, r_ref, thr_ref = skm.precision_recall_curve(y, s, sample_weight=w)
    np.testing.assert_allclose(p, p_ref, atol=1e-12)
    np.testing.assert_allclose(r, r_ref, atol=1e-12)
    np.testing.assert_array_equal(thr, thr_ref)


@pytest.mark.parametrize(("seed", "weighted"), CASES)
def test_threshold_metrics_match_sklearn(seed, weighted):
    y, s, w = _case(seed, weighted)
    # quantiles of the scores, an exact tied score value, and one above every score
    for threshold in [*np.quantile(s, [0.1, 0.5, 0.9]), float(np.median(s)), float(s.max()) + 1.0]:
        pred = (s >= threshold).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on zero division; both sides give nan
            kw = {"sample_weight": w, "zero_division": np.nan}
            want = (skm.f1_score(y, pred, **kw), skm.precision_score(y, pred, **kw), skm.recall_score(y, pred, **kw))
        got = (f1_at(y, s, threshold, w), precision_at(y, s, threshold, w), recall_at(y, s, threshold, w))
        np.testing.assert_allclose(got, want, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(("seed", "weighted"), CASES)
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_operating_threshold_is_lowest_reaching_target(seed, weighted, target):
    y, s, w = _case(seed, weighted)
    p_ref, r_ref, thr_ref = skm.precision_recall_curve(y, s, sample_weight=w)
    reaching = thr_ref[p_ref[:-1] >= target]
    got = operating_threshold(y, s, target, w)
    assert got == (reaching.min() if reaching.size else None)
    assert recall_at_precision(y, s, target, w) == pytest.approx(r_ref[p_ref >= target].max(), abs=1e-12)
    if got is not None:
        # it meets the target, and the next lower score (the next threshold) does not
        assert skm.precision_score(y, s >= got, sample_weight=w) >= target
        lower = thr_ref[thr_ref < got]
        if lower.size:
            assert skm.precision_score(y, s >= lower.max(), sample_weight=w) < target


def test_a_precision_equal_to_the_target_reaches_it_despite_rounding():
    """Weighted sums put the precision at 0.9 an ulp under 0.8 (0.7999999999999999); in exact
    arithmetic (fractions) it is 0.8, so 0.9 is the operating threshold and recall is 1."""
    from fractions import Fraction

    y, s, w = np.array([1, 1, 0, 0, 0]), np.array([.9, .9, .9, .9, .1]), np.array([.1, .7, .1, .1, 1])
    exact = Fraction(1, 10) + Fraction(7, 10)
    assert exact / (exact + Fraction(1, 10) + Fraction(1, 10)) == Fraction(4, 5)
    assert operating_threshold(y, s, 0.8, w) == 0.9
    assert recall_at_precision(y, s, 0.8, w) == 1.0


def test_threshold_meets_target_on_a_separable_tail():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(50), np.zeros(950)].astype(int)
    s = np.r_[rng.uniform(0.9, 1.0, 40), rng.uniform(0.0, 0.95, 10), rng.uniform(0.0, 0.92, 950)]
    thr = operating_threshold(y, s, 0.95)
    assert thr is not None
    assert skm.precision_score(y, s >= thr) >= 0.95
    assert recall_at_precision(y, s, 0.95) == pytest.approx(skm.recall_score(y, s >= thr))


def test_prior_shift_weights_give_the_population_share_and_keep_within_class_ratios():
    y, _, w = _case(5, True)
    got = prior_shift_weights(y, 0.03, w)
    assert got[y == 1].sum() / got.sum() == pytest.approx(0.03)
    for cls in (0, 1):
        keep = (y == cls) & (w > 0)
        ratio = got[keep] / w[keep]
        assert ratio == pytest.approx(np.full(keep.sum(), ratio[0]))
    assert prior_shift_weights(np.zeros(5, int), 0.03) == pytest.approx(np.ones(5))  # one class: unchanged
    with pytest.raises(MetricInputError, match="prevalence"):
        prior_shift_weights(y, 1.0, w)


def test_threshold_on_reweighted_labels_holds_precision_in_the_population():
    """Investigators label a bot-heavy sample (60 % bots); the population has 3 %. A threshold
    picked for 95 % precision on the sample as it is actions many humans in the population; the
    same pick on prior-shift-reweighted labels keeps the population's precision near the target."""
    rng = np.random.default_rng(11)
    n_pop, prevalence = 1_000_000, 0.03
    y_pop = (rng.random(n_pop) < prevalence).astype(int)
    s_pop = rng.normal(size=n_pop) + 3.2 * y_pop
    bots, humans = np.flatnonzero(y_pop == 1), np.flatnonzero(y_pop == 0)
    sample = np.r_[rng.choice(bots, 15_000, replace=False), rng.choice(humans, 10_000, replace=False)]
    y_lab, s_lab = y_pop[sample], s_pop[sample]

    naive = operating_threshold(y_lab, s_lab, 0.95)
    shifted = operating_threshold(y_lab, s_lab, 0.95, prior_shift_weights(y_lab, prevalence))
    assert naive is not None and shifted is not None and shifted > naive
    naive_precision = skm.precision_score(y_pop, s_pop >= naive)
    shifted_precision = skm.precision_score(y_pop, s_pop >= shifted)
    assert naive_precision < 0.5
    # 10,000 labelled humans pin the population's false-positive rate to within a few percent
    # (seeds 11-18 gave 0.93-0.965).
    assert shifted_precision == pytest.approx(0.95, abs=0.025)


def test_fpr_by_segment_matches_confusion_matrix():
    rng = np.random.default_rng(5)
    n = 600
    y = (rng.random(n) < 0.2).astype(int)
    pred = (rng.random(n) < 0.15 + 0.5 * y).astype(int)
    country = rng.choice(["US", "DE", "IN"], size=n)
    w = rng.uniform(0.1, 1.0, n)
    for weights in (None, w):
        got = fpr_by_segment(y, pred, country, weights)
        assert set(got) == {"US", "DE", "IN"}
        for c in ("US", "DE", "IN"):
            m = country == c
            tn, fp, _, _ = skm.confusion_matrix(
                y[m], pred[m], labels=[0, 1], sample_weight=None if weights is None else weights[m]
            ).ravel()
            assert got[c] == pytest.approx(fp / (fp + tn), abs=1e-12)
    # a segment with no humans has no false positive rate; missing values form their own segment
    seg = np.array(["a", "a", "b", None], dtype=object)
    got = fpr_by_segment([0, 1, 1, 0], [1, 0, 1, 0], seg)
    assert got["a"] == 1.0 and math.isnan(got["b"]) and got[None] == 0.0


def test_recall_by_family_matches_pandas():
    rng = np.random.default_rng(8)
    fam = rng.choice(["human", "scheduled", "mimic", "botnet"], size=500)
    pred = (rng.random(500) < np.where(fam == "human", 0.02, 0.6)).astype(int)
    want = pd.Series(pred).groupby(fam).mean().drop("human").to_dict()
    got = recall_by_family(fam, pred)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k])


def test_edge_cases_are_documented_values():
    # no positives: PR-AUC, recall undefined; no threshold reaches any precision
    y0, s0 = np.zeros(5, int), np.array([0.1, 0.2, 0.2, 0.5, 0.9])
    assert math.isnan(pr_auc(y0, s0)) and math.isnan(roc_auc(y0, s0))
    assert math.isnan(recall_at(y0, s0, 0.5)) and math.isnan(recall_at_precision(y0, s0, 0.9))
    assert operating_threshold(y0, s0, 0.5) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(skm.roc_auc_score(y0, s0))  # sklearn agrees on ROC-AUC...
        assert skm.average_precision_score(y0, s0) == 0.0  # ...but calls PR-AUC 0 where we say undefined
    # every score the same: one threshold; precision = prevalence
    y, s = np.array([1, 0, 0, 1, 0]), np.full(5, 0.7)
    assert pr_auc(y, s) == pytest.approx(skm.average_precision_score(y, s)) == pytest.approx(0.4)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s)) == 0.5
    assert operating_threshold(y, s, 0.4) == 0.7 and operating_threshold(y, s, 0.5) is None
    assert recall_at_precision(y, s, 0.5) == 0.0
    # nothing flagged: precision undefined, recall 0
    assert math.isnan(precision_at(y, s, 0.8)) and recall_at(y, s, 0.8) == 0.0
    # nothing flagged and no positives: F1 undefined
    assert math.isnan(f1_at(y0, s0, 2.0))


@pytest.mark.parametrize(
    ("y", "s", "w", "match"),
    [
        ([0, 2], [0.1, 0.2], None, "only 0"),
        ([0, 1], [0.1, np.nan], None, "NaN"),
        ([0, 1, 1], [0.1, 0.2], None, "shape"),
        ([0, 1], [0.1, 0.2], [1.0, -1.0], ">= 0"),
    ],
)
def test_bad_input_is_refused(y, s, w, match):
    with pytest.raises(MetricInputError, match=match):
        pr_auc(y, s, w)


def test_bootstrap_contains_estimate_and_is_deterministic():
    y, s, w = _case(1, weighted=False)
    for fn in (pr_auc, roc_auc, functools.partial(precision_at, threshold=float(np.median(s)))):
        low, high = bootstrap_ci(fn, y, s, n=200, seed=11)
        assert low <= fn(y, s) <= high
        assert (low, high) == bootstrap_ci(fn, y, s, n=200, seed=11)
    assert bootstrap_ci(pr_auc, y, s, seed=1) != bootstrap_ci(pr_auc, y, s, seed=2)
    # stratified resampling keeps the class counts: prevalence never moves
    prevalence = bootstrap_ci(lambda a, b: float(np.mean(a)), y, s, n=50)
    assert prevalence == pytest.approx((y.mean(), y.mean()))


def test_unstratified_bootstrap_agrees_with_scipy():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.3).astype(int)
    s = rng.normal(size=300) + y
    ours = bootstrap_ci(roc_auc, y, s, n=2000, seed=0, stratify=False)
    ref = stats.bootstrap(
        (y, s), skm.roc_auc_score, paired=True, vectorized=False, n_resamples=2000,
        confidence_level=0.95, method="percentile", rng=np.random.default_rng(1),
    ).confidence_interval
    # two Monte Carlo runs of the same percentile bootstrap: equal up to resampling noise
    assert ours == pytest.approx((ref.low, ref.high), abs=0.015)


def test_stratified_weighted_bootstrap_agrees_with_a_numpy_reference():
    """The resampling the training gate uses (bots and humans resampled apart, weights carried along),
    against the same percentile bootstrap written out in numpy."""
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.1).astype(int)
    s = rng.normal(size=400) + 1.5 * y
    w = rng.choice([1.0, 0.25, 4.0], size=400)
    ours = bootstrap_ci(skm.average_precision_score, y, s, n=2000, seed=0, sample_weight=w)
    ref_rng = np.random.default_rng(1)
    bots, humans = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = []
    for _ in range(2000):
        idx = np.concatenate([ref_rng.choice(bots, bots.size), ref_rng.choice(humans, humans.size)])
        values.append(skm.average_precision_score(y[idx], s[idx], sample_weight=w[idx]))
    # two Monte Carlo runs of the same bootstrap: equal up to resampling noise
    assert ours == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=0.02)


def test_rows_of_weight_zero_count_as_absent():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.3).astype(int)
    s = rng.normal(size=300) + y
    w = rng.choice([1.0, 0.3, 0.0], size=300)
    country = rng.choice(["US", "DE", "FR"], size=300)
    country[(w == 0) & (country == "FR")] = "NZ"  # a segment of weight-0 rows only: absent too
    fam = np.where(y == 1, rng.choice(["botnet", "mimic"], size=300), "human")
    kept = w > 0

    def run(m):
        return evaluate(y[m], s[m], 0.5, sample_weight=w[m], segments={"country": country[m]}, families=fam[m],
                        n_bootstrap=20, seed=1)

    got, want = run(np.ones(300, bool)), run(kept)
    assert (got["n"], got["n_positive"]) == (kept.sum(), y[kept].sum())
    assert got.keys() == want.keys() and "fpr_segment_country_NZ" not in got
    assert all(got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])) for k in got)
    # bootstrap_ci on its own too: weight-0 rows are not drawn into the resamples
    assert bootstrap_ci(pr_auc, y, s, n=50, seed=3, sample_weight=w) == bootstrap_ci(
        pr_auc, y[kept], s[kept], n=50, seed=3, sample_weight=w[kept])
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y[kept], s[kept], sample_weight=w[kept]))
    with pytest.raises(MetricInputError, match="segments\\['country'\\] has shape"):
        evaluate(y, s, 0.5, sample_weight=w, segments={"country": country[:10]})
    # A missing segment value keeps its name (null) whether or not rows were dropped.
    mixed = ["a", math.nan] * 150
    for weights in (np.ones(300), w):
        assert "fpr_segment_c_null" in evaluate(y, s, 0.5, sample_weight=weights, segments={"c": mixed}, n_bootstrap=5)
    # Nothing but weight 0: nothing to measure.
    empty = evaluate(y, s, 0.5, sample_weight=np.zeros(300), segments={"country": country}, n_bootstrap=5)
    assert (empty["n"], empty["n_positive"]) == (0, 0) and math.isnan(empty["pr_auc"])


def test_evaluate_report_matches_sklearn():
    rng = np.random.default_rng(9)
    n = 800
    y = (rng.random(n) < 0.15).astype(int)
    s = np.round(rng.normal(size=n) + 2.0 * y, 2)
    w = rng.choice([1.0, 0.3], size=n)
    age = rng.choice(["new", "established"], size=n)
    country = rng.choice(["US", "DE"], size=n)
    fam = np.where(y == 1, rng.choice(["botnet", "mimic"], size=n), "human")
    thr = 1.5
    got = evaluate(
        y, s, thr, target_precision=0.9, segments={"age": age, "country": country}, families=fam,
        sample_weight=w, n_bootstrap=100, seed=3,
    )
    pred = (s >= thr).astype(int)
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, sample_weight=w))
    assert got["precision_at_threshold"] == pytest.approx(skm.precision_score(y, pred, sample_weight=w))
    assert got["recall_at_threshold"] == pytest.approx(skm.recall_score(y, pred, sample_weight=w))
    p_ref, r_ref, thr_ref = skm.precision_recall_curve(y, s, sample_weight=w)
    assert got["recall_at_target_precision"] == pytest.approx(r_ref[p_ref >= 0.9].max())
    assert got["threshold_at_target_precision"] == thr_ref[p_ref[:-1] >= 0.9].min()
    assert got["threshold"] == thr and got["n"] == n and got["n_positive"] == y.sum()
    for seg, values in (("age", age), ("country", country)):
        for v in np.unique(values):
            m = values == v
            tn, fp, _, _ = skm.confusion_matrix(y[m], pred[m], labels=[0, 1], sample_weight=w[m]).ravel()
            assert got[f"fpr_segment_{seg}_{v}"] == pytest.approx(fp / (fp + tn))
    for f in ("botnet", "mimic"):
        assert got[f"recall_family_{f}"] == pytest.approx(np.average(pred[fam == f], weights=w[fam == f]))
    assert "recall_family_human" not in got
    for name in ("pr_auc", "roc_auc", "precision_at_threshold", "recall_at_threshold", "recall_at_target_precision"):
        assert got[f"{name}_low"] <= got[name] <= got[f"{name}_high"], name
    # the report's interval is bootstrap_ci's with the same seed (same resamples)
    assert (got["pr_auc_low"], got["pr_auc_high"]) == bootstrap_ci(pr_auc, y, s, n=100, seed=3, sample_weight=w)
    assert all(isinstance(v, float) for v in got.values())
    assert evaluate(y, s, thr, sample_weight=w, n_bootstrap=100, seed=3) == evaluate(
        y, s, thr, sample_weight=w, n_bootstrap=100, seed=3
    )


def test_evaluate_without_threshold_picks_its_own_or_reports_nan():
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    got = evaluate(y, s, target_precision=1.0, n_bootstrap=20)
    assert got["threshold"] == 0.8 and got["precision_at_threshold"] == 1.0
    assert got["recall_at_threshold"] == pytest.approx(2 / 3)
    none = evaluate(np.array([0, 1]), np.array([0.9, 0.1]), target_precision=0.95, segments={"c": ["a", "b"]},
                    n_bootstrap=20)
    assert math.isnan(none["threshold"]) and math.isnan(none["f1"]) and math.isnan(none["fpr_segment_c_a"])
    assert none["recall_at_target_precision"] == 0.0
    # A model with no operating threshold (nan): nothing at a threshold, although these rows could pick one.
    unused = evaluate(y, s, math.nan, target_precision=1.0, segments={"c": ["a", "b"] * 4}, n_bootstrap=20)
    assert math.isnan(unused["threshold"]) and unused["threshold_at_target_precision"] == 0.8
    assert all(math.isnan(unused[k]) for k in ("f1", "precision_at_threshold", "recall_at_threshold",
                                               "precision_at_threshold_low", "fpr_segment_c_a"))


def test_pandas_na_is_a_missing_segment_and_family():
    """pandas' nullable string columns mark missing as pd.NA: the segment None (``_null``), not "NA" (which
    reads as Namibia), and a family array with NA does not raise. Checked against numpy by hand."""
    y, s = np.array([1, 0, 0, 0]), np.array([0.9, 0.8, 0.3, 0.1])
    got = evaluate(y, s, 0.5, segments={"c": pd.Series(["US", None, "US", None], dtype="string")}, n_bootstrap=3)
    assert got["fpr_segment_c_null"] == 0.5 and got["fpr_segment_c_US"] == 0.0 and "fpr_segment_c_NA" not in got
    fam = pd.array(["mimic", None, "human", None], dtype="string")
    assert recall_by_family(fam, [1, 0, 1, 0]) == {"mimic": 1.0, None: 0.0}


def test_segment_values_whose_names_clash_are_kept_apart():
    """Country is free text: "US" and "US " (a CSV's padding), or two scripts the names cannot spell,
    would be one metric name; each keeps its own, with a digest of the value, checked against numpy."""
    import hashlib

    country = np.array(["US", "US ", "日本", "中国", "DE", None] * 20, dtype=object)
    y = np.tile([0, 0, 0, 0, 1, 0], 20)
    s = np.random.default_rng(4).random(y.size)
    got = evaluate(y, s, 0.5, segments={"country": country}, n_bootstrap=5)
    names = {k: v for k, v in got.items() if k.startswith("fpr_segment_country_")}
    def digest(v):
        return hashlib.sha1(repr(v).encode()).hexdigest()[:6]
    want_names = {"US": f"US_{digest('US')}", "US ": f"US_{digest('US ')}", "日本": f"null_{digest('日本')}",
                  "中国": f"null_{digest('中国')}", None: f"null_{digest(None)}", "DE": "DE"}
    assert set(names) == {f"fpr_segment_country_{n}" for n in want_names.values()}
    for value, name in want_names.items():
        rows = np.array([c == value for c in country]) & (y == 0)
        if not rows.any():  # DE rows are all bots here: no false positive rate
            assert math.isnan(names[f"fpr_segment_country_{name}"])
            continue
        assert names[f"fpr_segment_country_{name}"] == pytest.approx(float((s[rows] >= 0.5).mean())), value
