"""The race end-to-end tests' shared steps: run `sentech-eval run +sweep=race_temperature …`, read its winner."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cli_helpers import call_cli, run_cli

WINNER_PREFIX = "sentech-eval race: winner "


def race_args(sweep_dir: Path, *overrides: str) -> list[str]:
    """`run` arguments of the race_temperature sweep with ``overrides`` into ``sweep_dir`` (no progress bars)."""
    return ["run", "+sweep=race_temperature", *overrides, "runner.progress=false", f"hydra.sweep.dir={sweep_dir}"]


def run_race(sweep_dir: Path, *overrides: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """The race in this process (``call_cli`` keywords: ``key``, ``env``, ``cwd``); it must exit 0."""
    proc = call_cli(*race_args(sweep_dir, *overrides), **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def run_race_in_a_process(sweep_dir: Path, *overrides: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """The race in a process of its own (``run_cli`` keywords, ``timeout`` too); it must exit 0."""
    proc = run_cli(*race_args(sweep_dir, *overrides), **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def winner_line(sweep_dir: Path, proc: subprocess.CompletedProcess) -> tuple[str, dict[str, Any]]:
    """The winner line (printed once, as the last line) and race.json, checked against each other."""
    lines = proc.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith(WINNER_PREFIX), last
    assert sum(line.startswith(WINNER_PREFIX) for line in lines) == 1, "the winner is named more than once"
    assert "% of the full grid's requests" in last
    record = json.loads((sweep_dir / "race.json").read_text())
    assert record["winner"] in last and record["line"] == last
    assert record["ci_low"] <= record["mean"] <= record["ci_high"]
    assert 0 < record["spent_fraction"] <= 1
    return last, record
