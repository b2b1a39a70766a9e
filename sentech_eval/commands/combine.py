"""``sentech-eval combine SWEEP_DIR…``: combine (again) a sweep's job results into one table.

A sweep combines itself when it ends (``engine.sweep.CombineSweepResults``); this command is for a
sweep whose process was killed (``kill -9``, a lost login node) or to refresh the table by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sentech_eval.engine.sweep import combine, print_combined


def main(argv: list[str] | None = None, prog: str = "sentech-eval combine") -> int:
    """Combine every sweep dir named in ``argv``; a missing or unreadable dir is one sentence (exit 2)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Combine a Hydra multirun's job results into its sweep dir: results.parquet (every job's "
        "rows, with `job` and `overrides` columns), trials.parquet (one row per job) and sweep.json. "
        "Jobs killed mid-run contribute the rows they had flushed.",
    )
    parser.add_argument(
        "sweep_dirs",
        nargs="+",
        type=Path,
        metavar="SWEEP_DIR",
        help="a sweep dir (hydra.sweep.dir), e.g. results/capitals/multirun/2026-11-25_10-00-00",
    )
    args = parser.parse_args(argv)
    for sweep_dir in args.sweep_dirs:
        print_combined(combine(sweep_dir))  # ResultsError: one line and exit 2 (sentech_eval.cli)
    return 0
