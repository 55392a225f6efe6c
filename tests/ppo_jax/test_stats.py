"""Study statistics: IQM, stratified bootstrap intervals, probability of improvement."""

import numpy as np
import pytest
from scipy import stats as sps

from ppo_jax.stats import (
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    probability_of_improvement_ci,
    summarize,
)

pytestmark = pytest.mark.timeout(120)


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -50.0])
    np.testing.assert_allclose(iqm(x), np.mean([2.0, 3.0, 4.0, 5.0]))  # sorted middle 4 of 8
    rng = np.random.default_rng(0)
    for n in (5, 10, 13, 40):
        y = rng.normal(size=n)
        np.testing.assert_allclose(iqm(y), sps.trim_mean(y, 0.25))


def test_bootstrap_interval_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 50.0, size=20)
    lo, hi = bootstrap_ci(x, iqm, reps=4000, seed=3)
    # Direct: resample the 20 runs 4000 times, trimmed mean of each, 2.5% and 97.5% quantiles.
    idx = np.random.default_rng(99).integers(20, size=(4000, 20))
    direct = np.quantile(sps.trim_mean(x[idx], 0.25, axis=1), [0.025, 0.975])
    spread = direct[1] - direct[0]
    assert abs(lo - direct[0]) < 0.08 * spread and abs(hi - direct[1]) < 0.08 * spread, (lo, hi, direct)
    assert lo < iqm(x) < hi
    # Stratified: with two tasks, each column is resampled on its own; a constant task adds no width.
    both = np.stack([x, np.full(20, 7.0)], axis=1)
    lo2, hi2 = bootstrap_ci(both, lambda s: iqm(s[:, 0]), reps=4000, seed=3)
    assert abs(lo2 - direct[0]) < 0.08 * spread and abs(hi2 - direct[1]) < 0.08 * spread


def test_probability_of_improvement_counts_pairs():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.0])
    # Pairs (x > y): (1,0) (2,0) (3,2) (3,0) = 4, ties (2,2) = 1, of 6.
    np.testing.assert_allclose(probability_of_improvement(x, y), (4 + 0.5) / 6)
    np.testing.assert_allclose(probability_of_improvement(x, y) + probability_of_improvement(y, x), 1.0)
    lo, hi = probability_of_improvement_ci(np.arange(10.0) + 5, np.arange(10.0), reps=500)
    assert 0.5 < lo <= hi <= 1.0
    s = summarize(np.arange(8.0), reps=500)
    assert s["iqm"] == 3.5 and s["iqm_ci"][0] <= 3.5 <= s["iqm_ci"][1]
