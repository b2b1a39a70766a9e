"""Run every benchmark in turn (what `make bench` runs) and print their JSON lines.

Each script runs in its own process, one after the other (never in parallel: they measure the
machine). Their JSON lines go to stdout as they come, their progress lines to stderr. The last
line is a summary; the exit code is 1 if any measurement missed its target or a script failed.

    python benchmarks/run_all.py            # the full suite (several minutes: the 1M-row run)
    python benchmarks/run_all.py --quick    # tiny sizes: checks that everything runs
    python benchmarks/run_all.py --only bench_server --only bench_timing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# In this order: the server first (the others rely on it not being the bottleneck).
SCRIPTS = (
    "bench_server",
    "bench_runner_overhead",
    "bench_timing",
    "bench_memory",
    "bench_local",
    "bench_stats",
    "bench_startup",
    "bench_threads",
    "bench_batching",
    "bench_load",
    "bench_streaming",
    "bench_race",
    "bench_cache",
    "bench_view",
    "bench_code_exec",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script (tiny sizes)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", choices=SCRIPTS, help="run only this script (repeatable)"
    )
    args = parser.parse_args()
    names = args.only or list(SCRIPTS)
    failed_scripts: list[str] = []
    records: list[dict] = []
    started = time.monotonic()
    for name in names:
        script = BENCH_DIR / f"{name}.py"
        if not script.exists():  # bench_local.py is the local-backend helper's; optional
            print(f"[run_all] {name}.py not present, skipped", file=sys.stderr, flush=True)
            continue
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=BENCH_DIR.parent)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                print(f"[run_all] {name}: {line}", file=sys.stderr, flush=True)
                continue
            records.append(record)
            print(json.dumps(record), flush=True)
        if proc.wait() != 0:
            failed_scripts.append(name)
            print(f"[run_all] {name} failed with exit code {proc.returncode}", file=sys.stderr, flush=True)
    judged = [r for r in records if r.get("pass") is not None]
    missed = [r["name"] for r in judged if not r["pass"]]
    summary = {
        "name": "summary",
        "value": len(judged) - len(missed),
        "target": f"{len(judged)} targets met",
        "pass": not missed and not failed_scripts,
        "missed": missed,
        "failed_scripts": failed_scripts,
        "elapsed_s": round(time.monotonic() - started, 1),
        "quick": args.quick,
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
