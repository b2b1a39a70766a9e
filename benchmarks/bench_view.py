"""Measurement: `sentech-eval view` at scale — a 1,000,000-row run and a directory of 1,000 runs.

Both are generated with pyarrow in a temp dir (the results schema, 64k-row row groups as the runner
writes them; outputs of 10–300 characters). The viewer runs as a user starts it (`sentech-eval view
DIR --port 0`, its own process, a fresh cache dir); the script times HTTP requests from outside:

- 1M rows: the run page's first visit (summary computed in the viewer's worker process, then
  cached), the run page again (target ≤ 1 s), a filter (status=error; score fail; a text search for a
  common phrase, whose first page is found early, and for a string in one row only, a full scan),
  a page turn of a filtered table, a row view (targets ≤ 0.5 s), and the viewer's memory: the peak of
  server RSS + worker RSS, sampled every 50 ms through the whole visit (target ≤ 400 MB), with each
  process's own peak (VmHWM) beside it.
- 1,000 runs: the runs page until every run's summary is cached (first visit), then the runs page
  again (target ≤ 2 s).

The machine's load average is written beside the figures. ``--quick``: 20,000 rows and 50 runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import REPO_ROOT, arg_parser, emit, log, machine

from sentech_eval.engine.results import ROW_GROUP_ROWS, results_schema

PAGE_TARGET_S = 1.0
FILTER_TARGET_S = 0.5
RSS_TARGET_MB = 400.0
RUNS_TARGET_S = 2.0
WORDS = "the capital city answer is of and a to in paris rome lima oslo cairo tokyo madrid".split()


def results_table(rows: int, seed: int = 0, run: str = "bench") -> pa.Table:
    """``rows`` result rows in the results schema (4 configurations, 2 scores, 2% errors)."""
    rng = np.random.default_rng(seed)
    pool = np.array(
        [" ".join(rng.choice(WORDS, size=rng.integers(2, 50))) for _ in range(min(4096, rows))], dtype=object
    )
    prompts = np.array([f"What is the capital of country {i}? Answer with the city name only." for i in range(5000)])
    status = np.where(rng.random(rows) < 0.02, "error", "ok")
    ok = status == "ok"
    correct = (rng.random(rows) < 0.7) & ok
    config = rng.integers(0, 4, rows)
    latency = rng.lognormal(-1.5, 0.4, rows)
    score_fields = [
        pa.field("score_contains", pa.float64()),
        pa.field("score_contains_detail", pa.string()),
        pa.field("score_exact_match", pa.float64()),
    ]
    schema = results_schema(score_fields=score_fields)
    prompt_index = np.arange(rows) % 5000
    columns = {
        "run_id": pa.array(np.full(rows, run)),
        "config_id": pa.array(np.array([f"cfg-{c}" for c in range(4)])[config]),
        "backend": pa.array(np.full(rows, "remote")),
        "model": pa.array(np.full(rows, "sentech-small")),
        "dataset": pa.array(np.full(rows, "capitals")),
        "prompt_id": pa.array(np.char.add("p-", prompt_index.astype(str))),
        "repeat": pa.array((np.arange(rows) // 20000).astype(np.int32)),
        "temperature": pa.array(np.array([0.0, 0.4, 0.8, 1.2])[config]),
        "top_p": pa.array(np.full(rows, 0.9)),
        "top_k": pa.array(np.full(rows, 40, dtype=np.int64)),
        "frequency_penalty": pa.array(np.zeros(rows)),
        "presence_penalty": pa.array(np.zeros(rows)),
        "max_tokens": pa.array(np.full(rows, 256, dtype=np.int64)),
        "seed": pa.array(np.arange(rows, dtype=np.int64) // 20000),
        # every output differs (as a model's do): a phrase from the pool and the row's own number
        "output": pc.if_else(
            pa.array(ok),
            pc.binary_join_element_wise(
                pa.array(pool[rng.integers(0, len(pool), rows)], pa.string()),
                pa.array(np.arange(rows).astype(str)),
                " #",
            ),
            pa.scalar(None, pa.string()),
        ),
        "finish_reason": pa.array(np.where(ok, "stop", None)),
        "response_model": pa.array(np.full(rows, "sentech-small")),
        "prompt_tokens": pa.array(np.where(ok, 20, 0).astype(np.int64), mask=~ok),
        "completion_tokens": pa.array(rng.integers(1, 60, rows).astype(np.int64), mask=~ok),
        "total_tokens": pa.array(rng.integers(21, 80, rows).astype(np.int64), mask=~ok),
        "latency_s": pa.array(latency, mask=~ok),
        "ttft_s": pa.array(latency * 0.3, mask=~ok),
        "status": pa.array(status),
        "http_status": pa.array(np.where(ok, 200, 503).astype(np.int32)),
        "error": pa.array(np.where(ok, None, "HTTP 503: overloaded")),
        "attempts": pa.array(np.where(ok, 1, 6).astype(np.int32)),
        "started_at": pa.array(
            (1_764_000_000_000_000 + np.arange(rows, dtype=np.int64) * 1000), pa.timestamp("us", tz="UTC")
        ),
        "queue_s": pa.array(np.full(rows, 0.001)),
        "prompt": pa.array(prompts[prompt_index]),
        "reference": pa.array(np.full(rows, "Paris")),
        "score_contains": pa.array(np.where(correct, 1.0, 0.0), mask=~ok),
        "score_contains_detail": pa.array(np.where(correct, "found", "missing"), mask=~ok),
        "score_exact_match": pa.array(np.where(correct & (rng.random(rows) < 0.8), 1.0, 0.0), mask=~ok),
    }
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_run(directory: Path, rows: int, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        results_table(rows, seed, directory.name), directory / "results.parquet", row_group_size=ROW_GROUP_ROWS
    )


def fetch(url: str) -> tuple[float, str]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read().decode()
    return time.perf_counter() - start, body


def until_ready(url: str, timeout_s: float = 1800) -> float:
    """Seconds until ``url`` answers without "computing…" and with its plots drawn (the first visit), so the
    filters after it are timed while the worker is idle, as a user who has the page in front of them."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        _, body = fetch(url)
        if 'id="pending"' not in body and 'id="plots-pending"' not in body:
            return time.perf_counter() - start
        time.sleep(0.25)
    raise RuntimeError(f"{url} was still computing after {timeout_s} s")


def best_of(url: str, times: int = 3) -> float:
    return min(fetch(url)[0] for _ in range(times))


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) RSS of ``pid`` in MB from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return float(fields["VmRSS"].split()[0]) / 1024, float(fields["VmHWM"].split()[0]) / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` in MB: pages shared with another process (the libraries the server and
    its worker both map) count once between them, not once in each RSS."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return float(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


class Viewer:
    """`sentech-eval view DIR --port 0` in its own process, with a fresh cache dir; a thread samples the
    RSS of the server and its worker every 50 ms."""

    def __init__(self, root: Path, cache: Path) -> None:
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentech_eval.cli", "view", str(root), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+/)", line)
        if not match:
            raise RuntimeError(f"the viewer printed no URL: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = match.group(1)
        self.start_rss_mb = rss_mb(self.proc.pid)[0]  # the server before any request: its imports
        self.worker_peak_mb = 0.0
        self.total_peak_mb = 0.0  # the largest server + worker RSS seen at one moment
        self.total_pss_peak_mb = 0.0  # the same in PSS (shared library pages counted once)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                total = rss_mb(self.proc.pid)[0]
                pss = pss_mb(self.proc.pid)
            except OSError:
                return
            self.sample_worker()
            try:
                found = children(self.proc.pid)
            except OSError:
                continue
            for child in found:
                try:
                    total += rss_mb(child)[0]
                    pss += pss_mb(child)
                except OSError:
                    pass
            self.total_peak_mb = max(self.total_peak_mb, total)
            self.total_pss_peak_mb = max(self.total_pss_peak_mb, pss)

    def sample_worker(self) -> None:
        try:
            found = children(self.proc.pid)
        except OSError:
            return
        for child in found:
            try:
                self.worker_peak_mb = max(self.worker_peak_mb, rss_mb(child)[1])
            except OSError:
                pass

    def worker_rss_mb(self) -> float:
        """The worker's RSS now (0 before it started)."""
        try:
            return sum(rss_mb(child)[0] for child in children(self.proc.pid))
        except OSError:
            return 0.0

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(5)
        self.proc.terminate()
        self.proc.wait(30)


def big_run(tmp: Path, rows: int) -> None:
    root = tmp / "big"
    log(f"view: writing a {rows:,}-row run …")
    write_run(root / "run", rows)
    viewer = Viewer(root, tmp / "cache-big")
    try:
        page = viewer.url + "run/0/run"
        first = until_ready(page)
        viewer.sample_worker()
        again = best_of(page)
        error_filter = fetch(page + "?status=error")[0]
        error_turn = best_of(page + "?status=error&offset=100")
        fail_filter = fetch(page + "?score=score_contains&outcome=fail&temperature=0.8")[0]
        fail_turn = best_of(page + "?score=score_contains&outcome=fail&temperature=0.8&offset=5000")
        search = fetch(page + "?q=tokyo%20madrid")[0]  # a common phrase: the first page is in the first row groups
        search_turn = best_of(page + "?q=tokyo%20madrid&offset=200")
        rare = fetch(page + f"?q=%23{rows - 7}")[0]  # one row matches: every row group is read
        row = best_of(viewer.url + f"row/0/run?n={rows // 2}")
        current, peak = rss_mb(viewer.proc.pid)
        viewer.sample_worker()
        worker_idle = viewer.worker_rss_mb()
    finally:
        viewer.close()
    total_peak = max(viewer.total_peak_mb, peak)
    load = machine()
    log(
        f"view: {rows:,} rows — first visit {first:.2f} s, again {again:.3f} s; filters {error_filter:.3f} / "
        f"{fail_filter:.3f} / search {search:.3f} (one match in {rows:,} rows: {rare:.3f}) s; page turns {error_turn:.3f} / {fail_turn:.3f} / {search_turn:.3f} s; "
        f"row {row:.3f} s; viewer peak (server + worker) {total_peak:.0f} MB RSS, {viewer.total_pss_peak_mb:.0f} MB PSS; server RSS {current:.0f} MB "
        f"(at start {viewer.start_rss_mb:.0f}, peak {peak:.0f}), worker peak {viewer.worker_peak_mb:.0f} MB "
        f"(idle after the visit {worker_idle:.0f}) (load {load['load_1m']})"
    )
    emit(
        f"view.run_page_s_at_{rows}",
        again,
        f"<= {PAGE_TARGET_S:g}",
        again <= PAGE_TARGET_S,
        first_visit_s=first,
        machine=load,
    )
    slowest_filter = max(error_filter, fail_filter, search, rare, error_turn, fail_turn, search_turn, row)
    emit(
        f"view.filter_or_page_s_at_{rows}",
        slowest_filter,
        f"<= {FILTER_TARGET_S:g}",
        slowest_filter <= FILTER_TARGET_S,
        status_filter_s=error_filter,
        score_filter_s=fail_filter,
        text_search_s=search,
        text_search_one_match_s=rare,
        page_turns_s=[error_turn, fail_turn, search_turn],
        row_view_s=row,
        machine=load,
    )
    emit(
        f"view.viewer_peak_rss_mb_at_{rows}",
        total_peak,
        f"<= {RSS_TARGET_MB:g}",
        total_peak <= RSS_TARGET_MB,
        viewer_peak_pss_mb=viewer.total_pss_peak_mb,
        server_peak_rss_mb=peak,
        server_rss_mb=current,
        server_start_rss_mb=viewer.start_rss_mb,
        worker_peak_rss_mb=viewer.worker_peak_mb,
        worker_idle_rss_mb=worker_idle,
        machine=load,
    )


def many_runs(tmp: Path, runs: int) -> None:
    root = tmp / "many"
    log(f"view: writing {runs:,} runs …")
    for i in range(runs):
        write_run(root / f"exp-{i // 100}" / f"run-{i:04d}", 200, seed=i)
    viewer = Viewer(root, tmp / "cache-many")
    try:
        first = until_ready(viewer.url)
        again = best_of(viewer.url)
        _, peak = rss_mb(viewer.proc.pid)
        viewer.sample_worker()
        _, body = fetch(viewer.url)
        listed = body.count('class="run-link"')
    finally:
        viewer.close()
    if listed != runs:
        raise RuntimeError(f"the runs page listed {listed} of {runs} runs")
    load = machine()
    log(
        f"view: {runs:,} runs — first visit {first:.1f} s (every summary computed), again {again:.3f} s "
        f"(server peak RSS {peak:.0f} MB, worker peak {viewer.worker_peak_mb:.0f} MB, load {load['load_1m']})"
    )
    emit(
        f"view.runs_page_s_at_{runs}_runs",
        again,
        f"<= {RUNS_TARGET_S:g}",
        again <= RUNS_TARGET_S,
        first_visit_s=first,
        server_peak_rss_mb=peak,
        worker_peak_rss_mb=viewer.worker_peak_mb,
        machine=load,
    )


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    rows, runs = (20_000, 50) if args.quick else (1_000_000, 1_000)
    with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
        big_run(Path(tmp), rows)
        many_runs(Path(tmp), runs)


if __name__ == "__main__":
    main()
