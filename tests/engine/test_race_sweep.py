"""`hydra/sweeper=race` end to end: the real CLI against `serve --engine oracle`, whose best cell is known.

The CLI runs in the test's process (``call_cli``), but under the joblib launcher (its workers are processes)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli
from race_support import run_race, run_race_in_a_process, winner_line

from sentech_eval import load_results
from sentech_eval.server.testing import running_server

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}
PROMPTS = 200


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """An oracle server answering a 300-prompt dataset, and that dataset's path."""
    d = tmp_path_factory.mktemp("race-data")
    pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(PROMPTS)],
            "prompt": [f"Question {i}: which token?" for i in range(PROMPTS)],
            "reference": [f"token{i}x" for i in range(PROMPTS)],
        }
    ).to_parquet(d / "questions.parquet")
    with running_server("oracle", api_key=TEST_KEY, datasets_dir=d) as url:
        yield url, d / "questions.parquet"


@pytest.fixture(scope="module")
def race(oracle, tmp_path_factory):
    url, dataset = oracle
    sweep_dir = tmp_path_factory.mktemp("race") / "sweep"
    # The file's temperature axis at top_p 0.9 only (5 cells, command line wins over the file): a quick race.
    proc = run_race(
        sweep_dir,
        "sampling.top_p=0.9",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        "dataset.name=questions",
        key=TEST_KEY,
    )
    return sweep_dir, proc


def test_race_names_the_true_best_cell_last(race):
    sweep_dir, proc = race
    last, record = winner_line(sweep_dir, proc)
    assert last.startswith("sentech-eval race: winner sampling.temperature=0.3: score_contains")
    assert record["winner"] == "sampling.temperature=0.3"
    assert record["spent_fraction"] < 1  # cells were cut: less than the full grid


def test_race_table_has_every_round_and_the_cuts_are_right(race):
    sweep_dir, _ = race
    table = pd.read_parquet(sweep_dir / "race.parquet")
    assert {"round", "cell", "n", "mean", "ci_low", "ci_high", "status", "reason"} <= set(table.columns)
    assert table["round"].min() == 1 and (table[table["round"] == 1]["n"] == 50).all()
    assert len(table[table["round"] == 1]) == 5
    final = table.sort_values("round").groupby("cell").tail(1)
    assert (final["status"] == "winner").sum() == 1
    cut = final[final["status"] == "eliminated"]
    assert len(cut) >= 3 and cut["reason"].str.contains("worse than the leader").all()
    # temperature 1.2 is far worse (0.485 vs 0.8): cut before the last round
    assert table[table["overrides"].str.contains("temperature=1.2")]["round"].max() < table["round"].max()


def test_no_prompt_is_sent_twice_for_a_cell_and_combined_results_hold_every_row(race):
    sweep_dir, _ = race
    table = pd.read_parquet(sweep_dir / "race.parquet")
    final = table.sort_values("round").groupby("cell").tail(1)
    for _, row in final.iterrows():
        rows = load_results(sweep_dir / f"cell_{row['cell']:02d}")
        assert len(rows) == row["n"] == rows["prompt_id"].nunique()  # each prompt exactly once
        assert rows["attempts"].max() == 1
    combined = load_results(sweep_dir)
    assert len(combined) == final["n"].sum() == json.loads((sweep_dir / "race.json").read_text())["requests"]


def test_report_has_a_race_section(race):
    sweep_dir, _ = race
    page = (sweep_dir / "report.html").read_text()
    assert "<h2>Race</h2>" in page and 'id="race"' in page and "race intervals" in page


def test_race_needs_a_score(oracle, tmp_path):
    url, dataset = oracle
    proc = call_cli(
        "run",
        "-m",
        "hydra/sweeper=race",
        "sampling.temperature=0,1",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        "runner.progress=false",
        f"hydra.sweep.dir={tmp_path / 's'}",
        key=TEST_KEY,
    )
    assert proc.returncode == 2
    assert "race.score is not set" in proc.stderr and "Traceback" not in proc.stderr
    assert "could not combine" not in proc.stderr  # the at-exit combine of the empty sweep dir works


@pytest.mark.parametrize(
    "override, sentence",
    [
        ("race.growth=1", "race.growth=1.0 must be greater than 1."),
        ("race.keep=abc", "Config key 'race.keep' must be an integer, got 'abc'."),
        ("race.kep=3", "Unknown config key 'race.kep'; the nearest valid key is 'race.keep'"),
    ],
)
def test_a_bad_race_setting_is_one_sentence(oracle, tmp_path, override, sentence):
    """race.* is checked against its schema (RaceConfig, which the race sweep file extends) and its ranges."""
    url, dataset = oracle
    proc = call_cli(
        "run",
        "+sweep=race_temperature",
        override,
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        f"hydra.sweep.dir={tmp_path / 's'}",
        key=TEST_KEY,
    )
    assert proc.returncode == 2
    assert sentence in proc.stderr
    assert "Traceback" not in proc.stderr and "could not combine" not in proc.stderr


def test_a_race_under_the_joblib_launcher_picks_the_same_winner_with_the_same_requests(race, oracle, tmp_path):
    # The sweeper only decides which cells run each round; the launcher (here two joblib workers) runs them.
    url, dataset = oracle
    sweep_dir = tmp_path / "joblib"
    proc = run_race_in_a_process(
        sweep_dir,
        "sampling.top_p=0.9",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        "dataset.name=questions",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        env=KEY_ENV,
        timeout=600,
    )
    _, parallel = winner_line(sweep_dir, proc)
    basic = json.loads((race[0] / "race.json").read_text())
    assert parallel["winner"] == basic["winner"] == "sampling.temperature=0.3"
    assert parallel["requests"] == basic["requests"]  # the oracle's answers are seeded: the same rounds and cuts
