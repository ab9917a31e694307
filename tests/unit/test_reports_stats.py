"""Bootstrap and paired approximate-randomisation test over additive per-study statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mxr0.eval.reports.chexbert import CheXbertStats
from mxr0.eval.reports.stats import AdditiveStats, bootstrap, paired_randomization, summarize


class Mean(AdditiveStats):
    names = ("mean",)

    def finalize(self, sums, counts):
        return sums / counts[:, None]


class Ratio(AdditiveStats):  # a corpus-level ratio: not the mean of per-study ratios
    names = ("ratio",)

    def finalize(self, sums, counts):
        return (sums[:, 0] / sums[:, 1])[:, None]


def test_bootstrap_is_seeded_and_independent_of_chunking():
    rng = np.random.default_rng(0)
    s = {"m": Mean(rng.random((50, 1))), "r": Ratio(rng.random((50, 2)) + 0.1)}
    a = bootstrap(s, n_resamples=123, seed=7, chunk=10)
    b = bootstrap(s, n_resamples=123, seed=7, chunk=1000)
    c = bootstrap(s, n_resamples=123, seed=8)
    for k in ("mean", "ratio"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)  # same resamples; BLAS may round differently
        assert not np.array_equal(a[k], c[k])
        assert a[k].shape == (123,)


def test_resample_recomputes_the_corpus_value_from_resampled_sums():
    x = np.array([[1.0, 10.0], [9.0, 10.0], [5.0, 100.0]])
    r = Ratio(x)
    w = np.array([[2.0, 0.0, 1.0]])  # study 0 twice, study 2 once
    assert r.resample_values(w)[0, 0] == pytest.approx((2 * 1 + 5) / (2 * 10 + 100))
    assert r.value()["ratio"] == pytest.approx(15 / 120)


def test_chexbert_f1_on_a_resample_equals_f1_of_the_resampled_lists():
    rng = np.random.default_rng(1)
    h, r = rng.integers(0, 4, (40, 14)), rng.integers(0, 4, (40, 14))
    st = CheXbertStats(h, r, "positive")
    idx = rng.integers(0, 40, 40)
    w = np.bincount(idx, minlength=40).astype(float)[None]
    direct = CheXbertStats(h[idx], r[idx], "positive").value()
    np.testing.assert_allclose(st.resample_values(w)[0], list(direct.values()), rtol=1e-12)


def test_percentile_interval_and_median():
    rng = np.random.default_rng(2)
    st = {"m": Mean(rng.normal(0.5, 0.1, (2000, 1)))}
    samples = bootstrap(st, n_resamples=400, seed=0)
    out = summarize({"mean": st["m"].value()["mean"]}, samples)["mean"]
    assert out["ci_low"] < out["median"] < out["ci_high"]
    assert out["ci_low"] < out["value"] < out["ci_high"]
    # standard error of a mean of 2000 N(., 0.1): 0.00224; the 95% interval spans about 4 of them
    assert 0.006 < out["ci_high"] - out["ci_low"] < 0.012
    assert out["ci_low"] == pytest.approx(np.percentile(samples["mean"], 2.5))


def test_paired_test_identical_systems_and_clear_difference():
    rng = np.random.default_rng(3)
    a = Mean(rng.random((60, 1)))
    res = paired_randomization({"m": a}, {"m": Mean(a.x.copy())}, trials=500, seed=0)["mean"]
    assert res["delta"] == 0 and res["p_value"] == 1.0
    b = Mean(a.x + 0.5)
    res = paired_randomization({"m": a}, {"m": b}, trials=500, seed=0)["mean"]
    assert res["delta"] == pytest.approx(0.5)
    assert res["p_value"] == pytest.approx(1 / 501)


def test_approximate_randomisation_agrees_with_the_exact_permutation_test():
    rng = np.random.default_rng(4)
    n = 10
    xa = rng.random((n, 2)) + 0.2
    xb = xa + rng.normal(0.05, 0.15, (n, 2))
    obs = abs(xb[:, 0].sum() / xb[:, 1].sum() - xa[:, 0].sum() / xa[:, 1].sum())
    hits = 0
    for swap in itertools.product([0, 1], repeat=n):
        s = np.array(swap, bool)[:, None]
        a2, b2 = np.where(s, xb, xa), np.where(s, xa, xb)
        d = abs(b2[:, 0].sum() / b2[:, 1].sum() - a2[:, 0].sum() / a2[:, 1].sum())
        hits += d >= obs - 1e-12
    exact = hits / 2 ** n
    res = paired_randomization({"r": Ratio(xa)}, {"r": Ratio(xb)}, trials=20000, seed=1)["ratio"]
    assert res["p_value"] == pytest.approx(exact, abs=0.012)
    assert 0.02 < exact < 0.98  # the case is not degenerate


def test_paired_test_rejects_different_metric_sets():
    a = {"m": Mean(np.ones((3, 1)))}
    with pytest.raises(ValueError):
        paired_randomization(a, {"x": Mean(np.ones((3, 1)))}, trials=10)
