"""llama.cpp threads on this machine as it is now: 1 thread vs every core, and the default's choice.

The same prompts through the embedded model (`backend=local`, greedy) with ``n_threads=1`` and
with ``n_threads=<all cores>``, alternating, in fresh processes; printed side by side as a ratio
(> 1: all cores is slower, what a busy shared machine does to spin-waiting threads). The outputs
must be identical. Also reports the thread count the default (``n_threads: null``) picks here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, arg_parser, emit, log, machine, median


def timed_run(run_dir: Path, threads: int, limit: int) -> tuple[float, list[str]]:
    import pyarrow.parquet as pq

    cmd = [
        sys.executable,
        "-m",
        "sentech_eval.cli",
        "run",
        "backend=local",
        f"backend.n_threads={threads}",
        "backend.parallel=1",  # the one-at-a-time path (continuous batching: bench_batching.py)
        "dataset=capitals",
        f"dataset.limit={limit}",
        "sampling=greedy",
        "sampling.max_tokens=32",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"backend=local n_threads={threads} failed: {proc.stderr[-2000:]}")
    table = pq.read_table(run_dir / "results.parquet", columns=["prompt_id", "output"]).sort_by("prompt_id")
    return wall, table.column("output").to_pylist()


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    from sentech_eval.backends.local import available_cores, default_n_threads

    cores = available_cores()
    limit, pairs = (2, 1) if args.quick else (10, 3)
    ones, alls, same = [], [], True
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for i in range(pairs):
            one, out_one = timed_run(Path(tmp) / f"one{i}", 1, limit)
            every, out_all = timed_run(Path(tmp) / f"all{i}", cores, limit)
            same = same and out_one == out_all
            ones.append(one)
            alls.append(every)
            log(f"threads {i + 1}/{pairs}: 1 thread {one:.1f} s, {cores} threads {every:.1f} s")
    chosen, reason = default_n_threads()
    ratio = median([a / o for a, o in zip(alls, ones)])
    emit(
        "threads.all_cores_over_one_thread_wall_ratio",
        ratio,
        "reported (the default adapts to the load)",
        None,
        one_thread_s=ones,
        all_cores_s=alls,
        cores=cores,
        prompts=limit,
        identical_outputs=same,
        default_choice=chosen,
        default_reason=reason,
        load_1m=os.getloadavg()[0],
        quick=args.quick,
        machine=machine(),
    )
    if not same:
        raise SystemExit("outputs differ between 1 thread and all cores")


if __name__ == "__main__":
    main()
