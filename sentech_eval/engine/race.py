"""The statistics of a race: anytime-valid intervals and the per-round elimination rule.

Pure functions over arrays, no I/O: the Hydra race sweeper, the runner's early stop and the
simulations in ``benchmarks/bench_race.py`` all call these.

**Intervals.** ``anytime_interval`` is the hedged-capital betting confidence sequence of
Waudby-Smith & Ramdas ("Estimating means of bounded random variables by betting", JRSS-B 2024)
for values in a known range: with probability ≥ ``confidence`` it covers the mean at *every*
sample size at once, so it may be looked at after every prompt or round, as often as one likes,
and a run may stop whenever it is narrow enough.

**The race.** Each cell's score is averaged over repeats per prompt (one value per prompt, in the
seeded random prompt order). After a round, the *leader* is the alive cell with the highest mean;
every other alive cell gets the confidence sequence of its paired difference to the leader
(leader − cell, same prompts, same repeats), two-sided at ``1 − 2α/K`` (α = 1 − confidence, K
cells): each one-sided bound errs with probability ≤ α/K — an explicit Bonferroni split over the
cells; the looks need no split, the sequences being anytime-valid. A cell is eliminated when its
difference's lower bound is above 0. What that guarantees, whatever the number of rounds:

- the true best cell is eliminated with probability ≤ (K − 1)/K · α: it is cut only if one of its
  K − 1 pairings errs on the side that would cut it;
- when the race ends because every survivor's lower bound is above ``−min_effect`` (a tie), the
  winner is within ``min_effect`` of the true best with probability ≥ 1 − α (same event);
- with no true difference, a single winner separated from all others (ending ``separated``) is
  declared with probability ≤ α: that needs K − 1 wrong eliminations, and the expected number of
  wrong eliminations is ≤ (K − 1)·α (Markov's inequality).

The race ends when ``keep`` cells are left, when the survivors are tied within ``min_effect``, or
when the prompts run out (then the leader is named, with its finalists, and no separation claim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sentech_eval.config import RaceSettings

ALIVE, ELIMINATED, WINNER = "alive", "eliminated", "winner"


def schedule(settings: RaceSettings, total: int) -> list[int]:
    """Prompt counts of the rounds: start, start·growth, … capped at ``total`` (the last is ``total``)."""
    counts: list[int] = []
    n = float(settings.start)
    while True:
        size = min(total, max(1, int(math.ceil(n))))
        if not counts or size > counts[-1]:
            counts.append(size)
        if size >= total:
            return counts
        n *= settings.growth


# ------------------------------------------------------------------------------- intervals
_SECTIONS = 15  # points tried per refinement step when locating an interval end
_REFINEMENTS = 3  # 16**3 = 4096 steps between the mean and the bound: ends located to 1/4096 of it


def _bets(y: np.ndarray, log_term: float) -> np.ndarray:
    """Predictable plug-in bet sizes (WSR 2024, eq. 26), before the per-mean cap."""
    i = np.arange(1, y.size + 1, dtype=float)
    mu_hat = (0.5 + np.cumsum(y)) / (i + 1)
    sigma2 = (0.25 + np.cumsum((y - mu_hat) ** 2)) / (i + 1)
    sigma2_prev = np.concatenate(([0.25], sigma2[:-1]))  # uses y_1..y_{i-1} only
    return np.sqrt(2.0 * log_term / (sigma2_prev * i * np.log1p(i)))


def _excluded(y: np.ndarray, bets: np.ndarray, m: np.ndarray, threshold: float, c: float) -> np.ndarray:
    """For candidate means ``m`` (in [0, 1]): did the hedged capital ever reach ``threshold``?"""
    m = np.clip(np.asarray(m, dtype=float), 1e-9, 1 - 1e-9)
    up = np.minimum(bets[:, None], c / m[None, :])
    down = np.minimum(bets[:, None], c / (1.0 - m[None, :]))
    dev = y[:, None] - m[None, :]
    capital = np.maximum(np.cumsum(np.log1p(up * dev), axis=0), np.cumsum(np.log1p(-down * dev), axis=0))
    return np.max(capital, axis=0) + math.log(0.5) >= threshold


def _end(y: np.ndarray, bets: np.ndarray, inside: float, outside: float, threshold: float, c: float) -> float:
    """The interval's end between a mean ``inside`` it and a bound ``outside``; rounded outwards."""
    for _ in range(_REFINEMENTS):
        points = outside + (inside - outside) * np.arange(1, _SECTIONS + 1) / (_SECTIONS + 1)
        kept = ~_excluded(y, bets, points, threshold, c)
        first = int(np.argmax(kept)) if kept.any() else _SECTIONS
        if first > 0:
            outside = points[first - 1]
        if first < _SECTIONS:
            inside = points[first]
    return float(outside)


def anytime_interval(
    values: np.ndarray, confidence: float = 0.95, lower: float = 0.0, upper: float = 1.0, c: float = 0.5
) -> tuple[float, float, float]:
    """(mean, low, high) of values in ``[lower, upper]``: an anytime-valid confidence interval.

    The hedged-capital betting confidence sequence (Waudby-Smith & Ramdas 2024, Thm 3, with the
    predictable plug-in bets): with probability ≥ ``confidence`` it covers the true mean at every
    sample size at once, so it may be checked after every value. It is the running intersection
    over all sample sizes (it only narrows). NaN values are skipped; no values give NaNs.
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    width = upper - lower
    if width <= 0:
        raise ValueError("upper must be greater than lower")
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if np.any(x < lower - 1e-9) or np.any(x > upper + 1e-9):
        raise ValueError(f"values must lie in [{lower}, {upper}]")
    y = np.clip((x - lower) / width, 0.0, 1.0)
    alpha = 1.0 - confidence
    threshold = math.log(1.0 / alpha)
    bets = _bets(y, math.log(2.0 / alpha))
    mean = float(y.mean())
    if _excluded(y, bets, np.array([mean]), threshold, c)[0]:
        # The running intersection moved away from the sample mean: search the whole range.
        grid = (np.arange(4096) + 0.5) / 4096
        kept = grid[~_excluded(y, bets, grid, threshold, c)]
        if kept.size == 0:
            return lower + width * mean, lower + width * mean, lower + width * mean
        low, high = float(kept.min()) - 0.5 / 4096, float(kept.max()) + 0.5 / 4096
    else:
        low = _end(y, bets, mean, 0.0, threshold, c)
        high = _end(y, bets, mean, 1.0, threshold, c)
    return lower + width * mean, lower + width * max(low, 0.0), lower + width * min(high, 1.0)


def pair_confidence(confidence: float, cells: int) -> float:
    """Two-sided confidence of one paired interval: each side errs with probability ≤ (1 − confidence)/cells."""
    return 1.0 - 2.0 * (1.0 - confidence) / max(2, cells)


# ------------------------------------------------------------------------------- one round
@dataclass
class CellRound:
    """One cell after one round: its mean with interval, its difference to the leader, its status."""

    cell: int
    n: int
    mean: float
    ci_low: float
    ci_high: float
    diff: float = math.nan  # leader − cell (NaN for the leader itself)
    diff_low: float = math.nan
    diff_high: float = math.nan
    status: str = ALIVE
    reason: str = ""


@dataclass
class RoundResult:
    """The decision after one round: per alive cell its numbers and status, and whether the race ends."""

    leader: int
    cells: list[CellRound]
    finished: bool
    ending: str = ""  # why the race ended ("" while it goes on)
    alive: list[int] = field(default_factory=list)


def race_round(
    scores: np.ndarray, alive: list[int], settings: RaceSettings, total_cells: int, last_round: bool
) -> RoundResult:
    """Decide one round. ``scores[cell, prompt]``: per-prompt mean scores in [0, 1] (NaN = none).

    Only rows of ``alive`` cells are read; they must cover the same prompts (the round's prefix of
    the seeded order). ``last_round``: the prompts are exhausted, so the race ends now.
    """
    scores = np.asarray(scores, dtype=float)
    cell_conf = 1.0 - (1.0 - settings.confidence) / max(1, total_cells)
    pair_conf = pair_confidence(settings.confidence, total_cells)
    means = {c: float(np.nanmean(scores[c])) if np.any(~np.isnan(scores[c])) else -math.inf for c in alive}
    leader = max(alive, key=lambda c: (means[c], -c))
    records: dict[int, CellRound] = {}
    for c in alive:
        mean, low, high = anytime_interval(scores[c], cell_conf)
        records[c] = CellRound(c, int(np.sum(~np.isnan(scores[c]))), mean, low, high)
    for c in alive:
        if c == leader:
            continue
        diff = scores[leader] - scores[c]
        d, low, high = anytime_interval(diff, pair_conf, -1.0, 1.0)
        rec = records[c]
        rec.diff, rec.diff_low, rec.diff_high = d, low, high
    # Eliminate cells surely worse than the leader, never below `keep` survivors (the surest first).
    losers = sorted((c for c in alive if c != leader and records[c].diff_low > 0), key=lambda c: -records[c].diff_low)
    room = max(0, len(alive) - settings.keep)
    for c in losers[:room]:
        rec = records[c]
        rec.status = ELIMINATED
        rec.reason = (
            f"worse than the leader (cell {leader}) by {rec.diff:.3f}, "
            f"interval [{rec.diff_low:.3f}, {rec.diff_high:.3f}] above 0"
        )
    survivors = [c for c in alive if records[c].status == ALIVE]
    ending = ""
    if len(survivors) <= settings.keep:
        ending = "separated" if len(survivors) == 1 else f"{len(survivors)} finalists left (race.keep)"
    elif all(records[c].diff_low > -settings.min_effect for c in survivors if c != leader):
        ending = f"tie: no survivor can beat the leader by race.min_effect={settings.min_effect}"
    elif last_round:
        ending = "prompts exhausted before the survivors separated"
    if ending:
        records[leader].status = WINNER
        for c in survivors:
            if c != leader and not records[c].reason:
                records[c].reason = (
                    "finalist"
                    if "keep" in ending
                    else "within race.min_effect of the winner"
                    if ending.startswith("tie")
                    else "not separated from the winner"
                )
        records[leader].reason = ending
    return RoundResult(leader, [records[c] for c in alive], bool(ending), ending, survivors)


@dataclass
class RaceOutcome:
    """A whole simulated race: winner, requests spent, rounds and the per-round records."""

    winner: int
    finalists: list[int]
    requests: int
    rounds: list[tuple[int, RoundResult]]


def simulate_race(outcomes: np.ndarray, settings: RaceSettings) -> RaceOutcome:
    """Run a race over a full matrix ``outcomes[cell, prompt]`` (already in the seeded order).

    Each round reads only the prefix it would have paid for; ``requests`` counts the prompts
    each cell was sent (× repeats is the caller's). Used by the simulations and tests.
    """
    settings.check()
    cells, total = outcomes.shape
    alive = list(range(cells))
    spent = np.zeros(cells, dtype=int)
    rounds: list[tuple[int, RoundResult]] = []
    counts = schedule(settings, total)
    for number, n in enumerate(counts):
        for c in alive:
            spent[c] = n
        result = race_round(outcomes[:, :n], alive, settings, cells, last_round=number == len(counts) - 1)
        rounds.append((n, result))
        alive = result.alive
        if result.finished:
            return RaceOutcome(result.leader, alive, int(spent.sum()), rounds)
    raise AssertionError("schedule ends at the whole dataset")  # pragma: no cover
