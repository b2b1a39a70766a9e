"""A real `sentech-eval serve` app on a loopback port that counts the chat requests reaching it."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

from aiohttp import web

from sentech_eval.server.app import start_site
from sentech_eval.server.testing import make_config


class CountingServer:
    """The echo server's real app (faults and all) plus a middleware counting POSTs to chat completions."""

    def __init__(self, api_key: str, **options: Any) -> None:
        self.config = make_config("echo", api_key, **options)
        self.requests = 0
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = self.config.build_app(self.config.build_engine())

        @web.middleware
        async def count(request: web.Request, handler):
            if request.method == "POST" and request.path.endswith("/chat/completions"):
                self.requests += 1
            return await handler(request)

        app.middlewares.append(count)
        runner, port = await start_site(app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}/v1"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> CountingServer:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the counting server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextmanager
def counting_server(api_key: str, **options: Any) -> Iterator[CountingServer]:
    """Yield a started ``CountingServer``; stopped afterwards."""
    server = CountingServer(api_key, **options).start()
    try:
        yield server
    finally:
        server.stop()


def run_in_process(run_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], str]:
    """One `sentech-eval run` in this process (the config composed as `run` composes it, the same job
    spec and ``run_job``): returns its result record and what it printed on stderr."""
    from sentech_eval.commands.run import ResumeCommand, run_job
    from sentech_eval.config import compose_config, job_spec

    spec = job_spec(compose_config(overrides))
    err = io.StringIO()
    with redirect_stderr(err):
        result = run_job(spec, Path(run_dir), ResumeCommand(tuple(overrides), "hydra.run.dir", Path(run_dir)))
    return result.record(), err.getvalue()
