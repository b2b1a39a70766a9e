"""Helpers shared by the tests: run the real `sentech-eval` CLI in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "test-key-7f3a9c"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `sentech-eval ARGS…` as a user would (a fresh process), capturing stdout and stderr.

    The caller's SENTECH_API_KEY is not inherited: a test that needs a key passes it in ``env``.
    """
    full_env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "sentech_eval.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO_ROOT,
    )
