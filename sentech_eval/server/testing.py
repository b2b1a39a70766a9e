"""A real `sentech-eval serve` on a free loopback port, for tests and benchmark scripts.

    with running_server(engine="echo", api_key="k", error_rate=0.3, error_status=503) as base_url:
        ...  # base_url == "http://127.0.0.1:PORT/v1"; the key is "k"

By default the server runs in a background thread with its own event loop (fast to start, same
code path as the CLI minus flag parsing: the ServeConfig comes from ``ServeConfig.from_values``, as the CLI's). ``subprocess=True`` (implied by ``workers > 1``)
runs the real CLI, ``python -m sentech_eval.cli serve --port 0 ...``, and reads the port from
the line it prints; use that for throughput measurements so client and server do not share a GIL.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess as sp
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentech_eval.paths import REPO_ROOT
from sentech_eval.server.app import start_site
from sentech_eval.server.serving import ServeConfig

LISTENING = re.compile(r"listening on (http://\S+/v1)")
KEY_ENV = "SENTECH_EVAL_TEST_SERVER_KEY"

# the options of these servers: every `serve` value (``latency_ms`` for ``--latency-ms`` …) but the
# listening address they fix and the engine they take apart
OPTION_NAMES = tuple(name for name in ServeConfig.value_names() if name not in ("host", "port", "engine"))


def _check_names(options: dict[str, Any]) -> None:
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown server option(s): {', '.join(sorted(unknown))}; known: {', '.join(OPTION_NAMES)}")


def serve_args(engine: str, options: dict[str, Any]) -> list[str]:
    """The `sentech-eval serve` flags for keyword options named like the CLI flags, on a free loopback port."""
    _check_names(options)
    args = ["--host", "127.0.0.1", "--port", "0", "--engine", engine]
    for name, value in options.items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args


def make_config(engine: str = "echo", api_key: str | None = "k", **options: Any) -> ServeConfig:
    """A checked ``ServeConfig`` on 127.0.0.1 port 0 for keyword options named like the `serve` flags.

    ``api_key`` may hold several comma-separated keys; ``None`` or ``""`` serves without auth.
    Built by ``ServeConfig.from_values`` as `serve` builds it (no flag parsing); it refuses what the CLI refuses.
    """
    _check_names(options)
    keys = tuple(k.strip() for k in api_key.split(",") if k.strip()) if api_key else ()
    values = {**options, "host": "127.0.0.1", "port": 0, "engine": engine}
    return ServeConfig.from_values(values, api_keys=keys, no_auth=not keys)


@contextmanager
def running_server(
    engine: str = "echo", api_key: str | None = "k", *, subprocess: bool = False, **options: Any
) -> Iterator[str]:
    """Run a server for the duration of the block and yield its base URL (``http://127.0.0.1:P/v1``).

    ``api_key`` may hold several comma-separated keys; ``None`` or ``""`` serves without auth.
    Options (``OPTION_NAMES``): the `serve` flags' values, named as the flags (``latency_ms=5`` for ``--latency-ms 5``).
    """
    config = make_config(engine, api_key, **options)
    if subprocess or config.workers > 1:
        with _subprocess_server(engine, api_key, options) as url:
            yield url
        return
    with running_config(config) as url:
        yield url


@contextmanager
def running_config(config: ServeConfig) -> Iterator[str]:
    """Serve ``config`` (one worker; its host and port are ignored: 127.0.0.1, a free port) in a background
    thread for the duration of the block and yield its base URL (``http://127.0.0.1:P/v1``)."""
    server = _ThreadServer(config)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/v1"
    finally:
        server.stop()


class _ThreadServer:
    """The app on its own event loop in a daemon thread."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="sentech-eval-test-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(timeout=300)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise TimeoutError("the test server did not start within 300 s")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = self.config.build_engine()
        if self.config.engine == "llama":
            engine.check()
        runner, self.port = await start_site(self.config.build_app(engine), "127.0.0.1", 0)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def serve_command(
    engine: str, options: dict[str, Any], *, api_key_env: str = KEY_ENV, no_auth: bool = False
) -> list[str]:
    """The argv of `sentech-eval serve` on a free loopback port for these options."""
    cmd = [sys.executable, "-m", "sentech_eval.cli", "serve", *serve_args(engine, options)]
    return cmd + (["--no-auth"] if no_auth else ["--api-key-env", api_key_env])


@contextmanager
def _subprocess_server(
    engine: str, api_key: str | None, options: dict[str, Any], timeout_s: float = 300
) -> Iterator[str]:
    env = dict(os.environ)
    env[KEY_ENV] = api_key or ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    with listening_process(serve_command(engine, options, no_auth=not api_key), env=env, timeout_s=timeout_s) as (
        url,
        _,
    ):
        yield url


@contextmanager
def listening_process(
    cmd: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 300, cwd: Path | None = None
) -> Iterator[tuple[str, sp.Popen]]:
    """Start ``cmd`` (in ``cwd``, default the repo root), wait for its ``listening on http://…/v1``
    line and yield ``(base_url, process)``; afterwards SIGTERM it (SIGKILL if it has not exited
    within 15 s)."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = sp.Popen(cmd, stdout=sp.PIPE, stderr=stderr, text=True, env=env, cwd=cwd or REPO_ROOT)
        try:
            url = _wait_for_url(proc, timeout_s)
            if url is None:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                raise RuntimeError(f"`{' '.join(cmd)}` did not start (exit {proc.returncode}): {stderr.read().strip()}")
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except sp.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _wait_for_url(proc: sp.Popen, timeout_s: float) -> str | None:
    """Read stdout until the listening line (or exit / timeout)."""
    deadline = time.monotonic() + timeout_s
    result: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = LISTENING.search(line)
            if match:
                result.append(match.group(1))
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return result[0] if result else None
