"""Statistics for summaries and comparisons: percentiles, (paired) bootstrap CIs, McNemar.

All bootstraps are percentile bootstraps, vectorised with a seeded ``numpy.random.default_rng``,
and may be *clustered*: when ``clusters`` (e.g. the prompt ids) is given, whole clusters are
resampled with replacement, so repeats of the same prompt are not counted as independent
evidence. The statistic is the mean over all rows of the resampled clusters.
NaN values (missing scores, errored rows) are dropped before anything is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

DEFAULT_RESAMPLES = 2000
# Upper bound on resamples x clusters held in memory at once (int64 indices: 8 bytes each).
_BLOCK_CELLS = 4_000_000


def _as_float(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def percentiles(values: Any, qs: Sequence[float] = (50, 90, 95, 99)) -> dict[float, float]:
    """``{q: numpy.percentile(values, q)}`` over the non-NaN values (NaN when there are none)."""
    arr = _as_float(values)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {q: float("nan") for q in qs}
    result = np.percentile(arr, list(qs))
    return {q: float(v) for q, v in zip(qs, result)}


def _cluster_sums(values: np.ndarray, clusters: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and counts (each row its own cluster when ``clusters`` is None)."""
    if clusters is None:
        return values, np.ones_like(values)
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.ravel()
    return np.bincount(codes, weights=values), np.bincount(codes).astype(float)


def _bootstrap_means(sums: np.ndarray, counts: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` means of resampled clusters (ratio of summed sums to summed counts)."""
    k = sums.size
    block = max(1, _BLOCK_CELLS // max(k, 1))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, k, size=(stop - start, k))
        out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def _clean(values: Any, clusters: Any | None) -> tuple[np.ndarray, np.ndarray | None]:
    arr = _as_float(values)
    keep = ~np.isnan(arr)
    cl = None
    if clusters is not None:
        cl = np.asarray(clusters, dtype=object).ravel()
        if cl.size != arr.size:
            raise ValueError(f"clusters has {cl.size} entries but values has {arr.size}")
        cl = cl[keep]
    return arr[keep], cl


def bootstrap_ci(values: Any, clusters: Any | None = None, confidence: float = 0.95,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int | None = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the non-NaN values and its percentile-bootstrap CI.

    With ``clusters`` the resampling unit is the cluster (prompt), not the row.
    With fewer than two clusters the interval collapses to the mean; with no values all are NaN.
    """
    arr, cl = _clean(values, clusters)
    if arr.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(arr.mean())
    sums, counts = _cluster_sums(arr, cl)
    if sums.size < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = _bootstrap_means(sums, counts, n_resamples, rng)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def paired_bootstrap_ci(a: Any, b: Any, clusters: Any | None = None, confidence: float = 0.95,
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int | None = 0) -> tuple[float, float, float]:
    """(diff, low, high) for ``diff = mean(a - b)`` over pairs where both are present.

    ``a[i]`` and ``b[i]`` must be the same item (same prompt and repeat) under two systems;
    with ``clusters`` whole prompts are resampled, keeping the pairing.
    """
    a_arr, b_arr = _as_float(a), _as_float(b)
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples differ in length: {a_arr.size} vs {b_arr.size}")
    diff = a_arr - b_arr
    return bootstrap_ci(diff, clusters=clusters, confidence=confidence, n_resamples=n_resamples, seed=seed)


def mcnemar_exact(a_pass: Any, b_pass: Any) -> float:
    """Two-sided exact McNemar p-value for paired pass/fail outcomes (pairs with a NaN are dropped).

    Only discordant pairs count: with n01 (a fails, b passes) and n10 (a passes, b fails) the
    p-value is the two-sided binomial test of min(n01, n10) out of n01 + n10 at p = 0.5; 1.0
    when there is no discordant pair.
    """
    a_arr, b_arr = _as_float(a_pass), _as_float(b_pass)
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples differ in length: {a_arr.size} vs {b_arr.size}")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    a_ok, b_ok = a_arr[keep] >= 0.5, b_arr[keep] >= 0.5
    n10 = int(np.sum(a_ok & ~b_ok))
    n01 = int(np.sum(~a_ok & b_ok))
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(_scipy_stats.binomtest(min(n01, n10), n, 0.5, alternative="two-sided").pvalue)


def error_rate(status: Any) -> float:
    """Share of rows whose status is not "ok" (NaN for no rows)."""
    arr = np.asarray(status, dtype=object).ravel()
    if arr.size == 0:
        return float("nan")
    return float(np.mean(arr != "ok"))


def quality_values(scores: Any, status: Any) -> np.ndarray:
    """The scores of ok rows only (errored rows are excluded from quality means)."""
    arr = _as_float(scores)
    ok = np.asarray(status, dtype=object).ravel() == "ok"
    return np.where(ok, arr, np.nan)
