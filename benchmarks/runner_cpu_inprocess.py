"""The runner's own time per row, without HTTP: a diagnostic for ``bench_runner_overhead.py``'s ratio.

``bench_runner_overhead.py`` compares `sentech-eval run` with a bare aiohttp loop; its ratio moves by
±0.02 from run to run on two cores (the server shares them), so a change of 1 µs a request is lost in
it. This script takes aiohttp and the server out: it runs `sentech-eval run backend=remote` in this
process (the real CLI, dataset reader, runner, pacer, recorder, results writer and merge) with
``RemoteBackend.complete`` answering at once from an echo body, decoded and redacted as a real answer
is (``parse_completion_body`` and ``Redactor.completion_fields``). Two sizes are run; the difference in
the run's wall time over the difference in rows is the per-row cost, start-up excluded. ``--skip``
switches a part off to price it by subtraction (``flush``: no part files; ``redact``: no
``completion_fields``; ``values``: rows of nulls). Not in ``run_all.py``: it is not a user's path
(a diagnostic, not a measurement of the product), and not a target.

    .venv/bin/python benchmarks/runner_cpu_inprocess.py                 # ~20 s
    .venv/bin/python benchmarks/runner_cpu_inprocess.py --skip redact   # the redaction's share

One core does all of it, so the wall time is the run's CPU time. Measured 2026-12-06 17:05 UTC (2-core
Intel VM, load 0.9-1.4, 3 repeats each): 10.4-10.5 µs a row, 9.3-9.4 µs without ``completion_fields``;
an earlier form of this script put the part files at 1.9 µs and the row's values at 1.2 µs, and the code
session 4 started from (5408e6d) within 0.1 µs of main (benchmarks/README.md, session 6).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
KEY = "sk-bench-0123456789abcdef0123456789abcdef"


def child(rows: int, skip: list[str]) -> None:
    """Run `sentech-eval run` in this process with the answer made in-process (see the docstring)."""
    import orjson

    sys.path.insert(0, str(BENCH_DIR))
    from common import make_prompt_dataset

    from sentech_eval.backends import remote
    from sentech_eval.backends.remote_answers import parse_completion_body
    from sentech_eval.cli import main

    async def complete(self, messages, sampling):  # type: ignore[no-untyped-def]
        self._encode(messages, sampling)
        await asyncio.sleep(0)  # one turn of the event loop, as an answer arriving
        body = orjson.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "echo",
                "usage": {"prompt_tokens": 14, "completion_tokens": 14, "total_tokens": 28},
                "choices": [
                    {"message": {"role": "assistant", "content": messages[-1]["content"]}, "finish_reason": "stop"}
                ],
            }
        )
        result = parse_completion_body(body, "application/json", self._redactor.raw)
        result.latency_s, result.http_status = 0.001, 200
        self._redactor.completion_fields(result)
        return result

    remote.RemoteBackend.complete = complete  # type: ignore[method-assign]
    if "flush" in skip:
        from sentech_eval.engine import results

        results.ResultsWriter.flush = lambda self: setattr(self, "_rows", [])  # type: ignore[method-assign]
    if "redact" in skip:
        from sentech_eval import secrets

        secrets.Redactor.completion_fields = lambda self, record: None  # type: ignore[method-assign]
    if "values" in skip:
        from sentech_eval.engine import recorder

        width = len(recorder.CORE_NAMES)
        recorder.Recorder.values = lambda self, item, c: [None] * width  # type: ignore[method-assign]
    os.environ["SENTECH_API_KEY"] = KEY
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_prompt_dataset(Path(tmp) / "prompts.parquet", rows)
        argv = [
            "run",
            "backend=remote",
            "backend.base_url=http://127.0.0.1:9/v1",
            f"dataset.path={dataset}",
            "runner.concurrency=64",
            "runner.progress=true",
            f"hydra.run.dir={tmp}/run",
        ]
        sys.exit(main(argv))


def run_seconds(rows: int, skip: list[str]) -> float:
    """The run's own wall time (`... ok, 0 errors in X s`) for ``rows`` rows, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cmd = [sys.executable, __file__, "--child", str(rows)] + [f"--skip={s}" for s in skip]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = re.search(rf"{rows} ok, 0 errors in ([0-9.]+) s", proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"the in-process run failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], choices=["flush", "redact", "values"])
    parser.add_argument("--rows", type=int, default=162_000, help="the large run's rows (the small one has 2,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.skip)
        return
    small = 2_000
    per_row = []
    for _ in range(args.repeats):
        big_s, small_s = run_seconds(args.rows, args.skip), run_seconds(small, args.skip)
        per_row.append((big_s - small_s) / (args.rows - small) * 1e6)
    per_row.sort()
    skipped = ", without " + " and ".join(args.skip) if args.skip else ""
    print(f"the runner's own time per row, in-process{skipped}: {per_row[len(per_row) // 2]:.2f} µs (runs: {per_row})")


if __name__ == "__main__":
    main()
