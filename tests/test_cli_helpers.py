"""``call_cli`` (the CLI in the test's process) answers as ``run_cli`` (a fresh process) does, and leaves
the test's process as it found it."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
from cli_helpers import TEST_KEY, call_cli, run_cli

from sentech_eval import cli
from sentech_eval.engine import rundir


def _boom(argv: list[str], prog: str) -> int:
    raise RuntimeError("an unexpected failure")


@pytest.mark.parametrize(
    "args",
    [
        ("nope",),
        ("--help",),
        ("run", "backend=nope"),
        ("run", "backend=remote", "backend.base_url=http://127.0.0.1:9/v1", "runner.concurrency=0"),
        ("run", "backend=remote", "backend.base_url=http://127.0.0.1:9/v1"),  # no key
        ("report", "/nonexistent/run"),
    ],
)
def test_call_cli_gives_what_a_process_gives(tmp_path, args):
    args = (*args, f"hydra.run.dir={tmp_path / 'run'}") if args[0] == "run" else args
    in_process, process = call_cli(*args, key=None), run_cli(*args, key=None)
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == (
        process.returncode,
        process.stdout,
        process.stderr,
    )


def test_call_cli_puts_the_process_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", "the-callers-key")
    env, argv, cwd = dict(os.environ), list(sys.argv), os.getcwd()
    handlers, held = list(logging.getLogger().handlers), dict(rundir._held)
    run_dir = tmp_path / "run"
    result = call_cli(
        "run",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        "sampling.temperature=9",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 2 and "sampling.temperature=9 is out of range" in result.stderr
    assert "SENTECH_API_KEY is not set" not in result.stderr  # the range check comes first; the key was not passed
    assert dict(os.environ) == env and sys.argv == argv and os.getcwd() == cwd
    assert logging.getLogger().handlers == handlers
    assert rundir._held == held  # the run dir's lock is released, as the process's exit would
    rundir.lock_run_dir(run_dir)  # free again for this process
    rundir.unlock_run_dir(run_dir)


def test_the_callers_key_is_not_inherited_but_a_given_one_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", "the-callers-key")
    args = ("run", "backend=remote", "backend.base_url=http://127.0.0.1:9/v1", f"hydra.run.dir={tmp_path / 'run'}")
    assert "SENTECH_API_KEY is not set" in call_cli(*args, "runner.max_retries=0").stderr
    given = call_cli(*args, "runner.max_retries=0", "backend.timeout_s=0", key="sk-given-0123456789abcdef")
    assert "SENTECH_API_KEY is not set" not in given.stderr and given.returncode == 2


def test_an_unhandled_exception_is_a_traceback_and_exit_1(monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "boom", ("test_cli_helpers:_boom", "raises"))
    result = call_cli("boom")
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("RuntimeError: an unexpected failure")


def test_the_projects_exit_functions_run_at_the_end_of_the_call(echo_server, tmp_path):
    """A sweep that aborts between jobs is combined by its exit fallback (atexit), as when the process exits."""
    sweep_dir = tmp_path / "aborted"
    result = call_cli(
        "run",
        "-m",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals,no_such_dataset",
        "hydra.sweeper.max_batch_size=1",
        "dataset.limit=4",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        key=TEST_KEY,
    )
    assert result.returncode != 0
    assert f"sentech-eval sweep: 4 rows from 1 jobs (1 ok) -> {sweep_dir / 'results.parquet'}" in result.stderr
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "incomplete"
