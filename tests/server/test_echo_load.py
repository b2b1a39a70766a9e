"""The echo engine's serving knobs: capacity with FIFO queueing, TTFT, per-stream token pacing,
fixed output length, and usage in streams (always / requested / never)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from sentech_eval.server.engines import Capacity, ChatRequest, EchoEngine
from sentech_eval.server.testing import running_server
from sentech_eval.types import Sampling

KEY = "load-key"


def _body(content: str = "one two three", **fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **fields}


async def _post(session, url, body):
    async with session.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        return r.status, await r.read()


async def _stream_events(session, url, body) -> tuple[list[dict], list[float]]:
    """The JSON events of one streamed answer and the time each arrived."""
    events, times = [], []
    async with session.post(
        url + "/chat/completions", json={**body, "stream": True}, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: {"):
                events.append(orjson.loads(line[6:]))
                times.append(time.perf_counter())
    return events, times


def test_capacity_is_first_in_first_out_and_never_exceeded():
    async def main():
        capacity = Capacity(2)
        order, peak = [], []

        async def user(i):
            await capacity.acquire()
            peak.append(capacity.busy)
            order.append(i)
            await asyncio.sleep(0.01)
            capacity.release()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.ensure_future(user(i)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)
        return order, peak, capacity.busy

    order, peak, busy = asyncio.run(main())
    assert order == list(range(8))
    assert max(peak) == 2 and busy == 0


def test_capacity_cancelled_waiter_does_not_leak_a_slot():
    async def main():
        capacity = Capacity(1)
        await capacity.acquire()
        waiter = asyncio.ensure_future(capacity.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        capacity.release()
        await asyncio.wait_for(capacity.acquire(), 1)  # the slot is free again
        return capacity.busy

    assert asyncio.run(main()) == 1


def test_capacity_queues_requests_so_throughput_saturates_at_capacity_over_service_time():
    # capacity 4, 100 ms per request: 12 requests at once finish in three waves (0.1, 0.2, 0.3 s);
    # the i-th answer can never come before its wave (lower bounds hold on a loaded machine too)
    async def main(url):
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()

            async def one():
                status, _ = await _post(session, url, _body())
                assert status == 200
                return time.perf_counter() - start

            return sorted(await asyncio.gather(*[one() for _ in range(12)]))

    with running_server(api_key=KEY, ttft_ms=100, capacity=4, subprocess=True) as url:
        done = asyncio.run(main(url))
    for i, t in enumerate(done):
        assert t >= 0.1 * (i // 4 + 1) - 0.005, (i, done)
    assert done[-1] < 1.0  # and nothing waits longer than its queue (3 waves, generous for a busy machine)


def test_stream_pacing_is_ttft_then_one_token_per_interval():
    # first token at 80 ms, then one every 20 ms on an absolute schedule: token i never comes
    # before 80 + 20 i ms (a late token does not push the later ones back)
    async def main(url):
        async with aiohttp.ClientSession() as session:
            await _post(session, url, _body())  # connect first: the timed request reuses the connection
            start = time.perf_counter()
            events, times = await _stream_events(session, url, _body())
            return events, [t - start for t in times]

    with running_server(api_key=KEY, ttft_ms=80, tokens_per_s=50, output_tokens=6, subprocess=True) as url:
        events, times = asyncio.run(main(url))
    content_times = [t for e, t in zip(events, times) if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content_times) == 6
    for i, t in enumerate(content_times):
        assert t >= 0.080 + 0.020 * i - 0.003, (i, content_times)
    assert content_times[-1] < 0.080 + 0.020 * 5 + 0.25


def test_output_tokens_fixes_the_length_and_max_tokens_still_cuts():
    engine = EchoEngine(output_tokens=50, datasets_dir=None)
    gen = asyncio.run(engine.complete(ChatRequest(messages=[{"role": "user", "content": "Paris is nice"}])))
    assert gen.completion_tokens == 50 and len(gen.text.split()) == 50
    assert gen.text.startswith("Paris is nice ") and gen.finish_reason == "stop"
    cut = asyncio.run(
        engine.complete(ChatRequest(messages=[{"role": "user", "content": "x"}], sampling=Sampling(max_tokens=7)))
    )
    assert cut.completion_tokens == 7 and cut.finish_reason == "length"


@pytest.mark.parametrize(
    "mode, include_usage, expect",
    [
        ("always", False, "on the finish chunk"),
        ("always", True, "own chunk"),
        ("requested", False, "none"),
        ("requested", True, "own chunk"),
        ("never", True, "none"),
    ],
)
def test_stream_usage_modes(mode, include_usage, expect):
    body = _body(stream_options={"include_usage": True}) if include_usage else _body()

    async def main(url):
        async with aiohttp.ClientSession() as session:
            return (await _stream_events(session, url, body))[0]

    with running_server(api_key=KEY, stream_usage=mode) as url:
        events = asyncio.run(main(url))
    with_usage = [e for e in events if e.get("usage")]
    if expect == "none":
        assert not with_usage
        return
    assert len(with_usage) == 1 and with_usage[0]["usage"]["completion_tokens"] == 3
    if expect == "own chunk":
        assert with_usage[0]["choices"] == [] and events[-1] is with_usage[0]
    else:
        assert with_usage[0]["choices"][0]["finish_reason"] == "stop"


def test_bad_stream_options_is_a_400_naming_the_field():
    async def main(url):
        async with aiohttp.ClientSession() as session:
            return (
                await _post(session, url, _body(stream=True, stream_options={"include_usage": "yes"})),
                await _post(session, url, _body(stream=True, stream_options=[1])),
            )

    with running_server(api_key=KEY) as url:
        (s1, b1), (s2, b2) = asyncio.run(main(url))
    assert s1 == 400 and b"stream_options.include_usage must be a boolean" in b1
    assert s2 == 400 and b"stream_options must be an object" in b2


def test_serve_rejects_bad_knobs_in_one_sentence():
    from sentech_eval.commands.serve import parse_config
    from sentech_eval.errors import ConfigError

    for flags, text in (
        (["--capacity", "0"], "--capacity must be >= 1"),
        (["--ttft-ms", "-1"], "--ttft-ms must be >= 0"),
        (["--output-tokens", "0"], "--output-tokens must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=text):
            parse_config(["--no-auth", *flags])
