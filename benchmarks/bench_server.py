"""Measurement 2: the server is not the bottleneck.

The same bare aiohttp client loop (``bare_client.py``, concurrency 64, the runner's request body)
is run against `sentech-eval serve --engine echo` (A) and against a minimal aiohttp handler that
returns a fixed JSON body (B, ``minimal_server.py``), alternating A B A B so machine noise
cancels. Reported: the median of the per-pair steady-state rate ratios (echo ÷ minimal; target:
at least 1 within the noise allowance), and each server's CPU time per request (the per-request
cost, which noise from other processes on a shared machine barely moves).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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
    minimal_server,
)

SERVER_WORKERS = 1  # how every benchmark runs `serve --engine echo` (see README)
TOLERANCE = 0.95  # "at least the minimal handler's rate", less 5% for noise on a shared 2-core box


def compare(dataset: Path, pairs: int, limit: int, workers: int) -> dict:
    """Alternate bare-client runs against echo (A) and the minimal handler (B)."""
    ratios, echo_rates, minimal_rates, echo_cpu, minimal_cpu = [], [], [], [], []
    with echo_server(workers=workers) as echo, minimal_server() as minimal:
        for server in (echo, minimal):  # warm-up (first connections, lazy imports)
            bare_client(server.url, dataset, limit=min(limit, 2000))
        for i in range(pairs):
            results = []
            for server in (echo, minimal):
                before = server.cpu_s()
                result = bare_client(server.url, dataset, limit=limit)
                result["server_cpu_us"] = (server.cpu_s() - before) / limit * 1e6
                if result["statuses"] != {"200": limit}:
                    raise RuntimeError(f"non-200 answers from {server.url}: {result['statuses']}")
                results.append(result)
            a, b = results
            echo_rates.append(a["steady_rps"])
            minimal_rates.append(b["steady_rps"])
            echo_cpu.append(a["server_cpu_us"])
            minimal_cpu.append(b["server_cpu_us"])
            ratios.append(a["steady_rps"] / b["steady_rps"])
            log(
                f"server pair {i + 1}/{pairs} (echo workers={workers}): echo {a['steady_rps']:.0f} req/s "
                f"({a['server_cpu_us']:.0f} us CPU/req), minimal {b['steady_rps']:.0f} req/s "
                f"({b['server_cpu_us']:.0f} us CPU/req), ratio {ratios[-1]:.3f}"
            )
    return {
        "ratio": median(ratios),
        "ratios": ratios,
        "echo_rps": median(echo_rates),
        "minimal_rps": median(minimal_rates),
        "echo_cpu_us": median(echo_cpu),
        "minimal_cpu_us": median(minimal_cpu),
    }


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    pairs, limit = (1, 1000) if args.quick else (3, 20000)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        dataset = make_prompt_dataset(Path(tmp) / "prompts.parquet", limit)
        r = compare(dataset, pairs, limit, SERVER_WORKERS)
    emit(
        "server.echo_vs_minimal_rps_ratio",
        r["ratio"],
        f">= {TOLERANCE}",
        r["ratio"] >= TOLERANCE,
        echo_workers=SERVER_WORKERS,
        echo_rps=r["echo_rps"],
        minimal_rps=r["minimal_rps"],
        ratios=r["ratios"],
        requests=limit,
        pairs=pairs,
        concurrency=CONCURRENCY,
        quick=args.quick,
        machine=machine(),
    )
    emit(
        "server.echo_cpu_us_per_request",
        r["echo_cpu_us"],
        "informational",
        None,
        minimal_cpu_us_per_request=r["minimal_cpu_us"],
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
