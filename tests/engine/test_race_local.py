"""`hydra/sweeper=race` end to end against the embedded GGUF through the real llama.cpp.

A small race (2 temperatures, 24 prompts in rounds of 8/16/24, 8 tokens) run as a user would, from
a directory outside the repository; only properties are asserted, never the model's words.
"""

from __future__ import annotations

import pandas as pd
import pytest
from race_support import run_race_in_a_process, winner_line

from sentech_eval import load_results
from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.engine.race import ALIVE, ELIMINATED, WINNER
from sentech_eval.paths import default_models_dir

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[local]')")
pytestmark = pytest.mark.local_model

MODEL = default_models_dir() / EMBEDDED_MODEL.file_name
LIMIT, START = 24, 8


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing; run `sentech-eval fetch-model`")
    work = tmp_path_factory.mktemp("race-local")
    sweep_dir = work / "sweep"
    # One llama.cpp thread: its threads spin at barriers and crawl on a busy shared machine.
    proc = run_race_in_a_process(
        sweep_dir,
        "backend=local",
        f"backend.model_path={MODEL}",
        "backend.n_threads=1",
        "backend.n_ctx=512",
        "+backend.price={per_hour: 3.6}",
        "sampling.temperature=0.0,1.2",
        "sampling.top_p=0.9",
        "sampling.max_tokens=8",
        f"dataset.limit={LIMIT}",
        f"race.start={START}",
        "race.growth=2",
        cwd=work,
        timeout=900,
    )
    return sweep_dir, proc


def test_the_race_ends_with_a_winner_named_last(race):
    sweep_dir, proc = race
    last, _ = winner_line(sweep_dir, proc)
    assert last.startswith("sentech-eval race: winner sampling.temperature=")


def test_race_parquet_has_its_rounds_and_one_winner(race):
    sweep_dir, _ = race
    table = pd.read_parquet(sweep_dir / "race.parquet")
    assert {"round", "cell", "overrides", "n", "mean", "ci_low", "ci_high", "status", "reason"} <= set(table.columns)
    assert set(table["status"]) <= {ALIVE, ELIMINATED, WINNER}
    first = table[table["round"] == 1]
    assert len(first) == 2 and (first["n"] == START).all()
    assert table["n"].max() <= LIMIT and table["n"].isin([8, 16, 24]).all()
    final = table.sort_values("round").groupby("cell").tail(1)
    assert (final["status"] == WINNER).sum() == 1
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()


def test_each_cell_sent_each_prompt_once_to_the_model(race):
    sweep_dir, _ = race
    final = pd.read_parquet(sweep_dir / "race.parquet").sort_values("round").groupby("cell").tail(1)
    for _, row in final.iterrows():
        rows = load_results(sweep_dir / f"cell_{row['cell']:02d}")
        assert len(rows) == row["n"] == rows["prompt_id"].nunique()
        assert (rows["status"] == "ok").all() and (rows["backend"] == "local").all()
        assert (rows["completion_tokens"] <= 8).all() and (rows["cost_usd"] > 0).all()


def test_the_report_has_the_race_and_the_cost(race):
    sweep_dir, _ = race
    page = (sweep_dir / "report.html").read_text()
    assert "<h2>Race</h2>" in page and 'id="race"' in page
    assert "<h2>Cost</h2>" in page and "per correct answer: contains" in page
