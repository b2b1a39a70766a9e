"""Two versions of the runner against one server and one bare loop: is a change slower?

``bench_runner_overhead.py`` run once per version also swaps the echo server (it is started from the
tree being measured) and lets the load drift between the two runs, which moved the ratio by ±0.01 on
two cores. Here one `serve --engine echo` (this tree's) answers both runners and the bare loop, taking
turns: old runner, new runner (the order alternating), bare loop; the runners start as
``python -m sentech_eval.cli run`` with ``PYTHONPATH`` set to their tree (the ``.venv``'s packages are
shared). Each triplet gives both runners' ratio to the same bare-loop run and their CPU per request.

    git worktree add --detach /tmp/old <rev>
    .venv/bin/python benchmarks/runner_versions.py --old /tmp/old            # ~2 min for 8 triplets

2026-12-06, 2-core Intel VM, load 0.9-1.3, 5408e6d against main: ratios 0.916 / 0.908 and CPU 82.9 /
83.5 µs a request (old / new; 17:20); an earlier form of this script, 17:16: 0.895 / 0.900, 84.7 / 84.0 µs.

An editable install puts its own tree on ``sys.path`` through a ``.pth`` finder; the ``--old`` tree
comes first on ``PYTHONPATH`` and wins for ``sentech_eval``'s modules (check with ``--check``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_server import SERVER_WORKERS
from common import (
    REPO_ROOT,
    arg_parser,
    bare_client,
    echo_server,
    emit,
    log,
    machine,
    make_prompt_dataset,
    sentech_eval_run,
)

ROWS = 40_000
NOISE_US = 1.0  # two 8-triplet runs of the same two trees differed by 1.3 µs in this difference (2026-12-06)


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--old", type=Path, required=True, help="the other tree (e.g. a git worktree of an older commit)"
    )
    parser.add_argument("--new", type=Path, default=REPO_ROOT, help="this tree by default")
    parser.add_argument("--triplets", type=int, default=8)
    parser.add_argument("--check", action="store_true", help="print which sentech_eval each tree imports, then stop")
    args = parser.parse_args()
    envs = {"old": {"PYTHONPATH": str(args.old.resolve())}, "new": {"PYTHONPATH": str(args.new.resolve())}}
    launcher = [sys.executable, "-m", "sentech_eval.cli"]
    if args.check:
        for name, env in envs.items():
            code = "import sentech_eval; print(sentech_eval.__file__)"
            found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            print(name, found.stdout.strip())
        return
    rows, triplets = (2000, 1) if args.quick else (ROWS, args.triplets)
    ratios: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        dataset = make_prompt_dataset(Path(tmp) / "prompts.parquet", rows)
        with echo_server(workers=SERVER_WORKERS) as server:
            bare_client(server.url, dataset, limit=min(rows, 5000))  # warm-up, not measured
            for name, env in envs.items():
                sentech_eval_run(
                    server.url,
                    dataset,
                    Path(tmp) / f"warm-{name}",
                    "dataset.limit=2000",
                    launcher=launcher,
                    extra_env=env,
                )
            for i in range(triplets):
                runs = {}
                for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    runs[name] = sentech_eval_run(
                        server.url,
                        dataset,
                        Path(tmp) / f"{name}{i}",
                        expect_ok=rows,
                        launcher=launcher,
                        extra_env=envs[name],
                    )
                bare = bare_client(server.url, dataset)
                for name, run in runs.items():
                    ratios[name].append(run.steady_rps / bare["steady_rps"])
                    cpu[name].append(run.steady_cpu_us_per_request)
                cpu["bare"].append(bare["steady_cpu_us_per_request"])
                log(
                    f"triplet {i + 1}/{triplets}: old {ratios['old'][-1]:.3f} ({cpu['old'][-1]:.1f} us CPU/req), "
                    f"new {ratios['new'][-1]:.3f} ({cpu['new'][-1]:.1f} us), bare loop {cpu['bare'][-1]:.1f} us"
                )
    median = statistics.median
    emit(
        "runner_versions.new_minus_old_cpu_us_per_request",
        median(cpu["new"]) - median(cpu["old"]),
        f"<= {NOISE_US} (not slower, within noise)",
        median(cpu["new"]) - median(cpu["old"]) <= NOISE_US,
        old_ratio=median(ratios["old"]),
        new_ratio=median(ratios["new"]),
        old_cpu_us=median(cpu["old"]),
        new_cpu_us=median(cpu["new"]),
        bare_cpu_us=median(cpu["bare"]),
        triplets=triplets,
        old=str(args.old),
        new=str(args.new),
        machine=machine(),
    )


if __name__ == "__main__":
    main()
