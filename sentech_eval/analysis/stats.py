"""Statistics for summaries and comparisons: percentiles, intervals for means, paired tests.

The unit of evidence is the *cluster* (the prompt, or a column the user names): rows of one
prompt (repeats, sweep points, temperatures) are never counted as independent. Which method is
used depends on the data, and every interval and test says which one it is:

- 0/1 scores (proportions): the **mid-p exact** interval (Lancaster's mid-p version of
  Clopper–Pearson) when every cluster holds one row; the **cluster-adjusted Wilson** interval
  otherwise (Wilson at Korn & Graubard's effective sample size n / design effect, the design
  effect estimated from the prompt-level residuals and kept within [1, Σm²/n], with Korn &
  Graubard's degrees-of-freedom adjustment at Satterthwaite's degrees of freedom of the
  prompt-level variance). Neither can collapse to a point, not even for 30/30.
- other scores: the percentile bootstrap, resampling whole clusters.
- paired 0/1 scores (compare, check): the difference B − A gets **Newcombe's hybrid score
  interval** (method 10: Wilson intervals of each side combined with their correlation, MOVER);
  with clusters the two Wilson intervals are cluster-adjusted and the correlation is the
  cluster-robust correlation of the two means. The test is the **exact McNemar** test when every
  cluster holds one pair and the **clustered McNemar** test otherwise: an exact sign-flip
  (permutation) test of the per-prompt sums of B − A, which is the exact McNemar test when every
  prompt has one pair. Paired other scores: the clustered percentile bootstrap, no test.

Everything is vectorised with numpy (the simulation suite in benchmarks/ calls the same
``*_from_totals`` functions on thousands of simulated data sets at once); bootstraps use a seeded
``numpy.random.default_rng``. NaN values (missing scores, errored rows) are dropped first.

Only ``scipy.special`` is imported with this module (the normal and Student quantiles are its
``ndtri`` and ``stdtrit``, the very functions behind ``scipy.stats.norm.ppf`` and ``t.ppf``);
``scipy.stats`` and ``scipy.signal`` (about 55 MB) are imported by the paired tests that use them,
so a summary (``report``'s numbers, the viewer's worker) does without them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special as _scipy_special

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


def _clean(*columns: Any, clusters: Any | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The columns (same length) and their clusters without the rows where any column is NaN."""
    arrays = [_as_float(c) for c in columns]
    size = arrays[0].size
    if any(a.size != size for a in arrays):
        raise ValueError(f"paired samples differ in length: {' vs '.join(str(a.size) for a in arrays)}")
    keep = ~np.any([np.isnan(a) for a in arrays], axis=0)
    cl = None
    if clusters is not None:
        cl = np.asarray(clusters, dtype=object).ravel()
        if cl.size != size:
            raise ValueError(f"clusters has {cl.size} entries but values has {size}")
        cl = cl[keep]
    return [a[keep] for a in arrays], cl


def bootstrap_ci(
    values: Any,
    clusters: Any | None = None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the non-NaN values and its percentile-bootstrap CI.

    With ``clusters`` the resampling unit is the cluster (prompt), not the row.
    With fewer than two clusters the interval collapses to the mean; with no values all are NaN.
    """
    (arr,), cl = _clean(values, clusters=clusters)
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


def paired_bootstrap_ci(
    a: Any,
    b: Any,
    clusters: Any | None = None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = 0,
) -> tuple[float, float, float]:
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
    (a_arr, b_arr), _ = _clean(a_pass, b_pass)
    a_ok, b_ok = a_arr >= 0.5, b_arr >= 0.5
    n10 = int(np.sum(a_ok & ~b_ok))
    n01 = int(np.sum(~a_ok & b_ok))
    n = n01 + n10
    if n == 0:
        return 1.0
    from scipy import stats as _scipy_stats  # imported when a test needs it (see the module docstring)

    return float(_scipy_stats.binomtest(min(n01, n10), n, 0.5, alternative="two-sided").pvalue)


# ------------------------------------------------------------------------------ methods, by name
WILSON = "wilson"
MIDP = "midp"
WILSON_CLUSTERED = "wilson_clustered"
BOOTSTRAP = "bootstrap"
BOOTSTRAP_CLUSTERED = "bootstrap_clustered"
NEWCOMBE = "newcombe"
NEWCOMBE_CLUSTERED = "newcombe_clustered"
MCNEMAR_EXACT = "mcnemar_exact"
MCNEMAR_CLUSTERED = "mcnemar_clustered"
PASS_AT_K = "pass_at_k"

METHOD_DESCRIPTIONS = {
    WILSON: "Wilson score interval (0/1 score, one row per prompt)",
    MIDP: "mid-p exact interval (mid-p Clopper–Pearson; 0/1 score, one row per prompt)",
    WILSON_CLUSTERED: "cluster-adjusted Wilson interval (0/1 score, several rows per prompt: Wilson at the "
    "effective n = n / design effect, Satterthwaite degrees of freedom)",
    BOOTSTRAP: "percentile bootstrap over rows (one row per prompt)",
    BOOTSTRAP_CLUSTERED: "percentile bootstrap resampling prompts (several rows per prompt)",
    NEWCOMBE: "Newcombe hybrid score interval for paired proportions (one pair per prompt)",
    NEWCOMBE_CLUSTERED: "Newcombe interval from cluster-adjusted Wilson intervals and their cluster-robust correlation",
    MCNEMAR_EXACT: "exact McNemar test (one pair per prompt)",
    MCNEMAR_CLUSTERED: "clustered McNemar test: exact sign-flip test of the per-prompt sums of B − A",
    PASS_AT_K: "unbiased pass@k per prompt (Chen et al. 2021) averaged over prompts; cluster-adjusted Wilson "
    "interval counting each prompt as ⌊n/k⌋ independent k-sample trials",
}


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval, the method that made it and what it rests on."""

    estimate: float
    low: float
    high: float
    method: str  # one of the METHOD_DESCRIPTIONS keys ("" when there is no value)
    n: int  # rows
    n_clusters: int  # prompts (or user clusters)
    design_effect: float = 1.0  # variance inflation from clustering (1.0 without clusters)


def _z(confidence: float) -> float:
    return float(_scipy_special.ndtri(0.5 + confidence / 2.0))  # scipy.stats.norm.ppf


def _t_quantile(q: float, df: Any) -> np.ndarray:
    """Student's t quantile ``q`` at ``df`` degrees of freedom: ``scipy.stats.t.ppf(q, df)``, through the
    function that computes it (``scipy.special.stdtrit``), without importing scipy.stats."""
    return _scipy_special.stdtrit(np.asarray(df, dtype=float), q)


def wilson_interval(successes: Any, n: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``successes`` out of ``n`` (arrays; ``n`` may be an effective, non-integer n).

    With ``n = 0`` the interval is [0, 1]. It never has zero width for ``n`` > 0.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z2 = _z(confidence) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / np.where(n > 0, n, 1.0), 0.5)
        nn = np.where(n > 0, n, 1.0)
        denom = 1.0 + z2 / nn
        centre = (p + z2 / (2.0 * nn)) / denom
        half = np.sqrt(z2) * np.sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    # Exact 0 and n: the bounds are exactly 0 and 1 (round-off would leave 1e-17).
    low = np.where(k <= 0, 0.0, low)
    high = np.where(k >= n, 1.0, high)
    return low, high


def _mid_p_tail_below(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(X < k) + P(X = k) / 2 for X ~ Binomial(n, p), through the regularised incomplete beta (real k, n)."""
    below = np.where(k > 0, _scipy_special.betainc(np.maximum(k, 1e-300), n - k + 1.0, p), 1.0)  # P(X >= k)
    at_most = np.where(n - k > 0, _scipy_special.betainc(k + 1.0, np.maximum(n - k, 1e-300), p), 0.0)  # P(X > k)
    return 1.0 - 0.5 * (below + at_most)


def midp_interval(successes: Any, n: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mid-p exact interval for ``successes`` out of ``n`` (arrays; real-valued k and n allowed).

    The Clopper–Pearson interval with the observed count weighted by one half (Lancaster 1961;
    Berry & Armitage 1995): the upper bound solves P(X < k) + P(X = k)/2 = α/2, the lower bound
    P(X > k) + P(X = k)/2 = α/2. Its exact coverage stays near the nominal level without
    Clopper–Pearson's conservatism or Wilson's dips near 0 and 1 (see benchmarks/bench_stats.py).
    Bounds are solved by bisection to 1e-15; [0, 1] for ``n = 0``; never of zero width for ``n`` > 0.
    """
    k = np.asarray(successes, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), k.shape)
    k, n = np.broadcast_arrays(k, n)
    alpha = (1.0 - confidence) / 2.0
    nn = np.where(n > 0, n, 1.0)
    kk = np.clip(np.where(n > 0, k, 0.0), 0.0, nn)
    bounds = []
    for upper in (True, False):
        lo, hi = np.zeros(kk.shape), np.ones(kk.shape)
        for _ in range(52):  # 2^-52: the bisection has reached float resolution
            mid = 0.5 * (lo + hi)
            tail = _mid_p_tail_below(kk, nn, mid)  # falls from 1 to 0 as p grows
            move_up = tail > alpha if upper else (1.0 - tail) < alpha
            lo, hi = np.where(move_up, mid, lo), np.where(move_up, hi, mid)
        bounds.append(0.5 * (lo + hi))
    high, low = bounds
    low = np.where((n > 0) & (kk > 0), low, 0.0)
    high = np.where((n > 0) & (kk < nn), high, 1.0)
    return low, high


def _cluster_variance(y: np.ndarray, m: np.ndarray, est: np.ndarray, rows: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Cluster-robust (ratio-estimator) variance of ``est = Σy / Σm``; along the last axis, m = 0 pads."""
    resid = y - est[..., None] * m
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(k > 1, k / np.maximum(k - 1, 1), np.nan)
        return factor * np.sum(resid * resid, axis=-1) / (rows * rows)


def satterthwaite_df(resid: Any, present: Any) -> np.ndarray:
    """Satterthwaite's degrees of freedom of the cluster variance V = Σ r_i² (last axis; ``present`` masks padding).

    ν = 2 V² / Var(V) (Satterthwaite 1946), with Var(V) = k · s² estimated from the sample
    variance s² of the k clusters' squared residuals r_i² (its unbiased moment estimate, whatever
    the residuals' distribution). ν is near k for well-spread residuals and near 2 when one
    cluster holds nearly all of V (e.g. every failure on one prompt). NaN when V = 0 or s² = 0.
    """
    r2 = np.where(present, np.asarray(resid, dtype=float) ** 2, 0.0)
    k = np.sum(present, axis=-1)
    v = np.sum(r2, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_r2 = v / k
        s2 = np.sum(np.where(present, (r2 - mean_r2[..., None]) ** 2, 0.0), axis=-1) / np.maximum(k - 1, 1)
        return np.where((v > 0) & (s2 > 0), 2.0 * v * v / np.where(s2 > 0, k * s2, 1.0), np.nan)


def clustered_wilson_from_totals(
    y: Any,
    m: Any,
    confidence: float = 0.95,
    df_rule: Callable[[np.ndarray, np.ndarray], np.ndarray] = satterthwaite_df,
) -> dict[str, np.ndarray]:
    """Cluster-adjusted Wilson interval from per-cluster successes ``y`` and rows ``m`` (last axis).

    Leading axes are independent data sets (the simulation suite passes thousands at once);
    clusters with ``m = 0`` are padding. The design effect is the cluster-robust variance of the
    proportion over the binomial one, kept within [1, Σm²/Σm] (its value if every prompt's rows
    were identical); when the proportion is 0 or 1 it cannot be estimated and its upper bound is
    used (every prompt counts once). With clusters the effective n is further scaled by
    (z / t_ν)² for the degrees of freedom ν of the variance estimate (Korn & Graubard 1998).
    ν is Satterthwaite's (``satterthwaite_df`` over the prompt residuals), within [1, k − 1]:
    when one or two prompts hold every failure it is near 2 and the estimated design effect,
    then ≈ 1, is not trusted. ``df_rule(resid, present)`` replaces that rule (NaN: k − 1), so
    that benchmarks/bench_stats.py compares other rules through this same interval. The effective
    n is never below the prompt count scaled for k − 1 degrees of freedom (the design effect's
    upper bound). With one row per cluster the design
    effect is 1: the plain Wilson interval.
    Returns arrays: estimate, low, high, n_eff, design_effect, df, rows, clusters.
    """
    y = np.asarray(y, dtype=float)
    m = np.asarray(m, dtype=float)
    m = np.broadcast_to(m, y.shape)
    rows = m.sum(axis=-1)
    k = (m > 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = y.sum(axis=-1) / rows
        deff_max = np.sum(m * m, axis=-1) / rows
        var_cl = _cluster_variance(y, m, est, rows, k)
        var_srs = est * (1.0 - est) / rows
        deff = np.where((var_srs > 0) & np.isfinite(var_cl), var_cl / np.where(var_srs > 0, var_srs, 1.0), deff_max)
    deff = np.clip(deff, 1.0, np.maximum(deff_max, 1.0))
    # Korn & Graubard's degrees-of-freedom adjustment: the normal quantile becomes Student's t
    # for the degrees of freedom of the variance estimate (only when the design effect was
    # estimated, i.e. some cluster holds several rows); without residuals (p̂ = 0 or 1) k − 1.
    clustered = deff_max > 1.0
    k_df = np.maximum(k - 1, 1).astype(float)
    df = df_rule(y - est[..., None] * m, m > 0)
    df = np.where(np.isfinite(df), df, k_df)
    df = np.clip(df, 1.0, k_df)
    z = _z(confidence)
    t_df = _t_quantile(0.5 + confidence / 2.0, df)
    t_k = _t_quantile(0.5 + confidence / 2.0, k_df)
    floor = rows / np.maximum(deff_max, 1.0) * (z / t_k) ** 2
    n_eff = np.where(clustered, np.maximum(rows / deff * (z / t_df) ** 2, floor), rows / deff)
    low, high = wilson_interval(est * n_eff, n_eff, confidence)
    return {
        "estimate": est,
        "low": low,
        "high": high,
        "n_eff": n_eff,
        "design_effect": deff,
        "df": np.where(clustered, df, np.inf),
        "rows": rows,
        "clusters": k,
    }


def _codes(clusters: Any | None, size: int) -> np.ndarray:
    if clusters is None:
        return np.arange(size)
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return codes.ravel()


def is_binary(values: Any) -> bool:
    """True when every non-NaN value is 0 or 1 (and there is at least one)."""
    arr = _as_float(values)
    arr = arr[~np.isnan(arr)]
    return arr.size > 0 and bool(np.isin(arr, (0.0, 1.0)).all())


def proportion_ci(values: Any, clusters: Any | None = None, confidence: float = 0.95) -> Interval:
    """Interval of the mean of a 0/1 score: mid-p exact, or cluster-adjusted Wilson when clusters hold several rows."""
    (arr,), cl = _clean(values, clusters=clusters)
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "", 0, 0)
    return proportion_ci_coded(arr, _codes(cl, arr.size), confidence)


def proportion_ci_coded(arr: np.ndarray, codes: np.ndarray, confidence: float = 0.95) -> Interval:
    """``proportion_ci`` of 0/1 values without NaN, whose clusters are already numbered: ``codes[i]`` is
    value i's cluster, 0 … k − 1 in the order of the clusters' names (as ``numpy.unique`` sorts them).

    The core of ``proportion_ci``; a caller that counted clusters itself (``analysis.batched_summary``)
    gets the same interval without naming every row's cluster."""
    y = np.bincount(codes, weights=arr)
    m = np.bincount(codes).astype(float)
    if m.max() <= 1:
        low, high = midp_interval(y.sum(), arr.size, confidence)
        return Interval(float(arr.mean()), float(low), float(high), MIDP, int(arr.size), int(y.size))
    r = clustered_wilson_from_totals(y, m, confidence)
    return Interval(
        float(r["estimate"]),
        float(r["low"]),
        float(r["high"]),
        WILSON_CLUSTERED,
        int(arr.size),
        int(y.size),
        float(r["design_effect"]),
    )


def mean_ci(
    values: Any,
    clusters: Any | None = None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = 0,
) -> Interval:
    """Interval of a score's mean, method chosen by the data (see the module docstring).

    0/1 scores get ``proportion_ci``; other scores the percentile bootstrap resampling clusters.
    """
    (arr,), cl = _clean(values, clusters=clusters)
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "", 0, 0)
    return mean_ci_coded(arr, _codes(cl, arr.size), confidence, n_resamples, seed)


def mean_ci_coded(
    arr: np.ndarray,
    codes: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = 0,
) -> Interval:
    """``mean_ci`` of values without NaN whose clusters are already numbered (see ``proportion_ci_coded``):
    its core, shared with ``analysis.batched_summary``."""
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "", 0, 0)
    if is_binary(arr):
        return proportion_ci_coded(arr, codes, confidence)
    n_clusters = int(codes.max()) + 1
    clustered = n_clusters < arr.size
    mean, low, high = bootstrap_ci(
        arr, clusters=codes if clustered else None, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return Interval(mean, low, high, BOOTSTRAP_CLUSTERED if clustered else BOOTSTRAP, int(arr.size), n_clusters)


def newcombe_from_totals(ya: Any, yb: Any, m: Any, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Interval of p_B − p_A for paired 0/1 scores from per-cluster sums (last axis; m = 0 pads).

    Newcombe's hybrid score interval (method 10, a MOVER combination of the two Wilson
    intervals with the correlation of the two means). With one pair per cluster the Wilson
    intervals are the plain ones and the correlation is the phi coefficient with Newcombe's
    continuity adjustment: Newcombe's method 10 exactly. With clusters both Wilson intervals are cluster-adjusted and the
    correlation is the cluster-robust correlation of the two means. Never of zero width.
    """
    ya = np.asarray(ya, dtype=float)
    yb = np.asarray(yb, dtype=float)
    m = np.broadcast_to(np.asarray(m, dtype=float), ya.shape)
    a = clustered_wilson_from_totals(ya, m, confidence)
    b = clustered_wilson_from_totals(yb, m, confidence)
    rows, k = a["rows"], a["clusters"]
    pa, pb = a["estimate"], b["estimate"]
    ra = ya - pa[..., None] * m
    rb = yb - pb[..., None] * m
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.sum(ra * rb, axis=-1)
        # Newcombe's continuity adjustment of phi: a positive cross-product loses n/2 in count
        # units (0.5 here), which only ever widens the interval.
        cov = np.where(cov > 0.5, cov - 0.5, np.where(cov > 0, 0.0, cov))
        denom = np.sqrt(np.sum(ra * ra, axis=-1) * np.sum(rb * rb, axis=-1))
        corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
    corr = np.clip(corr, -1.0, 1.0)
    diff = pb - pa
    d_low_b, d_high_a = pb - b["low"], a["high"] - pa
    d_high_b, d_low_a = b["high"] - pb, pa - a["low"]
    low = diff - np.sqrt(np.maximum(d_low_b**2 - 2 * corr * d_low_b * d_high_a + d_high_a**2, 0.0))
    high = diff + np.sqrt(np.maximum(d_high_b**2 - 2 * corr * d_high_b * d_low_a + d_low_a**2, 0.0))
    return {
        "estimate": diff,
        "low": np.maximum(low, -1.0),
        "high": np.minimum(high, 1.0),
        "corr": corr,
        "rows": rows,
        "clusters": k,
        "design_effect": np.maximum(a["design_effect"], b["design_effect"]),
    }


def paired_difference_ci(
    a: Any,
    b: Any,
    clusters: Any | None = None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = 0,
) -> Interval:
    """Interval of mean(b − a) over the pairs where both are present, method chosen by the data.

    0/1 scores on both sides: the Newcombe interval (cluster-adjusted when clusters hold several
    pairs); other scores: the percentile bootstrap of the differences resampling clusters.
    """
    (a_arr, b_arr), cl = _clean(a, b, clusters=clusters)
    if a_arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "", 0, 0)
    codes = _codes(cl, a_arr.size)
    n_clusters = int(codes.max()) + 1
    clustered = n_clusters < a_arr.size
    if is_binary(a_arr) and is_binary(b_arr):
        m = np.bincount(codes).astype(float)
        r = newcombe_from_totals(np.bincount(codes, weights=a_arr), np.bincount(codes, weights=b_arr), m, confidence)
        return Interval(
            float(r["estimate"]),
            float(r["low"]),
            float(r["high"]),
            NEWCOMBE_CLUSTERED if clustered else NEWCOMBE,
            int(a_arr.size),
            n_clusters,
            float(r["design_effect"]),
        )
    diff, low, high = bootstrap_ci(
        b_arr - a_arr, clusters=codes if clustered else None, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return Interval(diff, low, high, BOOTSTRAP_CLUSTERED if clustered else BOOTSTRAP, int(a_arr.size), n_clusters)


def sign_flip_pvalue(cluster_sums: Any) -> float:
    """Two-sided exact sign-flip (permutation) p-value for integer per-cluster sums of B − A.

    Under the null each prompt's sum is as likely to be +d as −d; the p-value is
    P(|Σ ±d_i| ≥ |Σ d_i|) over all 2^k sign patterns, computed exactly by convolution. With
    one pair per prompt (d_i ∈ {−1, 0, 1}) this is the exact McNemar test.
    """
    d = np.rint(np.abs(_as_float(cluster_sums))).astype(np.int64)
    observed = abs(int(np.rint(np.sum(_as_float(cluster_sums)))))
    d = d[d > 0]
    if d.size == 0:
        return 1.0
    from scipy import signal as _scipy_signal  # imported when a test needs it (see the module docstring)
    from scipy import stats as _scipy_stats

    # Distribution of Σ s_i d_i on the grid −S..S (S = Σ d_i): one binomial per distinct |d|.
    pmf = np.ones(1)
    for value, count in zip(*np.unique(d, return_counts=True)):
        # value × (2X − count), X ~ Binomial(count, 1/2): support spaced by 2·value.
        binom = _scipy_stats.binom.pmf(np.arange(count + 1), count, 0.5)
        spread = np.zeros(2 * value * count + 1)
        spread[:: 2 * value] = binom
        pmf = _scipy_signal.convolve(pmf, spread) if pmf.size > 1 else spread
    pmf = np.clip(pmf, 0.0, None)
    total = (pmf.size - 1) // 2
    grid = np.abs(np.arange(-total, total + 1))
    p = float(pmf[grid >= observed].sum() / pmf.sum())
    return min(1.0, p)


def paired_test(a_pass: Any, b_pass: Any, clusters: Any | None = None) -> tuple[float, str]:
    """(p, method): exact McNemar with one pair per cluster, the clustered McNemar (sign-flip) test otherwise.

    Pairs with a NaN are dropped; both sides must be 0/1.
    """
    (a_arr, b_arr), cl = _clean(a_pass, b_pass, clusters=clusters)
    codes = _codes(cl, a_arr.size)
    if codes.size and int(codes.max()) + 1 < codes.size:
        sums = np.bincount(codes, weights=(b_arr >= 0.5).astype(float) - (a_arr >= 0.5).astype(float))
        return sign_flip_pvalue(sums), MCNEMAR_CLUSTERED
    return mcnemar_exact(a_arr, b_arr), MCNEMAR_EXACT


def pass_at_k(n: Any, c: Any, k: int) -> np.ndarray:
    """The unbiased pass@k of each problem: 1 − C(n − c, k) / C(n, k) for n samples of which c passed.

    The estimator of Chen et al. 2021 (the Codex paper, eq. 1): the chance that k samples drawn
    without replacement from the n include a pass. NaN where k > n: pass@k is not defined by fewer
    than k samples (1.0 there, as a naive formula gives, would claim success from nothing).
    Computed through log-gamma, so n in the thousands is exact to ~1e-12.
    """
    n = np.asarray(n, dtype=float)
    c = np.asarray(c, dtype=float)
    n, c = np.broadcast_arrays(n, c)
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if np.any((c < 0) | (c > n)):
        raise ValueError("every problem needs 0 <= c <= n")
    fails = n - c
    defined = k <= n
    some_fail_set = defined & (fails >= k)  # otherwise every k-subset holds a pass
    with np.errstate(invalid="ignore", divide="ignore"):
        log_ratio = (
            _scipy_special.gammaln(fails + 1)
            - _scipy_special.gammaln(np.where(some_fail_set, fails - k, 0) + 1)
            - _scipy_special.gammaln(n + 1)
            + _scipy_special.gammaln(np.where(defined, n - k, 0) + 1)
        )
        value = np.where(some_fail_set, 1.0 - np.exp(log_ratio), 1.0)
    value = np.where(c == 0, 0.0, np.clip(value, 0.0, 1.0))  # exactly 0 when nothing passed (no round-off)
    return np.where(defined, value, np.nan)


def pass_at_k_interval(n: Any, c: Any, k: int, confidence: float = 0.95) -> Interval:
    """pass@k over problems (the mean of their ``pass_at_k``) with its interval, each problem one unit.

    Every problem must have at least k samples (the caller leaves k out otherwise). The interval
    is the cluster-adjusted Wilson interval of ``clustered_wilson_from_totals`` with each problem
    counted as M = ⌊min n / k⌋ independent k-sample trials: M disjoint groups of k samples are
    independent trials of pass@k, and the problem's estimate is at least as precise as their mean.
    For k = 1 this is the interval of the mean 0/1 score (M = n); for k = n every problem counts
    once. Like every interval here it never collapses to a point, not even when nothing passed.
    """
    n = np.asarray(n, dtype=float).ravel()
    c = np.asarray(c, dtype=float).ravel()
    if n.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "", 0, 0)
    if np.any(n < k):
        raise ValueError(f"pass@{k} needs at least {k} samples of every problem (the fewest has {int(n.min())})")
    per_problem = pass_at_k(n, c, k)
    trials = max(1, int(n.min()) // k)
    r = clustered_wilson_from_totals(per_problem * trials, np.full(per_problem.shape, float(trials)), confidence)
    return Interval(
        float(per_problem.mean()),
        float(r["low"]),
        float(r["high"]),
        PASS_AT_K,
        int(n.sum()),
        int(n.size),
        float(r["design_effect"]),
    )


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
