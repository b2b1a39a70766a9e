"""Measurement 3: concurrency and timing accuracy against a server with a fixed 100 ms latency.

`sentech-eval run` (concurrency 64) against `sentech-eval serve --engine echo --latency-ms 100`,
alternating with the bare client loop against the same server:
- achieved requests/s (steady state, from the rows' ``started_at``) must reach 0.9 × 64 / 0.1 s;
- the runner's median ``latency_s`` must be within 2 ms of the true latency. The true latency is
  what the bare loop measures at the same load: with a fixed delay and 64 requests in flight, the
  requests travel in bursts of 64 and each side answers a burst one request at a time, so every
  client (the bare loop included) sees the fixed delay plus a few ms of burst queueing. The
  naive figure — fixed delay + the bare loop's unloaded round trip (concurrency 1) — is reported
  beside it (``vs_delay_plus_rtt_ms``);
- no coordinated omission: ``latency_s`` is timed from the moment a request is sent and time spent
  waiting inside the runner is the separate ``queue_s`` column, recorded on every row.
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
    log,
    machine,
    make_prompt_dataset,
    median,
    sentech_eval_run,
)

LATENCY_MS = 100.0
RPS_TARGET = 0.9 * CONCURRENCY / (LATENCY_MS / 1000)
LATENCY_TOLERANCE_MS = 2.0


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    rows, pairs = (CONCURRENCY * 4, 1) if args.quick else (CONCURRENCY * 60, 5)
    runs, bare_medians = [], []
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as tmp:
        dataset = make_prompt_dataset(Path(tmp) / "prompts.parquet", rows)
        with echo_server(workers=SERVER_WORKERS) as fast:
            rtt = bare_client(fast.url, dataset, concurrency=1, limit=min(rows, 500))["median_latency_s"]
        log(f"timing: bare no-delay round trip (concurrency 1) median {rtt * 1000:.2f} ms")
        delay_plus_rtt = LATENCY_MS / 1000 + rtt
        with echo_server(workers=SERVER_WORKERS, latency_ms=LATENCY_MS) as slow:
            for i in range(pairs):
                run = sentech_eval_run(slow.url, dataset, Path(tmp) / f"run{i}", expect_ok=rows)
                bare = bare_client(slow.url, dataset)
                runs.append(run)
                bare_medians.append(bare["median_latency_s"])
                log(
                    f"timing {i + 1}/{pairs}: runner {run.steady_rps:.0f} req/s, median latency "
                    f"{median(run.latency_s) * 1000:.2f} ms; bare loop median {bare['median_latency_s'] * 1000:.2f} ms"
                )
    rps = median([r.steady_rps for r in runs])
    emit(
        "timing.achieved_rps_at_100ms_c64",
        rps,
        f">= {RPS_TARGET:g}",
        rps >= RPS_TARGET,
        each=[r.steady_rps for r in runs],
        requests=rows,
        concurrency=CONCURRENCY,
        quick=args.quick,
        machine=machine(),
    )
    runner_median = median([median(r.latency_s) for r in runs])
    bare_median = median(bare_medians)
    error_ms = (runner_median - bare_median) * 1000
    emit(
        "timing.median_latency_error_ms",
        error_ms,
        f"abs <= {LATENCY_TOLERANCE_MS:g}",
        abs(error_ms) <= LATENCY_TOLERANCE_MS,
        runner_median_latency_ms=runner_median * 1000,
        bare_loop_median_latency_ms=bare_median * 1000,
        runner_p99_latency_ms=median([sorted(r.latency_s)[int(0.99 * (len(r.latency_s) - 1))] for r in runs]) * 1000,
        vs_delay_plus_rtt_ms=(runner_median - delay_plus_rtt) * 1000,
        bare_rtt_no_delay_ms=rtt * 1000,
        quick=args.quick,
    )
    queue = [q for r in runs for q in r.queue_s]
    recorded = sum(q is not None for q in queue) / len(queue)
    sent_from_send = all(lat is not None and lat < 10 * LATENCY_MS / 1000 for r in runs for lat in r.latency_s)
    emit(
        "timing.queue_s_recorded_fraction",
        recorded,
        "== 1 (queueing recorded apart from latency_s)",
        recorded == 1.0 and sent_from_send,
        median_queue_ms=median([q for q in queue if q is not None]) * 1000,
        max_queue_ms=max(q for q in queue if q is not None) * 1000,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
