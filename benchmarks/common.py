"""Shared helpers of the benchmark scripts: JSON result lines, datasets, servers, client runs.

Every benchmark prints one JSON line per measurement on stdout::

    {"name": "runner.steady_rps_ratio", "value": 0.97, "target": ">= 0.9", "pass": true, ...}

(extra keys carry the raw numbers behind the value). Progress and logs go to stderr. The
subjects under test always run in their own processes (``sentech-eval serve`` and
``sentech-eval run`` as a user starts them, the bare client in ``bare_client.py``), so no two
of them share a GIL with each other or with the script that measures them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BENCH_KEY = "bench-key-5d1e"  # the throwaway key the benchmark servers accept
# Every process a benchmark starts caches its bytecode as a user's would (an installed wheel is compiled;
# an editable install writes .pyc on first import). A shell with PYTHONDONTWRITEBYTECODE=1 would make each
# start-up compile every module again: 12 ms for engine/datasets.py alone here (2026-12-06).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
CONCURRENCY = 64


# ---------------------------------------------------------------------------------------- output
def emit(name: str, value: float | None, target: str, passed: bool | None, **extra: Any) -> dict[str, Any]:
    """Print one measurement as a JSON line (``pass`` is None when there is nothing to judge)."""
    record: dict[str, Any] = {"name": name, "value": _round(value), "target": target, "pass": passed}
    record.update({k: _round(v) for k, v in extra.items()})
    print(json.dumps(record), flush=True)
    return record


def emit_ratio(name: str, ratios: Sequence[float], target: float, **extra: Any) -> dict[str, Any]:
    """Emit the median of paired ratios (each measured side by side in one pair) against ``>= target``."""
    ratio = median(ratios)
    return emit(name, ratio, f">= {target}", ratio >= target, ratios=list(ratios), **extra)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def log(message: str) -> None:
    """A progress line on stderr (stdout carries only JSON lines)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the script works (the figures mean nothing)"
    )
    return parser


# ---------------------------------------------------------------------------------------- statistics
def steady_window(send_times: Sequence[float], lo: float = 5.0, hi: float = 95.0) -> tuple[float, float, int]:
    """The steady part of a run: the lo-th and hi-th percentile of its send times and the sends between."""
    import numpy as np

    times = np.asarray(send_times, dtype=float)
    if len(times) < 20:
        raise ValueError(f"need at least 20 send times for a steady window, got {len(times)}")
    t_lo, t_hi = (float(t) for t in np.percentile(times, [lo, hi]))
    return t_lo, t_hi, int(np.count_nonzero((times >= t_lo) & (times <= t_hi)))


def steady_rate(send_times: Sequence[float], lo: float = 5.0, hi: float = 95.0) -> float:
    """Requests/s between the lo-th and hi-th percentile of send times (start-up and tail excluded)."""
    t_lo, t_hi, inside = steady_window(send_times, lo, hi)
    return (inside - 1) / (t_hi - t_lo) if t_hi > t_lo else float("inf")


def median(values: Sequence[float]) -> float:
    """The median (of ratios, of repetitions)."""
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------- datasets
def make_prompt_dataset(path: Path, rows: int, batch_rows: int = 100_000) -> Path:
    """A Parquet dataset of ``rows`` short arithmetic prompts (id, prompt, reference), written in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("reference", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch_rows):
            ids = range(start, min(rows, start + batch_rows))
            writer.write_table(
                pa.table(
                    {
                        "id": [f"q{i:07d}" for i in ids],
                        "prompt": [f"What is {i} plus {i % 97}? Answer with the number only." for i in ids],
                        "reference": [str(i + i % 97) for i in ids],
                    },
                    schema=schema,
                )
            )
    return path


def default_request_template() -> dict[str, Any]:
    """The body fields besides ``messages`` that `sentech-eval run backend=remote` sends with the default config."""
    from sentech_eval.config import compose_config, job_spec

    spec = job_spec(compose_config(["backend=remote"]))
    return {"model": spec.model_name, **spec.sampling.request_fields()}


# ---------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    """A server process under measurement: its base URL and its pid (for CPU accounting)."""

    url: str
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the server and its worker processes."""
        return process_tree_cpu_s(self.pid)


@contextmanager
def echo_server(**options: Any) -> Iterator[Server]:
    """`sentech-eval serve --engine echo` as its CLI runs it, in its own process."""
    from sentech_eval.server.testing import KEY_ENV, serve_command

    cmd = serve_command("echo", options)
    with _listening_process(cmd, env={**os.environ, KEY_ENV: BENCH_KEY}) as server:
        yield server


@contextmanager
def minimal_server() -> Iterator[Server]:
    """The 10-line aiohttp app of ``minimal_server.py`` in its own process."""
    with _listening_process([sys.executable, str(BENCH_DIR / "minimal_server.py")]) as server:
        yield server


@contextmanager
def _listening_process(cmd: list[str], env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[Server]:
    from sentech_eval.server.testing import listening_process

    with listening_process(cmd, env=env, timeout_s=timeout_s) as (url, proc):
        yield Server(url, proc.pid)


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and its live children, from /proc (0.0 where /proc is missing)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


# ---------------------------------------------------------------------------------------- clients
def bare_client(
    url: str, dataset: Path, *, concurrency: int = CONCURRENCY, limit: int | None = None, key: str = BENCH_KEY
) -> dict[str, Any]:
    """Run ``bare_client.py`` (a plain aiohttp loop) in its own process; returns its JSON summary
    plus ``cpu_s``, the process's own CPU seconds (from ``os.wait4``)."""
    cmd = [
        sys.executable,
        str(BENCH_DIR / "bare_client.py"),
        "--url",
        url,
        "--dataset",
        str(dataset),
        "--concurrency",
        str(concurrency),
        "--template",
        json.dumps(default_request_template()),
    ]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "BENCH_API_KEY": key}
    code, usage, out, err, sampler = _run_reaped(cmd, env)
    if code != 0:
        raise RuntimeError(f"bare_client.py failed (exit {code}): {err.strip()[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    summary["cpu_s"] = usage.ru_utime + usage.ru_stime
    steady_cpu = sampler.cpu_between(*summary["steady_window"]) if summary["steady_window"] else None
    summary["steady_cpu_us_per_request"] = (
        steady_cpu / summary["steady_requests"] * 1e6 if steady_cpu is not None else None
    )
    return summary


def _run_reaped(cmd: list[str], env: dict[str, str], stdout: bool = True) -> tuple[int, Any, str, str, CpuSampler]:
    """Run a command to completion, sampling its CPU time as it runs and reaping it with
    ``os.wait4`` for its own resource usage (peak RSS, total CPU)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out if stdout else subprocess.DEVNULL, stderr=err, env=env, cwd=REPO_ROOT)
        sampler = CpuSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            proc.returncode,
            usage,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace").replace("\r", "\n"),
            sampler,
        )


class CpuSampler:
    """Samples a process's CPU seconds every ``interval_s`` (from /proc) until stopped.

    ``cpu_at(t)`` interpolates the CPU used by epoch time ``t``: the CPU per request in a steady
    window, or the CPU spent before the first request, are then read off without touching the
    process (on a shared machine CPU time is far steadier than wall time).
    """

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        path = Path(f"/proc/{self.pid}/stat")
        while not self._stop.is_set():
            try:
                fields = path.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                return
            if fields[0] == "Z":
                return
            self.samples.append((time.time(), (int(fields[11]) + int(fields[12])) / ticks))
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_at(self, t: float) -> float | None:
        """CPU seconds used by epoch time ``t`` (linear between samples; None without samples)."""
        import numpy as np

        if not self.samples:
            return None
        times, cpu = zip(*self.samples)
        return float(np.interp(t, times, cpu))

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds used between two epoch times."""
        a, b = self.cpu_at(t0), self.cpu_at(t1)
        return None if a is None or b is None else b - a


@dataclass
class RunResult:
    """One `sentech-eval run` process: its wall times, peak RSS and the rows it wrote."""

    launched_at: float  # epoch seconds just before the process was started
    wall_s: float
    max_rss_mb: float
    cpu_s: float  # the process's own user + system CPU seconds
    rows: int
    ok: int
    send_times: list[float]  # epoch seconds (the rows' started_at)
    latency_s: list[float]
    queue_s: list[float | None]
    steady_cpu_us_per_request: float | None = None  # CPU per request between the 5th and 95th percentile sends
    startup_cpu_s: float | None = None  # CPU used before the first request was sent

    @property
    def startup_s(self) -> float:
        """From process start to the first request sent."""
        return min(self.send_times) - self.launched_at

    @property
    def steady_rps(self) -> float:
        """Requests/s between the 5th and 95th percentile of send times."""
        return steady_rate(self.send_times)


def sentech_eval_run(
    url: str,
    dataset: Path,
    run_dir: Path,
    *overrides: str,
    key: str = BENCH_KEY,
    concurrency: int = CONCURRENCY,
    columns_only: bool = False,
    launcher: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    expect_ok: int | None = None,
) -> RunResult:
    """Run `sentech-eval run backend=remote` as a user would (progress bar on) and read its results.

    The process is reaped with ``os.wait4`` so its own peak RSS (``ru_maxrss``) is exact.
    ``columns_only`` skips reading the per-row columns (1M-row runs only need the counts).
    ``expect_ok``: RuntimeError unless exactly this many rows are ok (a measurement of failures is none).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    exe = Path(sys.executable).with_name("sentech-eval")
    if launcher is None:
        launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "sentech_eval.cli"]
    cmd = [
        *launcher,
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        f"runner.concurrency={concurrency}",
        "runner.progress=true",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "SENTECH_API_KEY": key, **(extra_env or {})}
    launched = time.time()
    code, usage, _, err, sampler = _run_reaped(cmd, env, stdout=False)
    wall = time.time() - launched
    if code != 0:
        raise RuntimeError(f"sentech-eval run failed (exit {code}): {err.strip()[-2000:]}")
    table = pq.read_table(run_dir / "results.parquet", columns=["status", "started_at", "latency_s", "queue_s"])
    ok = int(pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0)
    if expect_ok is not None and ok != expect_ok:
        raise RuntimeError(f"sentech-eval run answered {ok} of {expect_ok} prompts ok")
    if columns_only:
        send, latency, queue = [], [], []
    else:
        send = (table.column("started_at").cast("int64").to_numpy() / 1e6).tolist()
        latency = table.column("latency_s").to_pylist()
        queue = table.column("queue_s").to_pylist()
    steady_cpu_us = startup_cpu = None
    if send:
        lo, hi, inside = steady_window(send)
        cpu = sampler.cpu_between(lo, hi)
        steady_cpu_us = cpu / inside * 1e6 if cpu is not None else None
        startup_cpu = sampler.cpu_at(min(send))
    return RunResult(
        launched,
        wall,
        usage.ru_maxrss / 1024.0,
        usage.ru_utime + usage.ru_stime,
        table.num_rows,
        ok,
        send,
        latency,
        queue,
        steady_cpu_us,
        startup_cpu,
    )


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cores": os.cpu_count(), "cpu": model, "load_1m": load}
