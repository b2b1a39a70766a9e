"""Racing sweeps and early stopping, checked by simulation against known truth.

Library level (``sentech_eval.engine.race``), seeded, no server. Three measurements:

- ``race.*``: a 15-cell grid (sampling.temperature 0, 0.3, 0.6, 0.9, 1.2 × top_p 0.8, 0.9, 1.0)
  whose true accuracies are those of ``serve --engine oracle`` (best 0.80, second 0.77: a 0.03
  lead), 1,000 prompts. Outcomes are drawn per prompt with a latent prompt difficulty shared by
  the cells (Gaussian copula, correlation ``rho``): rho = 1 is the oracle engine itself (one draw
  per prompt and seed), 0.8 a model whose easy prompts are easy at every setting, 0 independent
  cells (the worst case for pairing). Target at the default settings and rho = 0.8: the race
  names the true best or a cell within ``race.min_effect`` in ≥ 95 % of races and spends ≤ 35 % of
  the full grid's requests. The full grid's own hit rate on the same data is printed beside it.
- ``race.null_*``: 15 cells with the same accuracy: how often a race declares a winner separated
  from every other cell (a false winner) — at most 1 − confidence = 5 %; beside it, how often any
  single cell was cut (each cut is wrong with probability ≤ α per cell, not per race).
- ``stop.coverage``: one run stopped at ``runner.stop_at_ci_half_width``: how often the interval
  at the stopping time covers the true mean — at least the stated 95 %.

    python benchmarks/bench_race.py            # 300 races per scenario, 200 stopped runs per mean
    python benchmarks/bench_race.py --quick    # a few races: checks that it runs
"""

from __future__ import annotations

import sys
import time

import numpy as np
from common import arg_parser, emit, log
from scipy.stats import binomtest, norm

from sentech_eval.config import RaceSettings
from sentech_eval.engine.race import anytime_interval, simulate_race
from sentech_eval.server.engines import oracle_accuracy

TEMPERATURES = (0.0, 0.3, 0.6, 0.9, 1.2)
TOP_PS = (0.8, 0.9, 1.0)
PROMPTS = 1000


def grid_truth() -> np.ndarray:
    """True accuracy of each of the 15 cells: the oracle engine's formula."""
    return np.array([oracle_accuracy(temperature=t, top_p=p) for t in TEMPERATURES for p in TOP_PS])


def draw(truth: np.ndarray, prompts: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """0/1 outcomes[cell, prompt]: cell c is right on prompt i when its uniform draw is below truth[c]."""
    shared = rng.standard_normal(prompts)
    own = rng.standard_normal((truth.size, prompts))
    u = norm.cdf(rho * shared + np.sqrt(1.0 - rho * rho) * own)
    return (u < truth[:, None]).astype(float)


def race_scenario(truth: np.ndarray, races: int, rho: float, settings: RaceSettings, seed: int) -> dict:
    """Hit rate, requests spent (fraction of the full grid) and the full grid's own hit rate."""
    rng = np.random.default_rng(seed)
    best = truth.max()
    hits = grid_hits = eliminated_any = separated = 0
    spent = []
    for _ in range(races):
        outcomes = draw(truth, PROMPTS, rho, rng)
        outcome = simulate_race(outcomes, settings)
        hits += truth[outcome.winner] >= best - settings.min_effect
        grid_hits += truth[int(np.argmax(outcomes.mean(axis=1)))] >= best - settings.min_effect
        eliminated_any += any(c.status == "eliminated" for _, r in outcome.rounds for c in r.cells)
        separated += outcome.rounds[-1][1].ending == "separated"
        spent.append(outcome.requests / outcomes.size)
    return {
        "hit_rate": float(hits / races),
        "grid_hit_rate": float(grid_hits / races),
        "spent_mean": float(np.mean(spent)),
        "spent_p95": float(np.quantile(spent, 0.95)),
        "any_elimination_rate": eliminated_any / races,
        "separated_rate": separated / races,
        "races": races,
        "rho": rho,
    }


def stop_coverage(
    mean: float, runs: int, half_width: float, confidence: float, seed: int, max_prompts: int = 20_000
) -> dict:
    """Runs of Bernoulli(mean) scores, each stopped once the anytime interval is ``half_width`` narrow."""
    rng = np.random.default_rng(seed)
    covered = 0
    sizes = []
    for _ in range(runs):
        x = (rng.random(max_prompts) < mean).astype(float)
        n = 20
        while True:  # checked at growing sizes (anytime-valid: any checking schedule is allowed)
            _, low, high = anytime_interval(x[:n], confidence)
            if (high - low) / 2 <= half_width or n >= max_prompts:
                break
            n = min(max_prompts, int(n * 1.05) + 1)
        covered += low <= mean <= high
        sizes.append(n)
    return {"coverage": covered / runs, "runs": runs, "median_n": float(np.median(sizes)), "mean": mean}


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=300)
    args = parser.parse_args()
    races = 10 if args.quick else args.races
    runs = 10 if args.quick else 200
    settings = RaceSettings()
    truth = grid_truth()
    log(f"truth: {np.round(np.sort(truth)[::-1], 3).tolist()}; settings {settings}")

    started = time.monotonic()
    main_case = race_scenario(truth, races, 0.8, settings, seed=1)
    log(f"rho 0.8: {main_case} ({time.monotonic() - started:.0f} s)")
    emit(
        "race.hit_rate",
        main_case["hit_rate"],
        ">= 0.95",
        None if args.quick else main_case["hit_rate"] >= 0.95,
        quick=args.quick,
        **main_case,
    )
    emit(
        "race.spent_fraction",
        main_case["spent_mean"],
        "<= 0.35",
        None if args.quick else main_case["spent_mean"] <= 0.35,
        quick=args.quick,
        **main_case,
    )
    for rho in (1.0, 0.0):
        case = race_scenario(truth, max(races // 3, 5), rho, settings, seed=2)
        log(f"rho {rho}: {case}")
        emit(f"race.rho_{rho:g}.hit_rate", case["hit_rate"], "info", None, quick=args.quick, **case)
        emit(f"race.rho_{rho:g}.spent_fraction", case["spent_mean"], "info", None, quick=args.quick, **case)

    null = race_scenario(np.full(truth.size, 0.7), races, 0.8, settings, seed=3)
    log(f"null: {null}")
    alpha = 1 - settings.confidence
    emit(
        "race.null_false_winner_rate",
        null["separated_rate"],
        f"<= {alpha:g}",
        None if args.quick else null["separated_rate"] <= alpha,
        quick=args.quick,
        **null,
    )
    emit("race.null_any_elimination_rate", null["any_elimination_rate"], "info", None, quick=args.quick, **null)

    half_width = 0.05 if args.quick else 0.03
    worst = 1.0
    details = {}
    for mean in (0.5, 0.8, 0.95):
        result = stop_coverage(mean, runs, half_width, 0.95, seed=int(mean * 100))
        log(f"stop at half-width {half_width}, mean {mean}: {result}")
        details[str(mean)] = result
        worst = min(worst, result["coverage"])
    # Judged as a simulation must be: fail only if the misses are significantly above 5 % (one-sided
    # binomial test at 0.05), since 200 runs put a Monte Carlo error of ±1.5 % on each coverage.
    fewest = min(details.values(), key=lambda r: r["coverage"])
    misses = round((1 - fewest["coverage"]) * fewest["runs"])
    p_value = float(binomtest(misses, fewest["runs"], 0.05, alternative="greater").pvalue)
    emit(
        "stop.coverage",
        worst,
        ">= 0.95 (misses not significantly above 5 %)",
        None if args.quick else p_value >= 0.05,
        half_width=half_width,
        per_mean=details,
        misses_p_value=p_value,
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
