"""analysis.pareto: the front is the set no other point dominates (checked against brute force)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sentech_eval.analysis.pareto import pareto_front


def test_a_small_example():
    score = [0.9, 0.8, 0.95, 0.7, np.nan]
    cost = [2.0, 1.0, 5.0, 1.5, 0.1]
    assert pareto_front(score, cost).tolist() == [True, True, True, False, False]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_front_matches_brute_force(points):
    score = np.array([p[0] for p in points], dtype=float)
    cost = np.array([p[1] for p in points], dtype=float)
    front = pareto_front(score, cost)
    for i in range(len(points)):
        dominated = any(
            score[j] >= score[i] and cost[j] <= cost[i] and (score[j] > score[i] or cost[j] < cost[i])
            for j in range(len(points))
        )
        assert front[i] == (not dominated)
