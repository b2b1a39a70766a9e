"""stats.py: percentiles, (clustered, paired) bootstrap CIs and the exact McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sentech_eval.analysis import stats


def test_percentiles_equal_numpy():
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 0.3, size=1001)
    got = stats.percentiles(values, (50, 90, 95, 99))
    assert got == {q: float(np.percentile(values, q)) for q in (50, 90, 95, 99)}


def test_percentiles_ignore_nan_and_handle_empty():
    assert stats.percentiles([1.0, np.nan, 3.0], (50,)) == {50: 2.0}
    assert np.isnan(stats.percentiles([], (50,))[50])
    assert np.isnan(stats.percentiles([np.nan], (95,))[95])


def test_bootstrap_ci_covers_bernoulli_p_in_93_to_97_percent_of_trials():
    """95% CI of a Bernoulli(0.7) mean with n = 200, over 1,000 seeded trials."""
    rng = np.random.default_rng(20261125)
    p, covered = 0.7, 0
    for trial in range(1000):
        sample = (rng.random(200) < p).astype(float)
        mean, low, high = stats.bootstrap_ci(sample, n_resamples=1000, seed=trial)
        assert low <= mean <= high
        covered += low <= p <= high
    assert 930 <= covered <= 970, covered


def test_bootstrap_ci_is_seeded_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=50), rng.normal(size=5000)
    assert stats.bootstrap_ci(small, seed=7) == stats.bootstrap_ci(small, seed=7)
    _, lo_s, hi_s = stats.bootstrap_ci(small)
    _, lo_l, hi_l = stats.bootstrap_ci(large)
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5


def test_clustered_bootstrap_resamples_prompts_not_rows():
    """Ten repeats of each prompt agree perfectly: the honest sample size is the prompt count.

    A row-level bootstrap would treat 400 rows as independent and give a CI about sqrt(10)
    times too narrow; the clustered one matches a bootstrap over the 40 per-prompt means.
    """
    rng = np.random.default_rng(5)
    per_prompt = (rng.random(40) < 0.6).astype(float)
    values = np.repeat(per_prompt, 10)
    clusters = np.repeat([f"p{i}" for i in range(40)], 10)
    mean_c, lo_c, hi_c = stats.bootstrap_ci(values, clusters=clusters, n_resamples=4000)
    _, lo_r, hi_r = stats.bootstrap_ci(values, n_resamples=4000)
    _, lo_p, hi_p = stats.bootstrap_ci(per_prompt, n_resamples=4000)
    assert mean_c == pytest.approx(per_prompt.mean())
    assert (hi_c - lo_c) > 2.5 * (hi_r - lo_r)
    assert (hi_c - lo_c) == pytest.approx(hi_p - lo_p, rel=0.15)


def test_bootstrap_drops_nan_and_degenerate_inputs():
    mean, low, high = stats.bootstrap_ci([1.0, 0.0, np.nan, 1.0, np.nan])
    assert mean == pytest.approx(2 / 3) and 0.0 <= low <= high <= 1.0
    assert all(np.isnan(stats.bootstrap_ci([np.nan, np.nan])))
    assert stats.bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    assert stats.bootstrap_ci([1.0, 0.0], clusters=["a", "a"]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 0.0], clusters=["a"])


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(11)
    base = (rng.random(300) < 0.6).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:45]  # b fixes 45 of a's failures
    better[flip] = 1.0
    diff, low, high = stats.paired_bootstrap_ci(better, base)
    assert diff == pytest.approx(45 / 300)
    assert 0 < low < diff < high
    diff0, low0, high0 = stats.paired_bootstrap_ci(base, base)
    assert (diff0, low0, high0) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_drops_incomplete_pairs_and_checks_length():
    diff, _, _ = stats.paired_bootstrap_ci([1.0, 1.0, np.nan], [0.0, 1.0, 1.0])
    assert diff == 0.5
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([1.0], [1.0, 0.0])


def test_mcnemar_exact_matches_binomial_test():
    a = np.array([1] * 30 + [0] * 10 + [1] * 4 + [0] * 56, dtype=float)
    b = np.array([1] * 30 + [0] * 10 + [0] * 4 + [1] * 56, dtype=float)
    # discordant: a-only 4, b-only 56
    expected = scipy_stats.binomtest(4, 60, 0.5).pvalue
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected)
    assert stats.mcnemar_exact(a, b) < 1e-10
    assert stats.mcnemar_exact(a, a) == 1.0
    assert stats.mcnemar_exact([1, 0], [0, 1]) == 1.0  # one each way: no evidence
    assert stats.mcnemar_exact([1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]) == pytest.approx(2 * 0.5**6)


def test_errors_are_excluded_from_quality_but_counted_in_error_rate():
    status = np.array(["ok", "ok", "error", "ok", "error"], dtype=object)
    scores = np.array([1.0, 0.0, np.nan, 1.0, 0.0])  # a stray score on an errored row is ignored too
    values = stats.quality_values(scores, status)
    assert stats.bootstrap_ci(values)[0] == pytest.approx(2 / 3)
    assert stats.error_rate(status) == pytest.approx(0.4)
    assert np.isnan(stats.error_rate([]))
