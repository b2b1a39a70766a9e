"""Simulation suite for the statistics: do the intervals cover, do the tests hold their level?

Everything is checked against a known truth, through the same functions the product calls
(``sentech_eval.analysis.stats``; its ``*_from_totals`` functions take thousands of simulated data sets
at once, so the suite is vectorised numpy and runs in a few minutes on 2 cores):

1. **Coverage of the summary CI of a 0/1 score** for p ∈ {0.02, 0.3, 0.7, 0.95, 0.98, 0.99},
   n ∈ {20, 30, 50, 200, 1000} prompts:
   - one row per prompt (mid-p exact interval): *exact* coverage, by enumerating every possible
     count k = 0..n with its binomial probability (no Monte-Carlo error). Beside it, per setting,
     whether ANY non-randomised interval can reach 93–97 % (its coverage is a sum of binomial
     probabilities over a contiguous run of counts; ``achievable_coverages`` tries every run) and
     the nearest reachable values where none can; and the same exact coverage for six published
     intervals (Wilson, Wilson with continuity correction, Agresti–Coull, Jeffreys,
     Clopper–Pearson, mid-p) on the issue's grid and on p = 0.01..0.99, to show why mid-p is used.
     Target: in 93–97 % where reachable, ≥ 93 % where not;
   - 5 repeats per prompt with intra-prompt correlation (cluster-adjusted Wilson): each prompt's
     success probability is drawn from a Beta distribution with mean p and intra-class
     correlation ICC (0.3, and 0.8 for a second, harsher table), then 5 Bernoulli draws.
     Target 93–97 % in every setting (reported with the count of settings below 93 %).
   Never a zero-width interval.
2. **Type-I error under the null** of ``check --require-significance`` (a drop counts only when
   the paired CI of candidate − baseline lies below 0: one-sided, nominal 2.5 %) and of the
   McNemar p-value (two-sided, nominal 5 %), for (a) 100 and 30 prompts × 5 repeats and (b) sweep
   vs sweep (100 prompts × 5 temperatures, one repeat), both with prompt effects and a prompt ×
   system effect that is zero on average (exchangeable: on a given prompt one system is better on
   every row), and (c) 500 independent prompts. Target ≤ nominal + 1 %; the Monte-Carlo standard
   error is printed, and beside it what the row-level exact McNemar would have rejected.
3. **Power** for a 0.05 drop at n = 500 prompts (one row each), beside the normal-theory power of
   McNemar's test for the same discordance.

    python benchmarks/bench_stats.py            # the full suite (JSON lines + tables on stderr)
    python benchmarks/bench_stats.py --quick    # small sizes: checks that everything runs
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sentech_eval.analysis import stats  # noqa: E402

PS = (0.02, 0.3, 0.7, 0.95, 0.98, 0.99)
NS = (20, 30, 50, 200, 1000)
REPEATS = 5
ICCS = (0.3, 0.8)
COVERAGE_TARGET = (0.93, 0.97)
CONFIDENCE = 0.95
GATE_ALPHA = 0.025  # one-sided: the CI's upper bound below zero
MCNEMAR_ALPHA = 0.05
SLACK = 0.01  # type-I error may exceed its nominal level by at most this much


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(name: str, value: float | None, target: str, passed: bool | None, **extra) -> None:
    import json

    record = {
        "name": name,
        "value": None if value is None else round(float(value), 6),
        "target": target,
        "pass": passed,
    }
    record.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in extra.items()})
    print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------- coverage
# Published intervals compared on the grid (one row per prompt): name -> bounds for k = 0..n.
def _scipy_ci(method: str):
    def bounds(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        cis = [sps.binomtest(int(x), n).proportion_ci(CONFIDENCE, method=method) for x in k]
        return np.array([c.low for c in cis]), np.array([c.high for c in cis])

    return bounds


def _agresti_coull(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    z = sps.norm.ppf(0.5 + CONFIDENCE / 2)
    n_t = n + z * z
    p_t = (k + z * z / 2) / n_t
    half = z * np.sqrt(p_t * (1 - p_t) / n_t)
    return np.clip(p_t - half, 0, 1), np.clip(p_t + half, 0, 1)


def _jeffreys(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1 - CONFIDENCE
    low = np.where(k > 0, sps.beta.ppf(alpha / 2, k + 0.5, n - k + 0.5), 0.0)
    high = np.where(k < n, sps.beta.ppf(1 - alpha / 2, k + 0.5, n - k + 0.5), 1.0)
    return low, high


CANDIDATES = {  # the product uses "midp" (stats.midp_interval)
    "wilson": _scipy_ci("wilson"),
    "wilson_cc": _scipy_ci("wilsoncc"),
    "agresti_coull": _agresti_coull,
    "jeffreys": _jeffreys,
    "clopper_pearson": _scipy_ci("exact"),
    "midp": lambda k, n: stats.midp_interval(k, n, CONFIDENCE),
}
CHOSEN = "midp"


def exact_coverage(bounds: tuple[np.ndarray, np.ndarray], p: float, n: int) -> tuple[float, float]:
    """(coverage, narrowest width) of an interval with bounds for k = 0..n, by enumerating every k."""
    low, high = bounds
    weight = sps.binom.pmf(np.arange(n + 1), n, p)
    return float(np.sum(weight[(low <= p) & (p <= high)])), float(np.min(high - low))


def achievable_from_pmf(pmf: np.ndarray, band: tuple[float, float] = COVERAGE_TARGET) -> tuple[bool, float, float]:
    """Can an interval that depends on the data only through a count reach the band? (feasible, best below, best above).

    ``pmf`` is the count's distribution. An interval whose bounds rise with the count covers the
    truth for a contiguous run of counts k_lo..k_hi, so its coverage is Σ_{k_lo..k_hi} P(k). The
    band is reachable only if some contiguous run sums into it; otherwise the closest values are
    the largest run sum below it and the smallest above it.
    """
    cum = np.concatenate([[0.0], np.cumsum(pmf)])
    feasible, below, above = False, 0.0, 1.0
    for start in range(len(pmf)):
        sums = cum[start + 1 :] - cum[start]
        feasible = feasible or bool(np.any((sums >= band[0]) & (sums <= band[1])))
        under, over = sums[sums < band[0]], sums[sums > band[1]]
        below = max(below, float(under.max())) if under.size else below
        above = min(above, float(over.min())) if over.size else above
    return feasible, below, above


def achievable_coverages(p: float, n: int, band: tuple[float, float] = COVERAGE_TARGET) -> tuple[bool, float, float]:
    """Can ANY non-randomised interval reach the band at (p, n), one row per prompt? (feasible, below, above).

    With one row per prompt the data are a count k ~ Binomial(n, p), all an interval can use.
    """
    return achievable_from_pmf(sps.binom.pmf(np.arange(n + 1), n, p), band)


def achievable_coverages_repeats(
    p: float, n: int, icc: float, repeats: int = REPEATS, band: tuple[float, float] = COVERAGE_TARGET
) -> tuple[bool, float, float]:
    """The same for the total pass count of n prompts × repeats rows (a sum of n beta-binomials).

    Only for intervals that use nothing but the count: the clustered interval also uses how the
    passes fall on prompts, so this says where a count-only interval cannot reach the band.
    """
    a, b = beta_params(p, icc)
    per_prompt = sps.betabinom.pmf(np.arange(repeats + 1), repeats, a, b)
    pmf = np.ones(1)
    power, base = n, per_prompt  # pmf of the sum of n draws, by repeated squaring
    while power:
        if power & 1:
            pmf = np.convolve(pmf, base)
        base, power = np.convolve(base, base), power >> 1
    return achievable_from_pmf(np.clip(pmf, 0.0, None), band)


def status(
    coverage: float,
    feasible: bool,
    below: float,
    above: float,
    band: tuple[float, float] = COVERAGE_TARGET,
    what: str = "any non-randomised interval",
) -> str:
    """One word and the numbers: met / unreachable (nearest reachable values) / MISSED (above or below)."""
    lo, hi = band
    if feasible:
        if lo <= coverage <= hi:
            return "met"
        return f"MISSED ({'above' if coverage > hi else 'below'} the band)"
    nearest = f"nearest reachable {100 * below:.2f}% / {100 * above:.2f}%"
    if coverage >= lo:
        return f"unreachable by {what} ({nearest}); >= {100 * lo:.0f}%: met"
    return f"unreachable by {what} ({nearest}); below {100 * lo:.0f}%: MISSED"


def meets_target(coverage: float, feasible: bool, band: tuple[float, float] = COVERAGE_TARGET) -> bool:
    """In the band where some interval can reach it; at least its lower edge (93 %) where none can."""
    return band[0] <= coverage <= band[1] if feasible else coverage >= band[0]


def compare_intervals(ps, ns, feasibility: dict) -> dict[str, dict]:
    """Exact coverage of every candidate over the (p, n) settings: min, mean, in band, target met, below 93 %."""
    out = {}
    for name, fn in CANDIDATES.items():
        covs = {}
        for n in ns:
            bounds = fn(np.arange(n + 1), n)
            covs.update({(p, n): exact_coverage(bounds, p, n)[0] for p in ps})
        values = np.array(list(covs.values()))
        out[name] = {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "settings": len(values),
            "in_band": int(np.sum((values >= COVERAGE_TARGET[0]) & (values <= COVERAGE_TARGET[1]))),
            "target_met": sum(meets_target(c, feasibility[key][0]) for key, c in covs.items()),
            "below_band": int(np.sum(values < COVERAGE_TARGET[0])),
        }
    return out


def beta_params(p: float, icc: float) -> tuple[float, float]:
    """Beta(a, b) with mean p whose beta-binomial has intra-class correlation icc."""
    total = 1.0 / icc - 1.0
    return p * total, (1.0 - p) * total


# The clustered interval (several rows per prompt) with three rules for the degrees of freedom of
# its variance estimate, all else equal (cluster-adjusted Wilson at Korn & Graubard's effective n):
CLUSTER_RULES = {
    "satterthwaite": "Satterthwaite df, Var(V) from the spread of the prompts' squared residuals (used)",
    "satterthwaite_plugin": "Satterthwaite df with r⁴ for each prompt's squared variance, (Σr²)²/Σr⁴ (before)",
    "k_minus_1": "k − 1 df (Korn & Graubard 1998)",
}
CLUSTER_CHOSEN = "satterthwaite"
# --quick: settings where the full run is inside 93–97 % and a previous rule was not (the plug-in rule
# above the band at ICC 0.3; k − 1 df below it at ICC 0.8), plus one ordinary and one rare-success setting.
QUICK_REPEATS = {0.3: [(0.3, 20), (0.95, 50), (0.98, 200)], 0.8: [(0.02, 30), (0.99, 50), (0.99, 200)]}


def plugin_df(resid: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The previous rule's degrees of freedom, (Σr²)² / Σr⁴ over the prompts (NaN when every residual is 0)."""
    r2 = np.sum(np.where(present, resid**2, 0.0), axis=-1)
    r4 = np.sum(np.where(present, resid**4, 0.0), axis=-1)
    return np.where(r4 > 0, r2 * r2 / np.where(r4 > 0, r4, 1.0), np.nan)


def k_minus_1_df(resid: np.ndarray, present: np.ndarray) -> np.ndarray:
    """k − 1 degrees of freedom for k prompts (Korn & Graubard 1998)."""
    return np.sum(present, axis=-1) - 1.0


CLUSTER_DF_RULES = {
    "satterthwaite": stats.satterthwaite_df,
    "satterthwaite_plugin": plugin_df,
    "k_minus_1": k_minus_1_df,
}


def clustered_bounds(y: np.ndarray, m: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bounds of the product's clustered interval under each df rule of ``CLUSTER_RULES``."""
    out = {}
    for name in CLUSTER_RULES:
        r = stats.clustered_wilson_from_totals(y, m, CONFIDENCE, df_rule=CLUSTER_DF_RULES[name])
        out[name] = (r["low"], r["high"])
    return out


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)
_GH_W = _GH_W / _GH_W.sum()


def logit_normal_params(p: float, icc: float) -> tuple[float, float]:
    """(centre, sd) of a logit-normal prompt pass rate with mean p and intra-class correlation icc (ValueError if none)."""
    from scipy import optimize, special

    def moments(centre: float, sd: float) -> tuple[float, float]:
        q = special.expit(centre + sd * _GH_X)
        mean = float(np.sum(_GH_W * q))
        if not 0.0 < mean < 1.0:
            return mean, float("nan")
        return mean, float(np.sum(_GH_W * q * q) - mean * mean) / (mean * (1.0 - mean))

    def centre(sd: float) -> float:
        return optimize.brentq(lambda c: moments(c, sd)[0] - p, -300, 300)

    sd = optimize.brentq(lambda v: moments(centre(v), v)[1] - icc, 1e-3, 20)
    return centre(sd), sd


def prompt_pass_rates(mix: str, p: float, icc: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Each prompt's pass rate, mean p and intra-class correlation icc: Beta (``beta``) or logit-normal."""
    if mix == "beta":
        return rng.beta(*beta_params(p, icc), size=shape)
    centre, sd = logit_normal_params(p, icc)
    return 1.0 / (1.0 + np.exp(-(centre + sd * rng.standard_normal(shape))))


def simulated_coverage_repeats(
    p: float,
    n: int,
    icc: float,
    sims: int,
    rng: np.random.Generator,
    repeats: int = REPEATS,
    mix: str = "beta",
    varied: bool = False,
) -> dict[str, tuple[float, float]]:
    """{rule: (coverage, narrowest width)} of the clustered interval: n prompts × ``repeats`` rows.

    ``varied``: each prompt has 1..repeats rows (drawn once per setting) instead of ``repeats``.
    """
    m = rng.integers(1, repeats + 1, size=n).astype(float) if varied else np.full(n, float(repeats))
    hits = dict.fromkeys(CLUSTER_RULES, 0)
    narrowest = dict.fromkeys(CLUSTER_RULES, np.inf)
    block = max(1, 2_000_000 // n)
    for start in range(0, sims, block):
        size = min(block, sims - start)
        y = rng.binomial(m.astype(int), prompt_pass_rates(mix, p, icc, (size, n), rng)).astype(float)
        for rule, (low, high) in clustered_bounds(y, m).items():
            hits[rule] += int(np.sum((low <= p) & (p <= high)))
            narrowest[rule] = min(narrowest[rule], float(np.min(high - low)))
    return {rule: (hits[rule] / sims, narrowest[rule]) for rule in CLUSTER_RULES}


def fine_grid_settings(quick: bool) -> list[tuple[str, int, float, float, int, bool]]:
    """(mix, repeats, icc, p, n, varied) settings beyond the issue's grid: is the clustered interval overfitted to it?"""
    if quick:
        return [("beta", r, 0.5, p, 20, False) for r in (3, 10) for p in (0.05, 0.97)]
    grid = [
        ("beta", r, icc, p, n, False)
        for r in (3, 5, 10)
        for icc in (0.1, 0.3, 0.5, 0.8)
        for p in (0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.97)
        for n in (20, 40, 100, 500)
    ]
    others = (0.02, 0.1, 0.3, 0.7, 0.95, 0.99)
    grid += [("logit-normal", 5, icc, p, n, False) for icc in (0.1, 0.3, 0.5) for p in others for n in (20, 50, 200)]
    grid += [("beta", 5, icc, p, n, True) for icc in (0.1, 0.3, 0.8) for p in others for n in (20, 50, 200)]
    return grid


def summarise(values: list[float]) -> dict:
    """min, max, settings in 93–97 %, below 93 %, above 97 %."""
    arr = np.array(values)
    lo, hi = COVERAGE_TARGET
    return {
        "settings": int(arr.size),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "in_band": int(np.sum((arr >= lo) & (arr <= hi))),
        "below_band": int(np.sum(arr < lo)),
        "above_band": int(np.sum(arr > hi)),
    }


# ------------------------------------------------------------------------------- null and power
@dataclass
class PairedSims:
    """Simulated paired 0/1 outcomes as per-prompt totals: shape (sims, prompts)."""

    ya: np.ndarray  # baseline successes per prompt
    yb: np.ndarray  # candidate successes per prompt
    m: np.ndarray  # rows per prompt (prompts,)
    label: str
    discordant: tuple[np.ndarray, np.ndarray] | None = None  # row-level (A only, B only) counts per data set


def _row_level(a_rows: np.ndarray, b_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-level discordant counts (A passed and B failed; the reverse) per data set."""
    axes = tuple(range(1, a_rows.ndim))
    return np.sum(a_rows & ~b_rows, axis=axes), np.sum(~a_rows & b_rows, axis=axes)


def row_level_mcnemar_rejections(discordant: tuple[np.ndarray, np.ndarray], alpha: float = MCNEMAR_ALPHA) -> float:
    """How often the exact McNemar test on rows (every row counted as an independent pair) rejects."""
    n10, n01 = discordant
    n = n10 + n01
    p = np.where(n > 0, np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(n10, n01), np.maximum(n, 1), 0.5)), 1.0)
    return float(np.mean(p < alpha))


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def null_repeats(
    sims: int, prompts: int, rng: np.random.Generator, repeats: int = REPEATS, interaction: float = 1.0
) -> PairedSims:
    """Exchangeable null with repeats: each prompt has a difficulty u and a system effect ±v.

    logit P(pass) = u + v for A and u − v for B, v ~ N(0, interaction²) symmetric: neither system
    is better on average, but on a given prompt one of them is, on every repeat. Rows of one
    prompt are therefore correlated in the direction of their disagreement (what a row-level test
    mistakes for evidence).
    """
    u = rng.normal(0.9, 1.0, size=(sims, prompts, 1))
    v = rng.normal(0.0, interaction, size=(sims, prompts, 1))
    a_rows = rng.random((sims, prompts, repeats)) < _expit(u + v)
    b_rows = rng.random((sims, prompts, repeats)) < _expit(u - v)
    return PairedSims(
        a_rows.sum(axis=-1).astype(float),
        b_rows.sum(axis=-1).astype(float),
        np.full(prompts, float(repeats)),
        f"{prompts} prompts × {repeats} repeats (prompt × system effect sd {interaction:g})",
        _row_level(a_rows, b_rows),
    )


def null_sweep(
    sims: int, prompts: int, rng: np.random.Generator, temperatures: int = 5, interaction: float = 1.0
) -> PairedSims:
    """Sweep vs sweep: prompt × temperature pairs, one repeat, prompt and prompt × system effects."""
    u = rng.normal(0.4, 1.5, size=(sims, prompts, 1))  # prompt difficulty (logit)
    v = rng.normal(0.0, interaction, size=(sims, prompts, 1))  # which system this prompt favours
    beta = np.linspace(-0.5, 0.5, temperatures)[None, None, :]  # temperature effect
    a_rows = rng.random((sims, prompts, temperatures)) < _expit(u + beta + v)
    b_rows = rng.random((sims, prompts, temperatures)) < _expit(u + beta - v)
    return PairedSims(
        a_rows.sum(axis=-1).astype(float),
        b_rows.sum(axis=-1).astype(float),
        np.full(prompts, float(temperatures)),
        f"sweep vs sweep: {prompts} prompts × {temperatures} temperatures",
        _row_level(a_rows, b_rows),
    )


def paired_independent(
    sims: int, prompts: int, rng: np.random.Generator, p: float = 0.7, drop: float = 0.0, flip_up: float = 0.10
) -> tuple[PairedSims, float]:
    """One row per prompt; the candidate loses ``drop`` of the pass rate (0 = the null).

    The baseline passes with probability p; the candidate keeps a pass with probability 1 − f
    and turns a fail into a pass with probability ``flip_up``, f chosen so that its pass rate is
    p − drop. Returns the data and the discordance probability (for the theoretical power).
    """
    f = (drop + (1.0 - p) * flip_up) / p
    a_pass = rng.random((sims, prompts)) < p
    u = rng.random((sims, prompts))
    b_pass = np.where(a_pass, u >= f, u < flip_up)
    discordance = p * f + (1.0 - p) * flip_up
    label = f"{prompts} independent prompts" + (f", drop {drop:g}" if drop else "")
    return PairedSims(a_pass.astype(float), b_pass.astype(float), np.ones(prompts), label), discordance


def gate_and_mcnemar(sims: PairedSims) -> dict[str, float]:
    """Rejection rates of the gate (CI upper bound < 0) and of the McNemar-type test (p < 0.05)."""
    ci = stats.newcombe_from_totals(sims.ya, sims.yb, sims.m, CONFIDENCE)
    gate = ci["high"] < 0
    clustered = bool(np.max(sims.m) > 1)
    pvals = np.empty(sims.ya.shape[0])
    for i in range(sims.ya.shape[0]):
        diffs = sims.yb[i] - sims.ya[i]
        if clustered:
            pvals[i] = stats.sign_flip_pvalue(diffs)
        else:
            pvals[i] = stats.mcnemar_exact(sims.ya[i], sims.yb[i])
    reject = pvals < MCNEMAR_ALPHA
    excludes = (ci["low"] > 0) | (ci["high"] < 0)
    return {
        "gate": float(gate.mean()),
        "mcnemar": float(reject.mean()),
        "disagree": float(np.mean(excludes != reject)),
        "zero_width": int(np.sum(ci["high"] - ci["low"] <= 0)),
    }


def mc_se(rate: float, sims: int) -> float:
    return math.sqrt(max(rate * (1.0 - rate), 1e-12) / sims)


def mcnemar_theory_power(drop: float, discordance: float, n: int, alpha: float = MCNEMAR_ALPHA) -> float:
    """Normal-theory power of McNemar's test (Connor 1987) for a drop with this discordance."""
    z = sps.norm.ppf(1 - alpha / 2)
    return float(
        sps.norm.cdf((abs(drop) * math.sqrt(n) - z * math.sqrt(discordance)) / math.sqrt(discordance - drop * drop))
    )


# ------------------------------------------------------------------------------------------ main
def run(quick: bool, seed: int = 20261126) -> list[dict]:
    """Run the suite; returns one dict per printed measurement."""
    rng = np.random.default_rng(seed)
    results: list[dict] = []
    ns = (20, 50) if quick else NS
    ps = (0.02, 0.7, 0.99) if quick else PS
    cover_sims = 1000 if quick else 4000
    fine_sims = 300 if quick else 2000
    null_sims = 600 if quick else 4000
    lo, hi = COVERAGE_TARGET

    def record(name, value, target, passed, **extra):
        results.append({"name": name, "value": value, "target": target, "pass": passed, **extra})
        emit(name, value, target, passed, **extra)

    # 1. coverage --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    # 1a. one row per prompt: exact coverage, what any interval could reach, the published intervals.
    feasibility = {(p, n): achievable_coverages(p, n) for p in ps for n in ns}
    chosen = {n: CANDIDATES[CHOSEN](np.arange(n + 1), n) for n in ns}
    cov1 = {(p, n): exact_coverage(chosen[n], p, n) for p in ps for n in ns}
    log(
        f"\ncoverage of the 95% summary CI, 1 row per prompt ({CHOSEN}, exact), and what any non-randomised "
        f"interval can reach"
    )
    log(f"{'p':>5} {'n':>5} {'coverage':>9}  target ({lo:.0%}–{hi:.0%} where reachable, >= {lo:.0%} where not)")
    for (p, n), (cov, _) in cov1.items():
        log(f"{p:>5g} {n:>5d} {100 * cov:8.2f}%  {status(cov, *feasibility[(p, n)])}")
    values = [v[0] for v in cov1.values()]
    met = [meets_target(c, feasibility[setting][0]) for setting, (c, _) in cov1.items()]
    reachable = [setting for setting, f in feasibility.items() if f[0]]
    met_reachable = sum(meets_target(cov1[setting][0], True) for setting in reachable)
    unreachable = len(feasibility) - len(reachable)
    log(
        f"target met where reachable: {met_reachable}/{len(reachable)}; unreachable by any non-randomised interval: "
        f"{unreachable} (of which >= {lo:.0%}: {sum(m for (s_, m) in zip(cov1, met) if not feasibility[s_][0])})"
    )
    fine_ps = tuple(np.round(np.arange(0.05 if quick else 0.01, 1.0, 0.05 if quick else 0.01), 2))
    fine_feasibility = {(p, n): achievable_coverages(p, n) for p in fine_ps for n in ns}
    for grid_name, grid_ps, feas in (
        ("issue grid", ps, feasibility),
        (f"fine grid p = {fine_ps[0]:g}..{fine_ps[-1]:g}", fine_ps, fine_feasibility),
    ):
        table = compare_intervals(grid_ps, ns, feas)
        log(
            f"\npublished intervals, 1 row per prompt, {grid_name} ({len(grid_ps) * len(ns)} settings; "
            f"{sum(not f[0] for f in feas.values())} where no interval can reach 93–97%):"
        )
        log(f"{'interval':>16} {'min':>7} {'mean':>7} {'in 93–97%':>10} {'below 93%':>10} {'target met':>11}")
        for name, row in table.items():
            log(
                f"{name:>16} {100 * row['min']:6.2f}% {100 * row['mean']:6.2f}% {row['in_band']:>10d} "
                f"{row['below_band']:>10d} {row['target_met']:>7d}/{row['settings']}"
                + ("   <- used" if name == CHOSEN else "")
            )
        key = "issue_grid" if grid_name == "issue grid" else "fine_grid"
        record(
            f"stats.interval_comparison_{key}",
            table[CHOSEN]["min"],
            "reported (the chosen interval's minimum)",
            None,
            candidates=table,
            chosen=CHOSEN,
        )
    record(
        "stats.coverage_one_row_min",
        min(values),
        f"{lo:.0%}–{hi:.0%} where reachable, >= {lo:.0%} where no interval can reach the band",
        all(met),
        max=max(values),
        settings_in_target=sum(met),
        settings_in_band=sum(lo <= v <= hi for v in values),
        settings_reachable=len(reachable),
        settings_met_where_reachable=met_reachable,
        settings_band_unreachable=unreachable,
        settings=len(values),
        missed=[f"p={p:g} n={n}: {100 * cov1[(p, n)][0]:.2f}%" for (p, n), m in zip(cov1, met) if not m],
        monte_carlo_se=0.0,
        title=f"1 row per prompt ({CHOSEN}, exact)",
    )
    record(
        "stats.zero_width_intervals_one_row",
        float(min(v[1] for v in cov1.values())),
        "narrowest width > 0",
        min(v[1] for v in cov1.values()) > 0,
    )

    # 1b. repeats: simulation (no exact enumeration), the df rules of the clustered interval side by side.
    se_cover = mc_se(0.95, cover_sims)
    for icc in ICCS:
        key = f"repeats_icc_{icc:g}"
        settings = QUICK_REPEATS[icc] if quick else [(p, n) for p in ps for n in ns]
        table = {(p, n): simulated_coverage_repeats(p, n, icc, cover_sims, rng) for p, n in settings}
        reach = {(p, n): achievable_coverages_repeats(p, n, icc) for p, n in settings}
        log(
            f"\ncoverage of the 95% summary CI, {REPEATS} repeats, ICC {icc} (cluster-adjusted Wilson, "
            f"{cover_sims} sims, s.e. {100 * se_cover:.2f}%)"
        )
        log(f"{'p':>5} {'n':>5} {'coverage':>9}  target ({lo:.0%}–{hi:.0%})")
        for (p, n), by_rule in table.items():
            cov = by_rule[CLUSTER_CHOSEN][0]
            feasible, below, above = reach[(p, n)]
            word = status(cov, True, below, above)
            if not feasible:
                word += (
                    f"; no interval using only the pass count can reach the band (nearest {100 * below:.2f}% / "
                    f"{100 * above:.2f}%)"
                )
            log(f"{p:>5g} {n:>5d} {100 * cov:8.2f}%  {word}")
        rules = {rule: summarise([v[rule][0] for v in table.values()]) for rule in CLUSTER_RULES}
        log(f"the clustered interval's degrees of freedom, {len(table)} settings:")
        log(f"{'rule':>22} {'min':>7} {'max':>7} {'in 93–97%':>10} {'below 93%':>10}")
        for rule, row in rules.items():
            log(
                f"{rule:>22} {100 * row['min']:6.2f}% {100 * row['max']:6.2f}% {row['in_band']:>10d} "
                f"{row['below_band']:>10d}   {CLUSTER_RULES[rule]}"
            )
        values = [v[CLUSTER_CHOSEN][0] for v in table.values()]
        widths = [v[CLUSTER_CHOSEN][1] for v in table.values()]
        inside = sum(lo <= v <= hi for v in values)
        log(
            f"target met: {inside}/{len(values)} (below {lo:.0%}: {sum(v < lo for v in values)}, above {hi:.0%}: "
            f"{sum(v > hi for v in values)}); band unreachable by a count-only interval: "
            f"{sum(not f[0] for f in reach.values())}"
        )
        record(
            f"stats.coverage_{key}_min",
            min(values),
            f"{lo:.0%}–{hi:.0%} in every setting",
            all(lo <= v <= hi for v in values),
            max=max(values),
            settings_in_target=inside,
            settings_below_band=sum(v < lo for v in values),
            settings_above_band=sum(v > hi for v in values),
            settings_count_unreachable=sum(not f[0] for f in reach.values()),
            settings=len(values),
            monte_carlo_se=se_cover,
            rules=rules,
            chosen=CLUSTER_CHOSEN,
            missed=[
                f"p={p:g} n={n}: {100 * v[CLUSTER_CHOSEN][0]:.1f}%"
                for (p, n), v in table.items()
                if not lo <= v[CLUSTER_CHOSEN][0] <= hi
            ],
            title=f"{REPEATS} repeats, ICC {icc} (cluster-adjusted Wilson, {cover_sims} sims)",
        )
        record(f"stats.zero_width_intervals_{key}", float(min(widths)), "narrowest width > 0", min(widths) > 0)

    # 1c. beyond the grid: 3/5/10 repeats, ICC 0.1–0.8, other p and n, logit-normal prompts, unequal rows.
    fine = {}
    for setting in fine_grid_settings(quick):
        mix, repeats, icc, p, n, varied = setting
        try:
            fine[setting] = simulated_coverage_repeats(
                p, n, icc, fine_sims, rng, repeats=repeats, mix=mix, varied=varied
            )
        except ValueError:  # no logit-normal with this mean and ICC
            continue
    se_fine = mc_se(0.95, fine_sims)
    log(f"\ncoverage beyond the issue's grid ({len(fine)} settings, {fine_sims} sims each, s.e. {100 * se_fine:.2f}%):")
    log(f"{'settings':>44} {'rule':>22} {'min':>7} {'max':>7} {'in 93–97%':>10} {'below 93%':>10}")
    families = {}
    for setting in fine:
        mix, repeats, _, _, _, varied = setting
        families.setdefault(f"{mix}, {'1–' if varied else ''}{repeats} rows per prompt", []).append(setting)
    fine_rules = {}
    for family, settings in list(families.items()) + [("all", list(fine))]:
        for rule in CLUSTER_RULES:
            row = summarise([fine[s_][rule][0] for s_ in settings])
            if family == "all":
                fine_rules[rule] = row
            log(
                f"{family:>44} {rule:>22} {100 * row['min']:6.2f}% {100 * row['max']:6.2f}% "
                f"{row['in_band']:>6d}/{row['settings']:<3d} {row['below_band']:>10d}"
            )
    low_settings = [
        f"{mix} {'1–' if varied else ''}{r} rows ICC {icc:g} p={p:g} n={n}: {100 * v[CLUSTER_CHOSEN][0]:.1f}%"
        for (mix, r, icc, p, n, varied), v in fine.items()
        if v[CLUSTER_CHOSEN][0] < lo
    ]
    log("below 93% (used rule): " + ("; ".join(low_settings) or "none"))
    chosen_fine = fine_rules[CLUSTER_CHOSEN]
    record(
        "stats.coverage_repeats_fine_grid_min",
        chosen_fine["min"],
        f"none below {lo:.0%} (2 Monte-Carlo s.e. allowed); in {lo:.0%}–{hi:.0%} reported",
        chosen_fine["min"] >= lo - 2 * se_fine,
        settings=chosen_fine["settings"],
        settings_in_target=chosen_fine["in_band"],
        settings_below_band=chosen_fine["below_band"],
        monte_carlo_se=se_fine,
        rules=fine_rules,
        chosen=CLUSTER_CHOSEN,
        below=low_settings,
    )
    log(f"[stats] coverage computed in {time.perf_counter() - t0:.1f} s")

    # 2. type-I error ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    prompts = 100
    scenarios = [
        ("repeats", null_repeats(null_sims, prompts, rng)),
        ("sweep", null_sweep(null_sims, prompts, rng)),
        ("independent", paired_independent(null_sims, 100 if quick else 500, rng)[0]),
    ]
    if not quick:  # few prompts: the clustered interval's degrees of freedom matter
        scenarios.insert(1, ("repeats_30_prompts", null_repeats(null_sims, 30, rng)))
    for key, sims in scenarios:
        rates = gate_and_mcnemar(sims)
        before = row_level_mcnemar_rejections(sims.discordant) if sims.discordant is not None else None
        log(
            f"\nnull, {sims.label}: check --require-significance flags {100 * rates['gate']:.2f}% "
            f"(nominal 2.5%), McNemar p < 0.05 in {100 * rates['mcnemar']:.2f}% (nominal 5%), "
            f"CI and p disagree in {100 * rates['disagree']:.2f}%"
            + (
                f"; the row-level exact McNemar (rows as independent pairs) would reject in {100 * before:.2f}%"
                if before is not None
                else ""
            )
        )
        record(
            f"stats.type1_check_{key}",
            rates["gate"],
            f"<= {GATE_ALPHA + SLACK:.3f}",
            rates["gate"] <= GATE_ALPHA + SLACK,
            monte_carlo_se=mc_se(rates["gate"], null_sims),
            sims=null_sims,
            scenario=sims.label,
        )
        record(
            f"stats.type1_mcnemar_{key}",
            rates["mcnemar"],
            f"<= {MCNEMAR_ALPHA + SLACK:.3f}",
            rates["mcnemar"] <= MCNEMAR_ALPHA + SLACK,
            monte_carlo_se=mc_se(rates["mcnemar"], null_sims),
            sims=null_sims,
            scenario=sims.label,
            ci_p_disagreement=rates["disagree"],
            row_level_mcnemar_type1=before,
        )
    # 3. power ----------------------------------------------------------------------------------
    n_power = 500
    sims, discordance = paired_independent(null_sims, n_power, rng, drop=0.05)
    rates = gate_and_mcnemar(sims)
    theory = mcnemar_theory_power(0.05, discordance, n_power)
    log(
        f"\npower, {sims.label} (p 0.70 → 0.65, discordance {discordance:.3f}): gate {100 * rates['gate']:.1f}%, "
        f"McNemar {100 * rates['mcnemar']:.1f}% (theory {100 * theory:.1f}%)"
    )
    record(
        "stats.power_check_drop_0.05_n500",
        rates["gate"],
        "reported (theory beside)",
        None,
        mcnemar=rates["mcnemar"],
        theory_mcnemar=theory,
        monte_carlo_se=mc_se(rates["gate"], null_sims),
    )
    log(f"[stats] tests computed in {time.perf_counter() - t0:.1f} s")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (checks that everything runs)")
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    started = time.perf_counter()
    run(args.quick, args.seed)
    log(f"[stats] done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
