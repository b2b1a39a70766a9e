"""view.worker: digests run in a worker process that imports neither aiohttp nor matplotlib for a summary, and a
worker that read RETIRE_ROWS rows or more is retired once idle, a fresh one taking the next digest."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pyarrow.parquet as pq
from varied_results import varied_results

from sentech_eval.view import worker
from sentech_eval.view.app import Viewer
from sentech_eval.view.cache import DigestCache


def write_run(root):
    table, _ = varied_results(2)
    (root / "run").mkdir(parents=True)
    pq.write_table(table, root / "run" / "results.parquet")


def digest_and_plots(viewer: Viewer) -> tuple[dict, dict, list]:
    async def go():
        run = viewer.runs()[0]
        digest = await viewer.digest(run, wait=120)
        after_digest = viewer.executor
        extras = await viewer.extras(run, digest, wait=120)
        return digest, extras, [after_digest, viewer.executor]

    try:
        return asyncio.run(go())
    finally:
        viewer.stop()


def test_a_worker_that_read_a_large_run_is_retired_and_a_fresh_one_draws_the_plots(tmp_path, monkeypatch):
    write_run(tmp_path / "results")
    monkeypatch.setattr(worker, "RETIRE_ROWS", 1)  # every run counts as large
    viewer = Viewer(roots=[tmp_path / "results"], cache=DigestCache(tmp_path / "cache"))
    digest, extras, executors = digest_and_plots(viewer)
    assert digest["status"] == "ok" and digest["summary"]
    assert {alt for alt, _ in extras["plots"]} >= {"latency CDF", "token histograms"}
    assert executors == [None, None]  # retired after each, and started again for the plots


def test_a_small_worker_stays_for_the_next_digest(tmp_path):
    write_run(tmp_path / "results")
    viewer = Viewer(roots=[tmp_path / "results"], cache=DigestCache(tmp_path / "cache"))
    digest, _, executors = digest_and_plots(viewer)
    assert digest["status"] == "ok"
    assert executors[0] is not None and executors[0] is executors[1]


def test_the_worker_summarises_without_aiohttp_or_matplotlib(tmp_path):
    write_run(tmp_path)
    probe = (
        "import sys; from sentech_eval.view import worker; worker.setup(); "
        f"value, rows = worker.run('run_digest', [{str(tmp_path / 'run' / 'results.parquet')!r}]); "
        "print(value['status'], rows == value['n_rows'], 'aiohttp' in sys.modules, 'matplotlib' in sys.modules, "
        "'scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ok", "True", "False", "False", "False"]
