"""export/wandb.py: runs and sweeps replayed into W&B offline runs, read back from W&B's own run files.

W&B runs offline (WANDB_MODE=offline, WANDB_DIR in tmp) with its server pointed at a closed loopback
port and no API key, so nothing can leave the machine.
"""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import TEST_KEY
from wandb_records import offline_runs

from sentech_eval.cli import main as cli_main
from sentech_eval.commands.report import write_report

# wandb.init starts W&B's service (the wandb-core program) in a process of its own
pytestmark = pytest.mark.e2e


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline in tmp_path/wb; returns that dir."""
    wandb_dir = tmp_path / "wb"
    wandb_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no way out even if it tried
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    return wandb_dir


def export(path, *extra):
    return cli_main(["export", "wandb", str(path), *extra])


def test_a_sweep_is_one_run_per_configuration_in_one_group(results, offline, capsys):
    write_report(results["sweep"])
    summary = pd.read_parquet(results["sweep"] / "summary.parquet")
    assert export(results["sweep"], "--project", "evals") == 0
    assert "W&B offline" in capsys.readouterr().out

    runs = offline_runs(offline)
    assert len(runs) == len(summary) == 2
    assert len({r.run_id for r in runs}) == 2
    assert {r.group for r in runs} == {"sweep capitals remote meta-llama/Meta-Llama-3.1-8B-Instruct: temperature×2"}
    by_temperature = {float(r.config["temperature"]): r for r in runs}
    for row in summary.to_dict("records"):
        run = by_temperature[row["temperature"]]
        assert run.name.endswith(f"temperature={row['temperature']:g}")
        assert run.job_type == "configuration" and "sentech-eval" in run.tags
        assert run.config["backend"] == "remote" and run.config["config_id"] == row["config_id"]
        assert run.config["sweep.swept"] == "temperature"
        for name in ("n", "error_rate", "score_contains_mean", "score_contains_ci_low", "score_contains_ci_high"):
            assert run.summary[name] == pytest.approx(row[name], rel=1e-12, abs=0), name
        assert run.summary["rows/nrows"] == row["n"]  # the rows as a wandb.Table
        assert run.artifacts  # summary.parquet, the rows and the sweep's files


def test_a_second_export_resumes_the_same_runs_and_force_new_makes_new_ones(results, offline):
    assert export(results["run"]) == 0
    assert export(results["run"]) == 0
    runs = offline_runs(offline)
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1  # one W&B run, written twice (wandb sync merges)
    assert export(results["run"], "--force-new") == 0
    assert len({r.run_id for r in offline_runs(offline)}) == 2


def test_the_project_defaults_to_the_results_experiment_and_the_key_is_never_sent(results, offline, monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
    assert export(results["run"].parent) == 0
    runs = offline_runs(offline)
    assert len({r.run_id for r in runs}) == 3
    for path in offline.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path


def test_no_results_is_one_sentence_and_exit_2(tmp_path, offline, capsys):
    (tmp_path / "empty").mkdir()
    assert export(tmp_path / "empty") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No results under" in err
    assert not list(offline.rglob("offline-run-*"))


def test_a_server_that_does_not_answer_is_one_sentence_naming_it(results, offline, monkeypatch, capsys):
    """Online mode against a closed loopback port: W&B gives up after WANDB_INIT_TIMEOUT, the export says where."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)  # well-formed, never checked: nothing answers
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    assert export(results["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sentech-eval export: error: W&B at http://127.0.0.1:9 refused the export")
    assert err.count("\n") == 0 and "a" * 40 not in err
