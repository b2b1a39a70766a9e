"""The default sweeper (`hydra/sweeper=basic`, sentech-eval's grid): Hydra's grid, checked once per config-group combination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import TEST_KEY, call_cli
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from sentech_eval import load_results
from sentech_eval.commands import run as run_command

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}


def test_the_console_script_runs_a_sweep_from_any_directory(echo_server, tmp_path):
    # Hydra finds sweepers by scanning the hydra_plugins namespace, which an editable install hides
    # unless the working directory is the repository: run the installed script from elsewhere.
    script = Path(sys.executable).with_name("sentech-eval")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(KEY_ENV)
    proc = subprocess.run(
        [
            str(script),
            "run",
            "-m",
            "sampling.temperature=0,0.5",
            "backend=remote",
            f"backend.base_url={echo_server}",
            "dataset=capitals",
            "dataset.limit=3",
            "runner.progress=false",
            "hydra.sweep.dir=sweep",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = load_results(tmp_path / "sweep")
    assert sorted(frame["temperature"].unique()) == [0.0, 0.5] and len(frame) == 6
    assert "GridSweeper" in (tmp_path / "sweep" / "multirun.yaml").read_text()


@pytest.mark.parametrize("option, checks", [(None, 1), ("hydra.sweeper.check_every_job=true", 4)])
def test_the_default_sweeper_composes_each_value_job_once(echo_server, tmp_path, monkeypatch, option, checks):
    composed: list[list[str]] = []
    original = ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(list(sweep_overrides))
        return original(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
    argv = [
        "-m",
        "sampling.temperature=0,0.3,0.6,0.9",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=2",
        "runner.progress=false",
        f"hydra.sweep.dir={tmp_path / 's'}",
        *([option] if option else []),
    ]
    monkeypatch.setattr(sys, "argv", ["sentech-eval"])
    assert run_command.main(argv) == 0
    # the launcher composes each of the 4 jobs to run it; before that, one check (Hydra's own: all 4)
    assert len(composed) == 4 + checks
    assert len(load_results(tmp_path / "s")) == 8


def test_a_bad_group_choice_in_a_later_job_stops_the_sweep_before_any_job_runs(echo_server, tmp_path):
    sweep_dir = tmp_path / "bad"
    proc = call_cli(
        "run",
        "-m",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals,no_such_dataset",
        "dataset.limit=2",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        key=TEST_KEY,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no_such_dataset" in proc.stderr and "Traceback" not in proc.stderr
    assert not (sweep_dir / "0" / "results.parquet").exists()  # checked before the first job, as Hydra does


def test_a_bad_value_in_a_later_job_fails_that_job_and_keeps_the_others(echo_server, tmp_path):
    sweep_dir = tmp_path / "value"
    proc = call_cli(
        "run",
        "-m",
        "sampling.temperature=0,abc",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=2",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        key=TEST_KEY,
    )
    assert proc.returncode == 2
    assert "sampling.temperature" in proc.stderr and "Traceback" not in proc.stderr
    assert len(load_results(sweep_dir)) == 2  # job 0's rows are kept and combined
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert jobs[0]["status"] == "ok"
