"""Monitoring: drift (PSI, binned KS) against numpy/scipy, the drift alert read by the refresh
policy, the review queue's budget and probabilities, prevalence coverage, and the run report in
headless Chromium."""
from __future__ import annotations

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
    assert got.loc["x_shift", "psi"] == pytest.approx(0.0, abs=1e-12)
