"""The Pareto front of configurations: the ones no other beats on both score and cost (or latency)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_front(score: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """A boolean mask of the points on the front: higher score is better, lower cost is better.

    A point is on the front when no other point has a score at least as high and a cost at least as
    low, and is strictly better in one of them. Points with a missing score or cost are never on it.
    """
    s = np.asarray(score, dtype=float)
    c = np.asarray(cost, dtype=float)
    usable = np.isfinite(s) & np.isfinite(c)
    front = np.zeros(len(s), dtype=bool)
    for i in np.flatnonzero(usable):
        others = usable.copy()
        others[i] = False
        dominated = others & (s >= s[i]) & (c <= c[i]) & ((s > s[i]) | (c < c[i]))
        front[i] = not dominated.any()
    return front
