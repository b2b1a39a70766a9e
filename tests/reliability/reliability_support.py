"""Helpers for the reliability suite: run the real `sentech-eval run` CLI against a real server.

Each run is the CLI (``call_cli`` in the test's process, or ``run_cli`` in a fresh one where the
process itself is tested: signals, resource limits), pointed at a server on a loopback port, with a
small backoff so retries do not slow the suite down. Results are read back from the run dir.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import CompletedProcess

import pandas as pd
from aiohttp import web
from cli_helpers import REPO_ROOT, call_cli, cli_command, cli_env, run_cli  # noqa: F401 - the suite's CLI helpers

from sentech_eval.engine.results import KEY_COLUMNS, load_results

FAST_BACKOFF = ("runner.backoff_base_s=0.01", "runner.backoff_max_s=0.2")


def new_key() -> str:
    """A distinctive random API key (easy to grep for, impossible to hit by accident)."""
    return "sk-rel-" + secrets.token_hex(16)


def files_holding(text: str, *paths: Path) -> list[Path]:
    """The files under ``paths`` whose bytes hold ``text``, as `grep -r -l -a -F TEXT PATHS` lists them."""
    needle = text.encode()
    files = (f for root in paths if root.exists() for f in (sorted(root.rglob("*")) if root.is_dir() else [root]))
    return [f for f in files if f.is_file() and not f.is_symlink() and needle in f.read_bytes()]


def remote_run_args(base_url: str, run_dir: Path, *overrides: str, dataset: str = "arithmetic") -> list[str]:
    """Overrides of a remote run into ``run_dir`` (no progress bar, fast backoff), plus ``overrides``."""
    return [
        "run",
        "backend=remote",
        f"backend.base_url={base_url}",
        f"dataset={dataset}",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
        *FAST_BACKOFF,
        *overrides,
    ]


def rows(run_dir: Path) -> pd.DataFrame:
    """Every row of a run dir."""
    return load_results(run_dir)


def assert_one_row_per_key(df: pd.DataFrame) -> None:
    """Exactly one row per (config_id, prompt_id, repeat)."""
    dup = df[df.duplicated(list(KEY_COLUMNS), keep=False)]
    assert dup.empty, f"duplicated keys:\n{dup[list(KEY_COLUMNS) + ['status', 'run_id']].head(10)}"


def assert_one_sentence(result: CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, no traceback, and one error line on stderr containing every fragment; returns the line."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@contextmanager
def app_in_thread(make_app: Callable[[], web.Application], ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve the aiohttp app ``make_app()`` on a free loopback port from a thread of its own; yields the port.

    The app is built and served on the thread's event loop; leaving the block stops it and joins the thread.
    """
    ready = threading.Event()
    holder: dict = {}

    async def main() -> None:
        try:
            runner = web.AppRunner(make_app(), access_log=None, handle_signals=False, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            holder.update(port=runner.addresses[0][1], stop=asyncio.Event(), loop=asyncio.get_running_loop())
        except BaseException as exc:
            holder["error"] = exc
            raise
        finally:
            ready.set()
        await holder["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(30), "the test server did not start within 30 s"
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["port"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
