"""Measurement: code execution — sandbox start-up, executions per second, a HumanEval run with repeats.

1. Start-up. The median wall time of one sandboxed empty program (``Sandbox.run("pass")``: bwrap,
   its namespaces and mounts, the bootstrap, the status pipe, teardown) beside a bare
   ``/usr/bin/python3 -c pass`` started the same way (subprocess, pipes): the difference is what the
   sandbox costs per execution.
2. Executions per second. The code_exec scorer (its thread pool: one sandbox per core) on the 164
   HumanEval canonical solutions, twice over (328 executions, each running the problem's tests):
   executions per second on this machine, sandbox start-up included.
3. A run. ``sentech-eval run dataset=humaneval runner.repeats=10 scorers=[code_exec]`` (1,640 rows)
   against ``sentech-eval serve --engine oracle`` (no latency: right answers are the canonical
   solutions), wall time of the whole command from launch to exit; and the same command without the
   scorer. The time the scorer adds (scored − plain: the executions, and the report a scored run
   writes at its end) over what the executions alone take at the rate of (2) should be at most
   1 / 0.8: the run adds little to its executions.

Timing figures mean something only on a quiet machine: each line carries the 1-minute load average.

    python benchmarks/bench_code_exec.py [--quick]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_KEY, REPO_ROOT, _listening_process, arg_parser, emit, log, machine, median

from sentech_eval.sandbox import COMPLETED, Limits, Sandbox, default_python
from sentech_eval.scorers import build_scorer

RATIO_TARGET = 0.8
EXECUTIONS_TARGET = 10.0  # per second on 2 cores, sandbox start-up included


def startup(n: int) -> None:
    """Median wall seconds of an empty sandboxed program, and of a bare interpreter, side by side."""
    box = Sandbox()
    box.check()
    limits = Limits(cpu_s=5, wall_s=30)
    sandboxed, bare = [], []
    python = default_python()
    for _ in range(n):
        start = time.perf_counter()
        result = box.run("pass", limits)
        sandboxed.append(time.perf_counter() - start)
        if result.status != COMPLETED:
            raise RuntimeError(f"the empty program did not complete: {result}")
        start = time.perf_counter()
        subprocess.run([python, "-c", "pass"], stdin=subprocess.DEVNULL, capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
    s, b = median(sandboxed), median(bare)
    emit(
        "code_exec.sandbox_start_s",
        s,
        "report",
        None,
        bare_python_s=b,
        overhead_s=s - b,
        runs=n,
        sandbox=box.label,
        **machine(),
    )


def problems(limit: int | None) -> list[dict]:
    import pandas as pd

    frame = pd.read_parquet(REPO_ROOT / "datasets" / "humaneval.parquet")
    if limit:
        frame = frame.head(limit)
    return [
        {
            "output": p.canonical_solution,
            "prompt": p.prompt,
            "reference": p.reference,
            "entry_point": p.entry_point,
            "status": "ok",
        }
        for p in frame.itertuples()
    ]


def executions(rounds: int, limit: int | None) -> float:
    """Executions per second of the code_exec scorer on canonical solutions (all must pass)."""
    scorer = build_scorer("code_exec", {})
    rows = problems(limit) * rounds

    async def score_all() -> list[dict]:
        return await asyncio.gather(*(scorer.score(row) for row in rows))

    start = time.perf_counter()
    results = asyncio.run(score_all())
    wall = time.perf_counter() - start
    asyncio.run(scorer.aclose())
    failed = [r["score_code_exec_detail"] for r in results if r["score_code_exec"] != 1.0]
    if failed:
        raise RuntimeError(f"{len(failed)} canonical solutions did not pass: {failed[:2]}")
    rate = len(rows) / wall
    emit(
        "code_exec.executions_per_s",
        rate,
        f">= {EXECUTIONS_TARGET}",
        rate >= EXECUTIONS_TARGET,
        executions=len(rows),
        wall_s=wall,
        concurrency=scorer.concurrency,
        **machine(),
    )
    return rate


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("sentech-eval")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sentech_eval.cli"]


def timed_run(url: str, run_dir: Path, limit: int | None, repeats: int, scored: bool) -> float:
    """Wall seconds of one `sentech-eval run` against the oracle server, launch to exit."""
    cmd = [
        *_cli(),
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        "backend.send_seed=true",
        "dataset=humaneval",
        f"runner.repeats={repeats}",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    if limit:
        cmd.append(f"dataset.limit={limit}")
    if scored:
        cmd.append("scorers=[code_exec]")
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "SENTECH_API_KEY": BENCH_KEY}, cwd=REPO_ROOT
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def humaneval_run(limit: int | None, repeats: int, execution_rate: float) -> None:
    from sentech_eval.server.testing import KEY_ENV, serve_command

    rows = (limit or 164) * repeats
    with (
        tempfile.TemporaryDirectory() as tmp,
        _listening_process(serve_command("oracle", {}), env={**os.environ, KEY_ENV: BENCH_KEY}) as server,
    ):
        log(f"run: dataset=humaneval runner.repeats={repeats} ({rows} rows) without a scorer")
        plain = timed_run(server.url, Path(tmp) / "plain", limit, repeats, scored=False)
        log(f"run: the same with scorers=[code_exec] ({rows} executions)")
        scored = timed_run(server.url, Path(tmp) / "scored", limit, repeats, scored=True)
    added = scored - plain
    ideal = rows / execution_rate
    ratio = ideal / added if added > 0 else float("inf")
    emit(
        "code_exec.humaneval_repeats_wall_s",
        scored,
        "report",
        None,
        rows=rows,
        repeats=repeats,
        without_scorer_wall_s=plain,
        run_executions_per_s=rows / scored,
        **machine(),
    )
    emit(
        "code_exec.run_vs_scorer_executions_ratio",
        ratio,
        f">= {RATIO_TARGET}",
        ratio >= RATIO_TARGET,
        added_by_scorer_s=added,
        executions_alone_s=ideal,
        scorer_executions_per_s=execution_rate,
        **machine(),
    )


def main() -> int:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    if args.quick:
        startup(5)
        rate = executions(1, 10)
        humaneval_run(5, 2, rate)
    else:
        startup(40)
        rate = executions(2, None)
        humaneval_run(None, 10, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
