"""The bare aiohttp client loop the runner is measured against (run in its own process).

The least a client can do for the same work: one ClientSession (connector limit = concurrency),
``concurrency`` worker coroutines pulling prompts from one iterator, the same JSON body as
`sentech-eval run backend=remote` (orjson-encoded per request), read and decode each response.
Prints one JSON object: request count, steady-state requests/s (5th–95th percentile of send
times, as for the runner), median latency and the raw send-time span.

    BENCH_API_KEY=k python benchmarks/bare_client.py --url http://127.0.0.1:P/v1 --dataset d.parquet
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import aiohttp
import orjson
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import steady_rate, steady_window  # noqa: E402


async def run(url: str, prompts: list[str], template: dict, concurrency: int, key: str) -> dict:
    send_times: list[float] = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    items = iter(prompts)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    endpoint = url.rstrip("/") + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for prompt in items:
                data = orjson.dumps({**template, "messages": [{"role": "user", "content": prompt}]})
                send_times.append(time.time())
                start = time.perf_counter()
                async with session.post(endpoint, data=data) as resp:
                    raw = await resp.read()
                    orjson.loads(raw)
                latencies.append(time.perf_counter() - start)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "statuses": statuses,
        "steady_rps": steady_rate(send_times) if len(send_times) >= 20 else None,
        "steady_window": steady_window(send_times)[:2] if len(send_times) >= 20 else None,
        "steady_requests": steady_window(send_times)[2] if len(send_times) >= 20 else None,
        "overall_rps": len(latencies) / elapsed,
        "median_latency_s": statistics.median(latencies),
        "p99_latency_s": sorted(latencies)[int(0.99 * (len(latencies) - 1))],
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--dataset", required=True, help="Parquet file with a 'prompt' column")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only")
    parser.add_argument("--template", default="{}", help="JSON body fields besides messages")
    args = parser.parse_args()
    prompts = pq.read_table(args.dataset, columns=["prompt"]).column("prompt").to_pylist()[: args.limit]
    summary = asyncio.run(
        run(args.url, prompts, json.loads(args.template), args.concurrency, os.environ.get("BENCH_API_KEY", ""))
    )
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
