"""Race statistics: anytime intervals (coverage by simulation) and the elimination rule."""

from __future__ import annotations

import numpy as np
import pytest

from sentech_eval.config import RaceSettings
from sentech_eval.engine.race import (
    ELIMINATED,
    WINNER,
    anytime_interval,
    race_round,
    schedule,
    simulate_race,
)


def test_schedule_grows_by_the_factor_and_ends_at_the_whole_dataset():
    assert schedule(RaceSettings(start=50, growth=2.0), 1000) == [50, 100, 200, 400, 800, 1000]
    assert schedule(RaceSettings(start=50, growth=1.5), 120) == [50, 75, 113, 120]
    assert schedule(RaceSettings(start=500), 100) == [100]


def test_settings_are_checked():
    for bad in (dict(confidence=1.0), dict(min_effect=-0.1), dict(keep=0), dict(start=0), dict(growth=1.0)):
        with pytest.raises(ValueError, match="race."):
            RaceSettings(**bad).check()


def test_interval_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    x = (rng.random(2000) < 0.7).astype(float)
    widths = []
    for n in (100, 500, 2000):
        mean, low, high = anytime_interval(x[:n])
        assert low <= mean <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # wider than a fixed-n 95 % interval (the price of looking any time), but not absurdly
    fixed = 2 * 1.96 * np.sqrt(0.21 / 2000)
    assert fixed < widths[2] < 2.5 * fixed
    assert np.isnan(anytime_interval(np.array([np.nan]))[0])
    with pytest.raises(ValueError):
        anytime_interval(np.array([0.5, 2.0]))


def test_interval_covers_the_truth_at_a_data_dependent_stopping_time():
    """Small version of benchmarks/bench_race.py's stop.coverage: stop once narrow, check coverage."""
    rng = np.random.default_rng(11)
    misses = 0
    runs = 60
    for _ in range(runs):
        x = (rng.random(3000) < 0.8).astype(float)
        n = 20
        while True:
            _, low, high = anytime_interval(x[:n])
            if high - low <= 0.12 or n >= 3000:
                break
            n = int(n * 1.1) + 1
        misses += not low <= 0.8 <= high
    assert misses <= 6  # 95 % coverage: ~3 expected misses at most, binomial slack


def test_round_eliminates_a_clearly_worse_cell_and_keeps_a_close_one():
    rng = np.random.default_rng(3)
    u = rng.random(400)
    scores = np.vstack([(u < 0.8), (u < 0.79), (u < 0.4)]).astype(float)
    result = race_round(scores, [0, 1, 2], RaceSettings(), total_cells=3, last_round=False)
    status = {c.cell: c for c in result.cells}
    assert result.leader in (0, 1)
    assert status[2].status == ELIMINATED and "worse than the leader" in status[2].reason
    assert status[2].diff_low > 0
    assert not result.finished or result.ending.startswith("tie")


def test_race_finds_the_best_cheaply_small_simulation():
    """Small version of the benchmark: 6 cells, best leads by 0.05, shared prompt difficulty."""
    truth = np.array([0.85, 0.80, 0.70, 0.60, 0.50, 0.40])
    rng = np.random.default_rng(5)
    hits, spent = 0, []
    for _ in range(20):
        u = rng.random(600)
        outcome = simulate_race((u[None, :] < truth[:, None]).astype(float), RaceSettings())
        hits += outcome.winner == 0
        spent.append(outcome.requests / (6 * 600))
        final = outcome.rounds[-1][1]
        assert [c.status for c in final.cells if c.cell == outcome.winner] == [WINNER]
    assert hits == 20
    assert np.mean(spent) < 0.6


def test_race_with_no_difference_declares_no_separated_winner():
    rng = np.random.default_rng(8)
    separated = 0
    for _ in range(15):
        outcomes = (rng.random((5, 300)) < 0.6).astype(float)
        outcome = simulate_race(outcomes, RaceSettings())
        separated += outcome.rounds[-1][1].ending == "separated"
        assert outcome.requests <= outcomes.size
    assert separated <= 1


def test_keep_stops_with_finalists():
    rng = np.random.default_rng(2)
    u = rng.random(800)
    truth = np.array([0.9, 0.85, 0.3, 0.2])
    outcome = simulate_race((u[None, :] < truth[:, None]).astype(float), RaceSettings(keep=2))
    assert sorted(outcome.finalists) == [0, 1]
    assert "finalists" in outcome.rounds[-1][1].ending
