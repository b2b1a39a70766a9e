"""Streaming: the client's cost per token of a streamed answer is flat from 1,000 to 50,000 tokens.

`sentech-eval serve --engine echo --output-tokens N` (its own process, no pacing, so it streams as
fast as it can) answers every request with exactly N tokens, one SSE event each, usage on the last
chunk. This process reads the answers with the remote backend (``backend.stream=true``: TTFT,
one inter-token gap per chunk, TPOT) and measures its own CPU time (``time.process_time``) per
token, for N = 1,000 and N = 50,000, alternating (A B A B …) so load on the machine hits both.
Flat means the 50k figure is within 25 % of the 1k one: no buffer that grows with the answer
(aiohttp's 64 KB read buffer made vLLM's client quadratic on long answers, vLLM #39963).
"""

from __future__ import annotations

import asyncio
import time

from common import BENCH_KEY, arg_parser, echo_server, emit, log, machine, median

FLAT_TARGET = 1.25


async def _read(url: str, requests: int) -> tuple[float, int]:
    """CPU seconds and tokens for ``requests`` streamed answers read one after another."""
    from sentech_eval.backends.remote import RemoteBackend
    from sentech_eval.types import Sampling

    backend = RemoteBackend(url, "m", BENCH_KEY, stream=True, timeout_s=600)
    messages = [{"role": "user", "content": "Tell me a long story."}]
    try:
        await backend.complete(messages, Sampling())  # connection and first-call set-up: not measured
        tokens, cpu0 = 0, time.process_time()
        for _ in range(requests):
            c = await backend.complete(messages, Sampling())
            if c.status != "ok":
                raise RuntimeError(f"streamed request failed: {c.error}")
            if len(c.itl_s) != c.completion_tokens - 1:
                raise RuntimeError(f"{len(c.itl_s)} gaps for {c.completion_tokens} tokens")
            tokens += c.completion_tokens
        return time.process_time() - cpu0, tokens
    finally:
        await backend.aclose()


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    short, long = (1000, 5000) if args.quick else (1000, 50_000)
    rounds = 1 if args.quick else 3
    per_token = {short: [], long: []}
    with echo_server(output_tokens=short) as s_server, echo_server(output_tokens=long) as l_server:
        for i in range(rounds):
            for n, server in ((short, s_server), (long, l_server)):
                requests = max(1, 100_000 // n) if not args.quick else 2
                cpu, tokens = asyncio.run(_read(server.url, requests))
                per_token[n].append(cpu / tokens * 1e6)
                log(f"round {i + 1}/{rounds}: {n}-token answers x{requests}: {per_token[n][-1]:.2f} us CPU/token")
    ratio = median(per_token[long]) / median(per_token[short])
    emit(
        "stream.client_cpu_per_token_ratio_50k_vs_1k",
        ratio,
        f"<= {FLAT_TARGET}",
        bool(ratio <= FLAT_TARGET),
        us_per_token_1k=median(per_token[short]),
        us_per_token_50k=median(per_token[long]),
        each_1k=per_token[short],
        each_50k=per_token[long],
        long_tokens=long,
        quick=args.quick,
        machine=machine(),
    )


if __name__ == "__main__":
    main()
