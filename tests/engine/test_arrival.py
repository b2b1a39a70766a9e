"""Arrival processes: seeded, exact for constant, exponential gaps for Poisson, CV 1/sqrt(b) for gamma.

Small versions of benchmarks/bench_load.py's statistical checks (that one uses 100,000 gaps)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
from scipy import stats

from sentech_eval.engine.arrival import arrival_gaps, arrival_offsets


def _take(kind, rate, n, **kw):
    return np.array(list(islice(arrival_offsets(kind, rate, **kw), n)))


def test_constant_is_exact_and_starts_at_zero():
    offsets = _take("constant", 200, 10_000)
    assert offsets[0] == 0.0
    assert np.allclose(offsets, np.arange(10_000) / 200, atol=1e-9)  # across several generator blocks


def test_same_seed_same_instants_other_seed_other_instants():
    a, b = _take("poisson", 50, 5000, seed=7), _take("poisson", 50, 5000, seed=7)
    c = _take("poisson", 50, 5000, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) >= 0)


def test_poisson_gaps_are_exponential_with_cv_one():
    gaps = np.diff(_take("poisson", 100, 20_001, seed=3))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 100)).pvalue > 0.001
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05
    assert abs(gaps.mean() - 0.01) < 0.0005


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_keeps_the_rate_and_sets_the_cv(burstiness):
    gaps = arrival_gaps("gamma", 20, 40_000, burstiness=burstiness, rng=np.random.default_rng(1))
    assert abs(gaps.mean() * 20 - 1) < 0.03
    assert abs(gaps.std() / gaps.mean() - 1 / np.sqrt(burstiness)) < 0.05 / np.sqrt(burstiness)


def test_a_wrong_process_or_rate_is_refused_at_once():
    with pytest.raises(ValueError, match="rate must be a positive"):
        arrival_offsets("poisson", 0)
    with pytest.raises(ValueError, match="has no gaps"):
        arrival_offsets("closed", 5)
    with pytest.raises(ValueError, match="burstiness"):
        arrival_offsets("gamma", 5, burstiness=0)
