"""A results tree made by real runs against the real server, and a real viewer on a loopback port.

``build_tree(root)`` runs `sentech-eval run` against `serve --engine oracle` (right with a known
probability of temperature and top_p, so two runs differ and a sweep and a race have a shape), a load
sweep against `--engine echo --capacity 2` and `--engine echo`
(which echoes a prompt it does not know: a dataset of script injections comes back as outputs), and
adds the bad cases by hand: a damaged file, a foreign Parquet file and a run killed mid-way.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from cli_helpers import TEST_KEY, run_cli

from sentech_eval.server.testing import running_server
from sentech_eval.view.app import Viewer, start
from sentech_eval.view.cache import DigestCache

INJECTIONS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "<svg onload=alert(3)>",
    "javascript:alert(4)",
    "</pre><script>alert(5)</script>",
    "<iframe src=javascript:alert(6)>",
]


def _run(url: str, run_dir: Path, *overrides: str, multirun: bool = False) -> None:
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    args = ["run"] + (["-m"] if multirun else []) + ["backend=remote", f"backend.base_url={url}", *overrides, where]
    done = run_cli(*args, env={"SENTECH_API_KEY": TEST_KEY})
    assert done.returncode == 0, done.stderr[-2000:]


def build_tree(root: Path) -> Path:
    """The results tree under ``root/results`` (see the module docstring); returns that dir."""
    results = root / "results"
    with running_server(engine="oracle", api_key=TEST_KEY) as url:
        common = ("dataset=capitals", "dataset.limit=30", "scorers=[exact_match,contains]", "sampling.seed=1")
        _run(url, results / "capitals" / "run-a", *common, "sampling.temperature=0.3", "sampling.top_p=0.9")
        _run(url, results / "capitals" / "run-b", *common, "sampling.temperature=1.2", "sampling.top_p=0.9")
        _run(
            url,
            results / "sweep",
            "dataset=capitals",
            "dataset.limit=15",
            "scorers=[exact_match]",
            "sampling.temperature=0,1.2",
            "sampling.top_p=0.5,1.0",
            multirun=True,
        )
        _run(  # a race over two temperatures: rounds of 10, 15, … prompts, the loser cut
            url,
            results / "race",
            "+sweep=race_temperature",
            "dataset=capitals",
            "dataset.limit=40",
            "sampling.temperature=0.3,1.2",
            "sampling.top_p=0.9",
            "race.start=10",
            multirun=True,
        )
    with running_server(engine="echo", api_key=TEST_KEY, capacity=2, latency_ms=50) as url:
        # a load sweep past the server's capacity (2 at a time, 50 ms each: about 40 requests/s)
        _run(
            url,
            results / "load",
            "+sweep=load",
            "dataset=capitals",
            "dataset.limit=20",
            "runner.rate=10,30,60",
            "scorers=[contains]",
            multirun=True,
        )
    data = root / "hostile.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"inj-{i}", "prompt": text, "reference": "x"}) + "\n" for i, text in enumerate(INJECTIONS)
        )
    )
    with running_server(engine="echo", api_key=TEST_KEY) as url:
        _run(url, results / "hostile", f"dataset.path={data}", "scorers=[exact_match]", "sampling.temperature=0")
    (results / "broken").mkdir()
    (results / "broken" / "results.parquet").write_bytes(b"PAR1 not really parquet")
    (results / "foreign").mkdir()
    pd.DataFrame({"x": [1, 2, 3], "note": ["a", "b", "<b>c</b>"]}).to_parquet(results / "foreign" / "results.parquet")
    parts = results / "killed" / "results.parts"
    parts.mkdir(parents=True)
    shutil.copy(results / "capitals" / "run-a" / "results.parquet", parts / "part-000000.parquet")
    (parts / "part-000001.parquet").write_bytes(b"PAR1 cut short")
    for part in parts.iterdir():  # killed an hour ago: not a run still writing
        os.utime(part, (time.time() - 3600, time.time() - 3600))
    return results


@contextmanager
def running_viewer(roots: list[Path], cache_dir: Path, token: str | None = None) -> Iterator[str]:
    """A real viewer (the app of `sentech-eval view`) on a free loopback port; yields its base URL.

    The viewer's event loop lives in its own thread from start to end, so the caller's thread may run
    a loop of its own (Playwright's sync API does).
    """
    loop = asyncio.new_event_loop()
    viewer = Viewer(roots=list(roots), cache=DigestCache(cache_dir), token=token)
    started: queue.Queue = queue.Queue()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner, port = loop.run_until_complete(start(viewer, "127.0.0.1", 0))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            started.put(exc)
            return
        started.put(port)
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = started.get(timeout=60)
    if isinstance(port, BaseException):
        raise port
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
