"""Measurement 4: memory at scale.

`sentech-eval run` over a 1,000,000-row dataset (generated with pyarrow in a temp dir) against
`sentech-eval serve --engine echo`: the run process's peak RSS (``ru_maxrss`` from ``os.wait4``,
exact, not polled) must stay under 400 MB, and peak RSS at 1M rows ÷ peak RSS at 10k rows must be
≤ 1.5 — reading the dataset, the in-flight window and the results writer all stream in batches.
At ~5,000 requests/s the 1M-row run takes a few minutes; ``--quick`` uses 20k vs 2k rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench_server import SERVER_WORKERS
from common import arg_parser, echo_server, emit, log, machine, make_prompt_dataset, sentech_eval_run

PEAK_TARGET_MB = 400.0
GROWTH_TARGET = 1.5


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    small, large = (2_000, 20_000) if args.quick else (10_000, 1_000_000)
    peaks: dict[int, float] = {}
    walls: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, echo_server(workers=SERVER_WORKERS) as server:
        for rows in (small, large):
            dataset = make_prompt_dataset(Path(tmp) / f"prompts-{rows}.parquet", rows)
            run = sentech_eval_run(server.url, dataset, Path(tmp) / f"run-{rows}", columns_only=True)
            if run.rows != rows or run.ok != rows:
                raise RuntimeError(f"sentech-eval run wrote {run.rows} rows ({run.ok} ok) for {rows} prompts")
            peaks[rows], walls[rows] = run.max_rss_mb, run.wall_s
            log(
                f"memory: {rows:,} rows -> peak RSS {run.max_rss_mb:.0f} MB in {run.wall_s:.0f} s "
                f"({rows / run.wall_s:.0f} rows/s end to end)"
            )
    emit(
        f"memory.peak_rss_mb_at_{large}",
        peaks[large],
        f"< {PEAK_TARGET_MB:g}",
        peaks[large] < PEAK_TARGET_MB,
        rows=large,
        wall_s=walls[large],
        quick=args.quick,
        machine=machine(),
    )
    growth = peaks[large] / peaks[small]
    emit(
        f"memory.peak_rss_ratio_{large}_vs_{small}",
        growth,
        f"<= {GROWTH_TARGET:g}",
        growth <= GROWTH_TARGET,
        peak_small_mb=peaks[small],
        peak_large_mb=peaks[large],
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
