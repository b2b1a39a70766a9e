"""The remote backend's reading of a streamed answer: OpenAI-style server-sent events into a Completion.

``read_stream`` reads ``data:`` lines until ``data: [DONE]``: ``ttft_s`` at the first chunk with
non-empty content, ``itl_s`` the gaps between content chunks, token counts from the server's usage
(else one content chunk is one token). A stream cut short, a chunk that is not JSON, an error
reported mid-way or a stream beyond ``backend.max_response_mb`` each become an error row that keeps
the text received so far.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from sentech_eval.backends.remote_answers import (
    ResponseTooLarge,
    error_message,
    int_or_none,
    json_problem,
    payload_reason,
    snippet,
    usage_problem,
)
from sentech_eval.types import Completion


async def sse_lines(resp: aiohttp.ClientResponse, max_bytes: int) -> AsyncIterator[bytes]:
    """The stream's lines, of any length (aiohttp's own readline stops at its buffer size); capped in total.

    A line ends at CRLF, LF or a lone CR (the SSE spec allows all three); a CR at the end of a chunk waits
    for the next one (it may be the first half of a CRLF).
    """
    pending = bytearray()
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            resp.close()
            raise ResponseTooLarge(size)
        pending += chunk
        if b"\n" not in chunk and b"\r" not in chunk:
            continue  # a long line grows in place until its end arrives
        text = bytes(pending)
        held = b""
        if text.endswith(b"\r"):  # maybe half of a CRLF: decide when the next chunk comes
            text, held = text[:-1], b"\r"
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, tail = text.split(b"\n")
        pending = bytearray(tail + held)
        for line in lines:
            yield line
    if pending:
        yield bytes(pending).rstrip(b"\r")


async def read_stream(
    resp: aiohttp.ClientResponse,
    start: float,
    *,
    max_response_mb: float,
    redact: Callable[[bytes], bytes],
) -> Completion:
    """Read OpenAI-style SSE chunks; ttft_s at the first chunk with non-empty content, itl_s the
    gaps between content chunks; token counts from the server's usage, else the content chunks.

    ``start`` is the request's ``time.perf_counter()``; ``redact`` blanks the key out of raw bytes
    before any of them go into an error text.
    """
    pieces: list[str] = []
    times: list[float] = []  # perf_counter at each content chunk
    clock = time.perf_counter
    ttft = None
    finish_reason = None
    response_model = None
    usage: dict[str, Any] = {}
    done = False
    try:
        async for line in sse_lines(resp, int(max_response_mb * 1024 * 1024)):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                return Completion(
                    status="error",
                    output="".join(pieces) or None,
                    ttft_s=ttft,
                    error=f"stream chunk is not valid JSON ({json_problem(exc)}): {snippet(redact(payload))!r}",
                )
            if not isinstance(chunk, dict):
                return Completion(
                    status="error",
                    output="".join(pieces) or None,
                    ttft_s=ttft,
                    error=f"stream chunk is a JSON {type(chunk).__name__}, not an object",
                )
            if "choices" not in chunk and ("message" in chunk or "error" in chunk):
                return Completion(
                    status="error",
                    output="".join(pieces) or None,
                    ttft_s=ttft,
                    retryable=True,
                    error="the stream reported an error mid-way: " + error_message(200, redact(payload))[10:],
                )
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            if response_model is None and isinstance(chunk.get("model"), str):
                response_model = chunk["model"]
            choices = chunk.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    now = clock()
                    if ttft is None:
                        ttft = now - start
                    times.append(now)
                    pieces.append(content)
                if isinstance(choice.get("finish_reason"), str):
                    finish_reason = choice["finish_reason"]
    except aiohttp.ClientPayloadError as exc:
        output = "".join(pieces)
        return Completion(
            status="error",
            output=output or None,
            ttft_s=ttft,
            retryable=True,
            error=f"the stream was cut mid-way (the connection closed before 'data: [DONE]' after "
            f"{len(output)} characters: {payload_reason(exc)})",
        )
    except ResponseTooLarge:
        output = "".join(pieces)
        return Completion(
            status="error",
            output=output or None,
            ttft_s=ttft,
            error=f"the stream is larger than backend.max_response_mb={max_response_mb:g} "
            "(not read further); raise backend.max_response_mb if answers this large are expected",
        )
    output = "".join(pieces)
    if not done:
        return Completion(
            status="error",
            output=output or None,
            ttft_s=ttft,
            retryable=True,
            error=f"the stream was cut mid-way (ended before 'data: [DONE]' after {len(output)} characters)",
        )
    if not output.strip() and finish_reason is not None:
        return Completion(status="error", error="stream finished with empty content", finish_reason=finish_reason)
    problem = usage_problem(usage)
    if problem is not None:
        return Completion(
            status="error",
            error=problem,
            output=output,
            finish_reason=finish_reason,
            ttft_s=ttft,
            response_model=response_model,
        )
    if finish_reason is None:  # [DONE] but no choice ever finished: the server gave up on this answer
        return Completion(
            status="error",
            output=output or None,
            ttft_s=ttft,
            retryable=True,
            error=f"the stream ended without a finish_reason after {len(output)} characters: cut "
            "short by the server (llama_cpp.server: start it with --interrupt_requests false)",
        )
    prompt_tokens = int_or_none(usage.get("prompt_tokens"))
    completion_tokens = int_or_none(usage.get("completion_tokens"))
    total_tokens = int_or_none(usage.get("total_tokens"))
    if completion_tokens is not None:
        usage_source = "server"
    else:  # a server that sends no usage: one content chunk is one token (as vLLM's client counts)
        usage_source, completion_tokens = "chunks", len(times)
        if prompt_tokens is not None:
            total_tokens = prompt_tokens + completion_tokens
    return Completion(
        output=output,
        finish_reason=finish_reason,
        ttft_s=ttft,
        response_model=response_model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=total_tokens,
        itl_s=[b - a for a, b in zip(times, times[1:])],
        usage_source=usage_source,
    )
