#!/usr/bin/env python3
"""The project's own regression benchmark: a small deterministic eval, gated by `sentech-eval check`.

Two targets, each run fresh and checked against a baseline committed in ``baseline/``:

- ``echo``   the remote backend against `sentech-eval serve --engine echo`, started here on a
             free loopback port with a random key passed only through the environment;
- ``local``  the embedded SmolLM2-135M GGUF through llama.cpp (backend=local).

Both run ``dataset=capitals dataset.limit=20 sampling=greedy scorers=[exact_match,contains]``
(temperature 0). Thresholds are in ``thresholds/<target>.yaml``; see docs/compare.md for why the
latency limits are wide.

    python benchmarks/regression/run.py                     # run, check, exit 0/1/2
    python benchmarks/regression/run.py --update-baseline   # run and replace the baselines

Outputs (results, JUnit XML, compare.html per target) go to results/regression/<timestamp>/.
Exit code: 0 all checks pass, 1 a threshold regressed, 2 unusable input or a run failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BASELINE_DIR = HERE / "baseline"
THRESHOLDS_DIR = HERE / "thresholds"
TARGETS = ("echo", "local")
EVAL = ["dataset=capitals", "dataset.limit=20", "sampling=greedy", "scorers=[exact_match,contains]",
        "runner.progress=false"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sentech-eval ARGS` in a fresh process of this interpreter; output passes through."""
    full_env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sentech_eval.cli", *args], env=full_env, cwd=REPO_ROOT)


def run_target(target: str, run_dir: Path, echo_url: str | None, key: str | None) -> bool:
    """One fresh run of the benchmark eval; False if the run itself failed."""
    if target == "echo":
        args = ["backend=remote", f"backend.base_url={echo_url}", "backend.model=echo", *EVAL]
        env = {"SENTECH_API_KEY": key or ""}
    else:
        args = ["backend=local", *EVAL]
        env = {}
    started = time.perf_counter()
    proc = cli("run", *args, f"hydra.run.dir={run_dir}", env=env)
    print(f"[regression] {target}: run exited {proc.returncode} after {time.perf_counter() - started:.1f} s",
          flush=True)
    return proc.returncode == 0 and (run_dir / "results.parquet").exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--update-baseline", action="store_true",
                        help="copy the fresh results into baseline/ instead of checking them")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dir (default: results/regression/<timestamp>)")
    parser.add_argument("--summary", default=os.environ.get("GITHUB_STEP_SUMMARY"),
                        help="append the markdown summaries here (default: $GITHUB_STEP_SUMMARY if set)")
    args = parser.parse_args(argv)

    out = args.out or REPO_ROOT / "results" / "regression" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists():
        shutil.rmtree(out)  # a run dir is resumable: never let a stale one stand in for a fresh run
    out.mkdir(parents=True)

    import pyarrow.parquet as pq

    from sentech_eval.server.testing import running_server

    key = secrets.token_hex(16)
    codes: dict[str, int] = {}
    with running_server(engine="echo", api_key=key, subprocess=True) as echo_url:
        for target in args.targets:
            run_dir = out / target
            if not run_target(target, run_dir, echo_url, key):
                codes[target] = 2
                continue
            baseline = BASELINE_DIR / f"{target}.parquet"
            if args.update_baseline:
                BASELINE_DIR.mkdir(exist_ok=True)
                # One row group and the run's metadata (resolved config, versions): small enough to commit.
                pq.write_table(pq.read_table(run_dir / "results.parquet"), baseline, compression="zstd")
                print(f"[regression] {target}: baseline updated -> {baseline.relative_to(REPO_ROOT)}")
                codes[target] = 0
                continue
            check = ["check", "--baseline", str(baseline), "--candidate", str(run_dir),
                     "--thresholds", str(THRESHOLDS_DIR / f"{target}.yaml"),
                     "--junit", str(out / f"{target}-junit.xml"), "--out", str(out / f"{target}-compare")]
            if args.summary:
                check += ["--summary", args.summary]
            codes[target] = cli(*check).returncode
    worst = 2 if 2 in codes.values() else (1 if 1 in codes.values() else 0)
    verdict = ", ".join(f"{t}: {'ok' if c == 0 else ('REGRESSED' if c == 1 else 'ERROR')}" for t, c in codes.items())
    print(f"[regression] {verdict} -> exit {worst} (outputs in {out})")
    return worst


if __name__ == "__main__":
    sys.exit(main())
