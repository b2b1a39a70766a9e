"""stats.py: percentiles, (clustered, paired) bootstrap CIs and the exact McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize as scipy_optimize
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


# ------------------------------------------------------------------ intervals that hold at the edges
@pytest.mark.parametrize("k,n", [(0, 20), (1, 20), (19, 20), (30, 30), (7, 50), (500, 1000)])
def test_wilson_interval_equals_scipy(k, n):
    expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = stats.wilson_interval(k, n)
    assert (float(low), float(high)) == pytest.approx((expected.low, expected.high), abs=1e-12)


def midp_reference(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The mid-p interval solved independently: scipy's binomial tails and brentq, one bound at a time."""
    alpha = (1 - confidence) / 2

    def tail_up(p):  # P(X > k) + P(X = k)/2: rises with p
        return scipy_stats.binom.sf(k, n, p) + 0.5 * scipy_stats.binom.pmf(k, n, p) - alpha

    def tail_down(p):  # P(X < k) + P(X = k)/2: falls with p
        return scipy_stats.binom.cdf(k - 1, n, p) + 0.5 * scipy_stats.binom.pmf(k, n, p) - alpha

    low = 0.0 if k == 0 else scipy_optimize.brentq(tail_up, 1e-12, 1 - 1e-12, xtol=1e-14)
    high = 1.0 if k == n else scipy_optimize.brentq(tail_down, 1e-12, 1 - 1e-12, xtol=1e-14)
    return low, high


@pytest.mark.parametrize("k,n", [(0, 20), (1, 20), (2, 20), (19, 20), (30, 30), (7, 50), (49, 50), (500, 1000), (0, 1)])
def test_midp_interval_equals_the_binomial_tails_solved_by_scipy(k, n):
    low, high = stats.midp_interval(k, n)
    assert (float(low), float(high)) == pytest.approx(midp_reference(k, n), abs=1e-9)
    # between Clopper–Pearson (wider) and nothing: the mid-p interval lies inside the exact one
    exact = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert exact.low - 1e-12 <= low and high <= exact.high + 1e-12


def test_midp_interval_takes_real_counts_and_arrays():
    low, high = stats.midp_interval(np.array([0, 3, 10]), np.array([10, 10, 10]))
    assert low[0] == 0.0 and high[2] == 1.0 and np.all(high - low > 0.1)
    l_real, h_real = stats.midp_interval(3.5, 10.0)  # between its integer neighbours
    assert low[1] < l_real < stats.midp_interval(4, 10)[0] and high[1] < h_real < stats.midp_interval(4, 10)[1]
    assert stats.midp_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("values", [np.ones(30), np.zeros(30), np.ones(1), np.array([1.0, 1.0, 0.0])])
@pytest.mark.parametrize("clustered", [False, True])
def test_proportion_intervals_never_collapse(values, clustered):
    clusters = np.arange(values.size) // 3 if clustered else None
    ci = stats.mean_ci(values, clusters=clusters)
    assert ci.high - ci.low > 0.01
    assert ci.low <= ci.estimate <= ci.high
    if values.size == 30 and values.all() and not clustered:  # 30/30: mid-p [0.905, 1], not [1, 1]
        assert (ci.low, ci.high) == pytest.approx(midp_reference(30, 30), abs=1e-9)
        assert ci.method == stats.MIDP


def test_one_row_per_cluster_is_plain_midp_and_repeats_widen_the_interval():
    rng = np.random.default_rng(5)
    per_prompt = (rng.random(40) < 0.6).astype(float)
    plain = stats.proportion_ci(per_prompt)
    same = stats.proportion_ci(per_prompt, clusters=np.arange(40))
    assert (same.low, same.high, same.method) == (plain.low, plain.high, stats.MIDP)
    assert (plain.low, plain.high) == pytest.approx(midp_reference(int(per_prompt.sum()), 40), abs=1e-9)
    # Five identical repeats of each prompt are no more evidence than one: the clustered interval
    # is as wide as the prompt-level one (up to the t-quantile), far wider than rows-as-independent.
    rows = np.repeat(per_prompt, 5)
    clustered = stats.proportion_ci(rows, clusters=np.repeat(np.arange(40), 5))
    naive = stats.proportion_ci(rows)
    assert clustered.method == stats.WILSON_CLUSTERED and clustered.design_effect == pytest.approx(5.0)
    assert clustered.high - clustered.low >= plain.high - plain.low
    assert clustered.high - clustered.low > 1.8 * (naive.high - naive.low)


def test_few_failures_on_one_prompt_do_not_make_the_clustered_interval_row_level():
    """One failing row in 30 prompts × 5 repeats: the design effect estimate (≈ 1) rests on one prompt.

    Satterthwaite's degrees of freedom are then ≈ 2, and the effective n shrinks by (z / t_ν)²:
    the interval is far wider than the one of 149/150 independent rows.
    """
    y = np.full(30, 5.0)
    y[0] = 4.0
    r = stats.clustered_wilson_from_totals(y, np.full(30, 5.0))
    resid = y - 149 / 150 * 5.0
    nu = 2 * np.sum(resid**2) ** 2 / (30 * np.var(resid**2, ddof=1))
    assert float(r["design_effect"]) == pytest.approx(1.0, abs=0.05) and float(r["df"]) == pytest.approx(nu)
    assert 2.0 < nu < 2.3
    row_level = stats.wilson_interval(149, 150)
    assert float(r["low"]) < float(row_level[0]) - 0.05
    z, t = scipy_stats.norm.ppf(0.975), scipy_stats.t.ppf(0.975, nu)
    assert float(r["n_eff"]) == pytest.approx(150 / float(r["design_effect"]) * (z / t) ** 2)
    # Never below the prompt count (scaled for k − 1 df): the design effect's upper bound is 5.
    assert float(r["n_eff"]) >= 30 * (z / scipy_stats.t.ppf(0.975, 29)) ** 2
    # Another rule for ν (NaN: k − 1, as benchmarks/bench_stats.py compares) scales the same effective n.
    k_1 = stats.clustered_wilson_from_totals(
        y, np.full(30, 5.0), df_rule=lambda resid, present: np.full(resid.shape[:-1], np.nan)
    )
    t_k = scipy_stats.t.ppf(0.975, 29)
    assert float(k_1["df"]) == 29 and float(k_1["low"]) > float(r["low"])
    assert float(k_1["n_eff"]) == pytest.approx(150 / float(r["design_effect"]) * (z / t_k) ** 2)
    # Failures spread over many prompts: the design effect is estimated and the df stay near k − 1.
    rng = np.random.default_rng(2)
    spread = stats.clustered_wilson_from_totals(
        rng.binomial(5, rng.beta(2, 2, size=200)).astype(float), np.full(200, 5.0)
    )
    assert float(spread["df"]) > 100 and float(spread["design_effect"]) > 1.5


@pytest.mark.parametrize(
    "draw, centre, kurtosis",
    [
        (lambda rng, size: rng.normal(size=size), 0.0, 3.0),
        (lambda rng, size: rng.laplace(size=size), 0.0, 6.0),
        (lambda rng, size: rng.random(size) < 0.1, 0.1, 1 / (0.1 * 0.9) - 3.0),  # Bernoulli(0.1)
    ],
)
def test_satterthwaite_df_estimates_the_variance_of_the_variance(draw, centre, kurtosis):
    """ν = 2 E[V]² / Var(V) for V = Σ r_i² of k iid residuals is 2k / (κ − 1) (κ: kurtosis); the estimate finds it."""
    rng = np.random.default_rng(4)
    k, sims = 400, 300
    resid = np.asarray(draw(rng, (sims, k)), dtype=float) - centre
    truth = 2 * k / (kurtosis - 1)
    estimate = stats.satterthwaite_df(resid, np.ones_like(resid, dtype=bool))
    assert np.median(estimate) == pytest.approx(truth, rel=0.1)
    one = np.zeros(k)
    one[3] = 1.7
    assert float(stats.satterthwaite_df(one, np.ones(k, dtype=bool))) == pytest.approx(2.0)
    assert np.isnan(stats.satterthwaite_df(np.zeros(k), np.ones(k, dtype=bool)))


def test_non_binary_scores_keep_the_clustered_bootstrap():
    values = np.array([0.2, 0.4, 0.5, 0.9, 0.1, 0.7])
    assert stats.mean_ci(values).method == stats.BOOTSTRAP
    assert stats.mean_ci(values, clusters=[0, 0, 1, 1, 2, 2]).method == stats.BOOTSTRAP_CLUSTERED


def test_newcombe_paired_interval_matches_the_published_example():
    # Newcombe (1998) method 10 on the paired table [[59, 6], [16, 80]]: -0.0621 (-0.1186 to -0.0046),
    # as printed by the R package contingencytables (Fagerland, Lydersen & Laake).
    first = np.array([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, dtype=float)
    second = np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, dtype=float)
    ci = stats.paired_difference_ci(second, first)  # mean(first − second)
    assert (round(ci.estimate, 4), round(ci.low, 4), round(ci.high, 4)) == (-0.0621, -0.1186, -0.0046)
    assert ci.method == stats.NEWCOMBE
    ties = stats.paired_difference_ci(np.ones(30), np.ones(30))  # no discordant pair: still not [0, 0]
    assert ties.low < -0.05 and ties.high > 0.05


def test_sign_flip_test_is_exact_mcnemar_with_one_pair_per_prompt_and_counts_prompts_with_repeats():
    rng = np.random.default_rng(11)
    for _ in range(20):
        a, b = (rng.random(60) < 0.5).astype(float), (rng.random(60) < 0.6).astype(float)
        p, method = stats.paired_test(a, b)
        assert method == stats.MCNEMAR_EXACT
        assert stats.sign_flip_pvalue(b - a) == pytest.approx(stats.mcnemar_exact(a, b), abs=1e-12)
        assert p == stats.mcnemar_exact(a, b)
        # The same pairs repeated five times per prompt carry the prompts' evidence, not five times it.
        p5, method5 = stats.paired_test(np.repeat(a, 5), np.repeat(b, 5), clusters=np.repeat(np.arange(60), 5))
        assert method5 == stats.MCNEMAR_CLUSTERED
        assert p5 == pytest.approx(p, abs=1e-9)
        assert stats.mcnemar_exact(np.repeat(a, 5), np.repeat(b, 5)) <= p  # the row-level test overstates


def test_simulation_suite_small_version_holds_its_targets():
    """A small run of benchmarks/bench_stats.py: coverage, zero width, type-I error, power."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_stats.py"
    spec = importlib.util.spec_from_file_location("bench_stats", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    results = {r["name"]: r for r in bench.run(quick=True, seed=7)}
    for name, r in results.items():
        if name.startswith("stats.zero_width"):
            assert r["pass"], r
        elif name.startswith("stats.coverage"):
            # Exact, one row per prompt: in 93–97 % where reachable, ≥ 93 % elsewhere (missed at
            # p = 0.02, n = 20: 99.3 %, conservative). Repeats: 1,000 simulations, s.e. 0.7 %.
            assert r["value"] >= 0.93 - 2 * r["monte_carlo_se"], r
            if name == "stats.coverage_one_row_min":
                assert r["max"] <= 0.995, r
                assert r["settings_in_target"] >= r["settings"] - 1, r
                assert r["settings_met_where_reachable"] == r["settings_reachable"] - 1, r
            elif name.startswith("stats.coverage_repeats_icc"):
                # Clustered: inside 93–97 % (± 2 s.e.) in every setting of the small run, which holds rare
                # failures and rare passes at high ICC, where the rule for the degrees of freedom decides the
                # coverage (the rules compared: benchmarks/README.md#statistics).
                assert r["max"] <= 0.97 + 2 * r["monte_carlo_se"], r
                assert r["settings"] == 3, r
            elif name == "stats.coverage_repeats_fine_grid_min":
                assert r["pass"] and r["settings"] == 4, r
        elif name.startswith("stats.interval_comparison"):
            chosen = r["candidates"][r["chosen"]]
            assert chosen["below_band"] == 0, r  # Wilson has settings below 93 % on the same grid
            assert r["candidates"]["wilson"]["below_band"] > 0, r
        elif name.startswith("stats.type1_check"):
            assert r["value"] <= 0.025 + 0.01 + 2 * r["monte_carlo_se"], r
        elif name.startswith("stats.type1_mcnemar"):
            assert r["value"] <= 0.05 + 0.01 + 2 * r["monte_carlo_se"], r
    assert results["stats.power_check_drop_0.05_n500"]["value"] > 0.8
    assert {k.split("_")[1] for k in results if k.startswith("stats.type1")} == {"check", "mcnemar"}
