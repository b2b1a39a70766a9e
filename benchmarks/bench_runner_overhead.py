"""Measurement 1: the runner's overhead against a bare aiohttp loop, and its start-up time.

`sentech-eval run backend=remote` (no scorers, concurrency 64, progress bar on, 40,000 prompts)
and the bare client loop (``bare_client.py``: one ClientSession, 64 workers, the same body) take
turns (A B A B …, ten pairs by default, after one unmeasured warm-up of each) against the same
`sentech-eval serve --engine echo` process. Each one's
steady-state rate comes from its send times between their 5th and 95th percentile (the runner's
from the rows' ``started_at``), so start-up and the tail are excluded; the median of the per-pair
ratios is the figure. Start-up is measured separately: from launching `sentech-eval run` to its
first ``started_at``. CPU time per request of both processes is reported alongside.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench_server import SERVER_WORKERS
from common import (
    CONCURRENCY,
    arg_parser,
    bare_client,
    echo_server,
    emit,
    emit_ratio,
    log,
    machine,
    make_prompt_dataset,
    median,
    sentech_eval_run,
)

RATIO_TARGET = 0.90
STARTUP_TARGET_S = 1.5


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    # ten pairs by default: one pair's ratio moves by ±0.1 on two cores (benchmarks/README.md)
    parser.add_argument("--pairs", type=int, default=10, help="alternating runner/bare pairs (default 10)")
    args = parser.parse_args()
    pairs, rows = (1, 2000) if args.quick else (args.pairs, 40000)
    ratios, runner_rps, bare_rps, startups, startup_cpu, runner_cpu, bare_cpu = [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        dataset = make_prompt_dataset(Path(tmp) / "prompts.parquet", rows)
        with echo_server(workers=SERVER_WORKERS) as server:
            # Warm-up (not measured): the server's first thousands of requests, and one runner start
            # (the OS page cache for the interpreter and the installed packages).
            bare_client(server.url, dataset, limit=min(rows, 5000))
            sentech_eval_run(server.url, dataset, Path(tmp) / "warm-up", "dataset.limit=2000")
            for i in range(pairs):
                run = sentech_eval_run(server.url, dataset, Path(tmp) / f"run{i}", expect_ok=rows)
                bare = bare_client(server.url, dataset)
                ratios.append(run.steady_rps / bare["steady_rps"])
                runner_rps.append(run.steady_rps)
                bare_rps.append(bare["steady_rps"])
                startups.append(run.startup_s)
                startup_cpu.append(run.startup_cpu_s)
                runner_cpu.append(run.steady_cpu_us_per_request)
                bare_cpu.append(bare["steady_cpu_us_per_request"])
                log(
                    f"runner pair {i + 1}/{pairs}: runner {run.steady_rps:.0f} req/s ({runner_cpu[-1]:.0f} us CPU/req, "
                    f"start-up {run.startup_s:.2f} s wall, {run.startup_cpu_s:.2f} s CPU), bare "
                    f"{bare['steady_rps']:.0f} req/s ({bare_cpu[-1]:.0f} us CPU/req), ratio {ratios[-1]:.3f}"
                )
    emit_ratio(
        "runner.steady_rps_ratio_vs_bare_loop",
        ratios,
        RATIO_TARGET,
        runner_rps=median(runner_rps),
        bare_rps=median(bare_rps),
        prompts=rows,
        pairs=pairs,
        concurrency=CONCURRENCY,
        echo_workers=SERVER_WORKERS,
        quick=args.quick,
        machine=machine(),
    )
    startup = median(startups)
    emit(
        "runner.startup_to_first_request_s",
        startup,
        f"< {STARTUP_TARGET_S}",
        startup < STARTUP_TARGET_S,
        each=startups,
        cpu_s_before_first_request=median(startup_cpu),
        quick=args.quick,
    )
    cpu_ratio = median(bare_cpu) / median(runner_cpu)
    emit(
        "runner.steady_cpu_efficiency_vs_bare_loop",
        cpu_ratio,
        "informational: bare CPU/req ÷ runner CPU/req",
        None,
        runner_cpu_us_per_request=median(runner_cpu),
        bare_cpu_us_per_request=median(bare_cpu),
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
