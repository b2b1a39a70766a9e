#!/usr/bin/env python3
"""The project's own regression benchmark: small deterministic evals, gated by `sentech-eval check`.

Two targets, each run fresh:

- ``echo``   the remote backend against `sentech-eval serve --engine echo` (started here on a free
             loopback port with a random key passed only through the environment), checked against
             the baseline committed in ``baseline/echo.parquet``. The echo engine is model-free, so
             its answers are the same on every machine.
- ``local``  the embedded SmolLM2-135M GGUF through llama.cpp, run twice **on this machine**: in
             process (``backend=local``) and through `serve --engine llama` with the remote backend,
             paired. A small model's greedy text depends on the CPU's kernels (AVX2, AVX-512, AMX), so
             no baseline recorded on another CPU can gate it; the remote-vs-local comparison this tool
             exists for can. The served run is the baseline, the local run the candidate. Besides the
             thresholds in ``thresholds/local.yaml`` the two must agree exactly, pair by pair, on
             output, finish reason and token counts (same file, same llama.cpp, same machine).

Both run ``dataset=capitals dataset.limit=20 sampling=greedy scorers=[exact_match,contains]``
(temperature 0). Thresholds are in ``thresholds/<target>.yaml``; see docs/compare.md.

    python benchmarks/regression/run.py                     # run, check, exit 0/1/2
    python benchmarks/regression/run.py --update-baseline   # run and replace the echo baseline

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
EVAL = [
    "dataset=capitals",
    "dataset.limit=20",
    "sampling=greedy",
    "scorers=[exact_match,contains]",
    "runner.progress=false",
]
# Both sides of the local pair use the same llama.cpp thread count (one: a busy shared CI machine
# does not collapse), so the only difference between them is the path: in process vs over HTTP.
LOCAL_THREADS = 1
# Columns that must be identical pair by pair between the served and the local run.
MUST_AGREE = ("output", "finish_reason", "prompt_tokens", "completion_tokens")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sentech-eval ARGS` in a fresh process of this interpreter; output passes through."""
    full_env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sentech_eval.cli", *args], env=full_env, cwd=REPO_ROOT)


def run_eval(name: str, args: list[str], run_dir: Path, env: dict[str, str] | None = None) -> bool:
    """One fresh run of the benchmark eval; False if the run itself failed."""
    started = time.perf_counter()
    proc = cli("run", *args, *EVAL, f"hydra.run.dir={run_dir}", env=env)
    print(f"[regression] {name}: run exited {proc.returncode} after {time.perf_counter() - started:.1f} s", flush=True)
    return proc.returncode == 0 and (run_dir / "results.parquet").exists()


def remote_args(url: str, model: str) -> list[str]:
    """The remote backend against a local server, one request at a time, seed sent."""
    return [
        "backend=remote",
        f"backend.base_url={url}",
        f"backend.model={model}",
        "backend.send_seed=true",
        "runner.concurrency=1",
    ]


def disagreements(baseline: Path, candidate: Path) -> list[str]:
    """Pairs (by prompt_id, repeat) whose MUST_AGREE columns differ; one line each."""
    import pyarrow.parquet as pq

    def rows(path: Path) -> dict:
        table = pq.read_table(path, columns=["prompt_id", "repeat", "status", *MUST_AGREE]).to_pylist()
        return {(r["prompt_id"], r["repeat"]): r for r in table}

    a, b = rows(baseline), rows(candidate)
    out = [f"{key}: only in {'served' if key in a else 'local'} run" for key in sorted(set(a) ^ set(b), key=str)]
    for key in sorted(set(a) & set(b), key=str):
        differ = [c for c in ("status", *MUST_AGREE) if a[key][c] != b[key][c]]
        if differ:
            out.append(f"{key}: " + ", ".join(f"{c} {a[key][c]!r} (served) vs {b[key][c]!r} (local)" for c in differ))
    return out


def gate(target: str, baseline: Path, candidate: Path, out: Path, summary: str | None) -> int:
    """`sentech-eval check` of candidate against baseline with the target's thresholds."""
    check = [
        "check",
        "--baseline",
        str(baseline),
        "--candidate",
        str(candidate),
        "--thresholds",
        str(THRESHOLDS_DIR / f"{target}.yaml"),
        "--junit",
        str(out / f"{target}-junit.xml"),
        "--out",
        str(out / f"{target}-compare"),
    ]
    if summary:
        check += ["--summary", summary]
    return cli(*check).returncode


def run_echo(out: Path, update: bool, summary: str | None) -> int:
    import pyarrow.parquet as pq

    from sentech_eval.server.testing import running_server

    key = secrets.token_hex(16)
    run_dir = out / "echo"
    with running_server(engine="echo", api_key=key, subprocess=True) as url:
        if not run_eval("echo", remote_args(url, "echo"), run_dir, env={"SENTECH_API_KEY": key}):
            return 2
    baseline = BASELINE_DIR / "echo.parquet"
    if update:
        BASELINE_DIR.mkdir(exist_ok=True)
        # One row group and the run's metadata (resolved config, versions): small enough to commit.
        pq.write_table(pq.read_table(run_dir / "results.parquet"), baseline, compression="zstd")
        print(f"[regression] echo: baseline updated -> {baseline.relative_to(REPO_ROOT)}")
        return 0
    return gate("echo", baseline, run_dir, out, summary)


def run_local(out: Path, summary: str | None) -> int:
    from sentech_eval.server.testing import running_server

    key = secrets.token_hex(16)
    served, local = out / "local-served", out / "local"
    with running_server(engine="llama", api_key=key, subprocess=True, n_threads=LOCAL_THREADS) as url:
        if not run_eval("local (served)", remote_args(url, "served"), served, env={"SENTECH_API_KEY": key}):
            return 2
    # backend.parallel=1: the one-at-a-time path, as `serve --engine llama` (parallel 1) answers; batched
    # decoding may change a near-tie token (docs/local.md), which an exact pair-by-pair check would flag.
    local_args = ["backend=local", f"backend.n_threads={LOCAL_THREADS}", "backend.parallel=1"]
    if not run_eval("local", local_args, local):
        return 2
    code = gate("local", served / "results.parquet", local, out, summary)
    differ = disagreements(served / "results.parquet", local / "results.parquet")
    for line in differ:
        print(f"[regression] local: {line}")
    print(
        f"[regression] local: {'REGRESSED' if differ else 'ok'}: {len(differ)} pairs differ "
        f"in {', '.join(MUST_AGREE)} between the served and the in-process model",
        flush=True,
    )
    return max(code, 1 if differ else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument(
        "--update-baseline",
        action="store_true",
        help="copy the fresh echo results into baseline/ instead of checking them "
        "(the local target has no committed baseline)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: results/regression/<timestamp>)")
    parser.add_argument(
        "--summary",
        default=os.environ.get("GITHUB_STEP_SUMMARY"),
        help="append the markdown summaries here (default: $GITHUB_STEP_SUMMARY if set)",
    )
    args = parser.parse_args(argv)

    out = args.out or REPO_ROOT / "results" / "regression" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists():
        shutil.rmtree(out)  # a run dir is resumable: never let a stale one stand in for a fresh run
    out.mkdir(parents=True)

    codes: dict[str, int] = {}
    for target in args.targets:
        if target == "echo":
            codes[target] = run_echo(out, args.update_baseline, args.summary)
        elif not args.update_baseline:
            codes[target] = run_local(out, args.summary)
    worst = 2 if 2 in codes.values() else (1 if 1 in codes.values() else 0)
    verdict = ", ".join(f"{t}: {'ok' if c == 0 else ('REGRESSED' if c == 1 else 'ERROR')}" for t, c in codes.items())
    print(f"[regression] {verdict} -> exit {worst} (outputs in {out})")
    return worst


if __name__ == "__main__":
    sys.exit(main())
