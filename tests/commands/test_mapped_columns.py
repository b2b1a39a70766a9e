"""A dataset whose columns are mapped (``dataset.columns.id=qid dataset.columns.prompt=question``), in CSV and
JSON Lines, through every command path: run, run -m, run --estimate, a race, score and cache explain.

Every path builds its dataset from the same job spec (``config.job_spec`` → ``engine.datasets.open_dataset``):
before it, ``--estimate`` and the race read the file unmapped and stopped with "column 'id' … missing".
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli

from sentech_eval import load_results

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}
ROWS = 8


@pytest.fixture(scope="module", params=["csv", "jsonl"])
def mapped(request, tmp_path_factory, echo_server):
    """(the overrides of a remote run on a mapped-column dataset in this format, a scratch dir)."""
    d = tmp_path_factory.mktemp(f"mapped-{request.param}")
    frame = pd.DataFrame(
        {
            "qid": [f"q{i}" for i in range(ROWS)],
            "question": [f"Say {i}, please: {i}" for i in range(ROWS)],
            "answer": [str(i) for i in range(ROWS)],
        }
    )
    path = d / f"questions.{request.param}"
    if request.param == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    overrides = [
        "backend=remote",
        f"backend.base_url={echo_server}",
        f"dataset.path={path}",
        "dataset.columns.id=qid",
        "dataset.columns.prompt=question",
        "dataset.columns.reference=answer",
        "scorers=[contains]",
        "runner.progress=false",
    ]
    return overrides, d


def run(*args, cwd):
    proc = call_cli(*args, env=KEY_ENV, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_run_then_score_then_cache_explain(mapped):
    overrides, d = mapped
    run_dir = d / "run"
    cache = ["runner.cache=on", f"runner.cache_dir={d / 'cache'}"]
    run("run", *overrides, *cache, f"hydra.run.dir={run_dir}", cwd=d)
    rows = load_results(run_dir)
    assert sorted(rows["prompt_id"]) == [f"q{i}" for i in range(ROWS)] and (rows["status"] == "ok").all()
    assert rows["reference"].tolist() == [p.rsplit(" ", 1)[1] for p in rows["prompt"]]  # the mapped columns
    scored = run("score", str(run_dir), *overrides, "scorers=[exact_match]", cwd=d)
    assert "score_exact_match mean=" in scored.stdout
    assert "score_exact_match" in load_results(run_dir).columns
    explained = run("cache", "explain", str(run_dir), "q3", cwd=d)
    assert "prompt 'q3', repeat 0" in explained.stdout and "cache mode: on" in explained.stdout


def test_multirun(mapped):
    overrides, d = mapped
    sweep_dir = d / "sweep"
    run("run", "-m", *overrides, "sampling.temperature=0,0.5", f"hydra.sweep.dir={sweep_dir}", cwd=d)
    combined = load_results(sweep_dir)
    assert len(combined) == 2 * ROWS and set(combined["prompt_id"]) == {f"q{i}" for i in range(ROWS)}
    statuses = [json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/job_status.json")]
    assert statuses == ["ok", "ok"]


def test_estimate(mapped):
    overrides, d = mapped
    proc = run("run", "--estimate", *overrides, "runner.repeats=2", cwd=d)
    assert f"1 run(s), {2 * ROWS} requests" in proc.stdout


def test_race(mapped):
    overrides, d = mapped
    sweep_dir = d / "race"
    proc = run(
        "run",
        "+sweep=race_temperature",
        "sampling.top_p=0.9",  # the temperature axis only: 5 cells
        "race.start=4",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=d,
    )
    assert proc.stderr.strip().splitlines()[-1].startswith("sentech-eval race: ")
    record = json.loads((sweep_dir / "race.json").read_text())
    assert record["prompts"] == ROWS and record["requests"] > 0
