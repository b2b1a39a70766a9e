"""Streaming token metrics of the remote backend against the real `serve` with known pacing:
TTFT, inter-token latencies, TPOT, the identity latency - ttft = sum(itl), and where token
counts come from (the server's usage, or the content chunks when a server sends none)."""

from __future__ import annotations

import asyncio

import pytest

from sentech_eval.backends.remote import RemoteBackend
from sentech_eval.server.testing import running_server
from sentech_eval.types import Sampling

KEY = "stream-key"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _complete(url: str, *, stream: bool = True, include_usage: bool = True, sampling: Sampling = Sampling()):
    async def main():
        backend = RemoteBackend(url, "m", KEY, stream=stream, include_usage=include_usage, timeout_s=30)
        try:
            return await backend.complete(MESSAGES, sampling)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def test_known_pacing_gives_ttft_itl_tpot_and_the_identity_holds():
    # first token after 60 ms, then one every 10 ms: 25 tokens
    # (the server in its own process: on a loaded machine a shared GIL would blur the timings)
    with running_server(
        api_key=KEY, ttft_ms=60, tokens_per_s=100, output_tokens=25, stream_usage="requested", subprocess=True
    ) as url:
        results = [_complete(url) for _ in range(3)]
    for c in results:
        assert c.status == "ok", c.error
        assert c.usage_source == "server" and c.completion_tokens == 25  # stream_options was sent and honoured
        assert len(c.itl_s) == 24
        assert 0.055 <= c.ttft_s <= 0.5
        assert all(gap >= 0.0 for gap in c.itl_s)
        # the server paces tokens on an absolute schedule: the last comes 24 intervals after the first
        assert 0.2 <= sum(c.itl_s) <= 0.35
        # latency - ttft = sum(itl): everything after the first token is the gaps, plus only the
        # end of the stream (the finishing chunk and [DONE] right after the last token)
        tail = (c.latency_s - c.ttft_s) - sum(c.itl_s)
        assert 0.0 <= tail <= 0.01
        assert c.tpot_s == pytest.approx((c.latency_s - c.ttft_s) / 24)
        assert c.tpot_s == pytest.approx(0.010, abs=0.004)


def test_a_server_without_usage_gets_its_content_chunks_counted():
    with running_server(api_key=KEY, output_tokens=12, stream_usage="never") as url:
        c = _complete(url)
    assert c.status == "ok" and c.usage_source == "chunks"
    assert c.completion_tokens == 12 == len(c.itl_s) + 1
    assert c.prompt_tokens is None and c.total_tokens is None


def test_without_include_usage_an_openai_style_server_sends_none():
    with running_server(api_key=KEY, output_tokens=5, stream_usage="requested") as url:
        asked, not_asked = _complete(url), _complete(url, include_usage=False)
    assert asked.usage_source == "server" and not_asked.usage_source == "chunks"
    assert asked.completion_tokens == not_asked.completion_tokens == 5


def test_unstreamed_answers_carry_server_usage_and_no_token_timings():
    with running_server(api_key=KEY, output_tokens=5) as url:
        c = _complete(url, stream=False)
    assert c.status == "ok" and c.usage_source == "server" and c.completion_tokens == 5
    assert c.itl_s is None and c.tpot_s is None and c.ttft_s is None


def test_include_usage_is_sent_only_when_streaming():
    backend = RemoteBackend("http://127.0.0.1:1/v1", "m", KEY, stream=True)
    assert backend.request_body(MESSAGES, Sampling())["stream_options"] == {"include_usage": True}
    assert "stream_options" not in RemoteBackend("http://127.0.0.1:1/v1", "m", KEY).request_body(MESSAGES, Sampling())
    off = RemoteBackend("http://127.0.0.1:1/v1", "m", KEY, stream=True, include_usage=False)
    assert "stream_options" not in off.request_body(MESSAGES, Sampling())
