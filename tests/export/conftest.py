"""Real run and sweep dirs for the export tests: `sentech-eval run` (in-process) against the real echo server.

Made once per session (a sweep of two temperatures and a single run, both scored), then copied into
each test's tmp dir so no test sees another's changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import TEST_KEY, call_cli

ROWS = 6


def _run(echo_server: str, *args: str) -> None:
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    proc = call_cli(
        "run",
        *flags,
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        f"dataset.limit={ROWS}",
        "scorers=[contains]",
        "runner.progress=false",
        *overrides,
        key=TEST_KEY,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="session")
def made_results(echo_server, tmp_path_factory) -> dict[str, Path]:
    """{"sweep": a 2-temperature sweep dir, "run": a single run dir} made by the real CLI."""
    root = tmp_path_factory.mktemp("export-sources")
    _run(echo_server, "-m", "sampling.temperature=0,0.7", f"hydra.sweep.dir={root / 'sweep'}")
    _run(echo_server, "sampling.temperature=0.3", f"hydra.run.dir={root / 'run'}")
    return {"sweep": root / "sweep", "run": root / "run"}


@pytest.fixture
def results(made_results, tmp_path) -> dict[str, Path]:
    """This test's own copy of the run and sweep dirs (under tmp_path/results)."""
    copies = {}
    for name, source in made_results.items():
        copies[name] = tmp_path / "results" / name
        shutil.copytree(source, copies[name])
    return copies
