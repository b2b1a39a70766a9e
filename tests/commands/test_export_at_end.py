"""runner.export: a run or a sweep exports itself when it ends; a tracker that refuses costs one warning line."""

from __future__ import annotations

import pytest
from cli_helpers import TEST_KEY, call_cli
from mlflow import MlflowClient


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """MLflow puts a SQLite store's artifacts in ./mlruns: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)


def run(echo_server, *args, env=None):
    flags = [a for a in args if a.startswith("-")]
    return call_cli(
        "run",
        *flags,
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=4",
        "scorers=[contains]",
        "runner.progress=false",
        *[a for a in args if not a.startswith("-")],
        key=TEST_KEY,
        env=env,
    )


def runs_in(uri: str, experiment: str = "capitals"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_run_exports_itself_to_the_tracker_of_the_environment(echo_server, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run(
        echo_server,
        "runner.export=mlflow",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr
    assert "sentech-eval export:" in proc.stderr
    (exported,) = runs_in(uri)
    assert exported.data.metrics["n"] == 4 and "score_contains_mean" in exported.data.metrics
    assert (tmp_path / "mlruns").is_dir()


def test_a_sweep_exports_once_as_parent_and_children(echo_server, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run(
        echo_server,
        "-m",
        "sampling.temperature=0,1",
        "runner.export=mlflow",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("sentech-eval export:") == 1  # the sweep, not each job
    runs = runs_in(uri)
    assert len(runs) == 3
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 2


def test_a_tracker_that_refuses_costs_one_warning_line_not_the_run(echo_server, tmp_path):
    proc = run(
        echo_server,
        "runner.export=mlflow",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning: export to mlflow failed" in line]
    assert len(warnings) == 1 and "http://127.0.0.1:9" in warnings[0]
    assert f"sentech-eval export mlflow {tmp_path / 'run'}" in warnings[0]
    assert (tmp_path / "run" / "results.parquet").is_file()


def test_an_unknown_tracker_is_refused_before_any_request(echo_server, tmp_path):
    proc = run(echo_server, "runner.export=neptune", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "runner.export='neptune' is not a tracker; choose one of: mlflow, wandb" in proc.stderr
    assert not (tmp_path / "run" / "results.parquet").exists()
