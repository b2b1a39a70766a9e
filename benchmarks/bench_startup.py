"""Start-up: wall time of a one-row `sentech-eval run` (target ≤ 1.5 s), and what its imports cost.

A one-row run against `sentech-eval serve --engine echo` (started once, outside the timing) is
almost only start-up: interpreter, imports, Hydra's config composition, dataset checks, writer
set-up and the final merge. It runs N times in fresh processes; the median wall time is judged
against the target. Beside it, ``python -X importtime`` of the same command lists the slowest
top-level imports, so a regression points at its cause. Each run's CPU time (user + system) is
printed too: on a shared machine it moves far less with the load than the wall time does.

Side by side, alternating with the runs, a bare interpreter that only imports what every remote run
needs (Hydra, OmegaConf, pyarrow, aiohttp, and pandas, which pyarrow imports on its first conversion of
a Python value: apache/arrow#34994) and leaves without teardown as the CLI does: the floor no start-up
of this design can go below.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_KEY, REPO_ROOT, arg_parser, echo_server, emit, log, machine, make_prompt_dataset, median

TARGET_S = 1.5
FLOOR_IMPORTS = (
    "import hydra, hydra.main, omegaconf, pyarrow, pyarrow.compute, pyarrow.parquet, aiohttp, pandas, os; os._exit(0)"
)


def run_command(url: str, dataset: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sentech_eval.cli",
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        "backend.model=echo",
        f"dataset.path={dataset}",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
    ]


def slowest_imports(cmd: list[str], env: dict[str, str], top: int = 8) -> dict[str, float]:
    """Cumulative import time (s) of the slowest top-level packages, from ``-X importtime``."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
        if match and len(match.group(2)) <= 1:  # a top-level import (indent of one space)
            name = match.group(3).split(".")[0]
            totals[name] = totals.get(name, 0.0) + int(match.group(1)) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:top])


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    repeats = 2 if args.quick else 7
    env = {**os.environ, "SENTECH_API_KEY": BENCH_KEY}
    walls, cpus, floors = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, echo_server() as server:
        dataset = make_prompt_dataset(Path(tmp) / "one.parquet", 1)
        for i in range(repeats + 1):
            cmd = run_command(server.url, dataset, Path(tmp) / f"run{i}")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                raise RuntimeError(f"one-row run failed: {proc.stderr[-2000:]}")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True, cwd=REPO_ROOT)
            floor = time.perf_counter() - start
            if i:  # the first run warms the OS file cache and Python's bytecode cache
                walls.append(wall)
                cpus.append(cpu)
                floors.append(floor)
                log(f"startup {i}/{repeats}: {wall:.3f} s wall, {cpu:.3f} s CPU; imports alone {floor:.3f} s")
        imports = slowest_imports(run_command(server.url, dataset, Path(tmp) / "importtime"), env)
    wall = median(walls)
    emit(
        "startup.one_row_run_wall_s",
        wall,
        f"<= {TARGET_S}",
        wall <= TARGET_S,
        each=walls,
        cpu_s=median(cpus),
        cpu_each=cpus,
        slowest_imports_s=imports,
        floor_imports_s=median(floors),
        floor_each=floors,
        run_over_floor_s=wall - median(floors),
        quick=args.quick,
        machine=machine(),
    )


if __name__ == "__main__":
    main()
