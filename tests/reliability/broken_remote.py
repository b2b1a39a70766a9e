"""A purpose-built misbehaving HTTP server standing for a broken remote host.

`sentech-eval serve` is a well-behaved server and cannot produce these answers; this tiny aiohttp
app does, on a loopback port. It picks its misbehaviour from the last user message of each
request (``"case:<name>"``), so one dataset exercises every case in one run, and counts the
requests it got per case (to check what was retried).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from aiohttp import web
from reliability_support import app_in_thread

GOOD_MESSAGE = {"role": "assistant", "content": "fine"}


def _completion(message: dict | None = GOOD_MESSAGE, **extra) -> bytes:
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return orjson.dumps({"id": "x", "object": "chat.completion", "choices": [choice], **extra})


def _sse(*chunks: dict | bytes) -> bytes:
    out = b""
    for chunk in chunks:
        out += b"data: " + (chunk if isinstance(chunk, bytes) else orjson.dumps(chunk)) + b"\n\n"
    return out


def _delta(text: str) -> dict:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


async def _cut_after(request: web.Request, head: bytes, declared: int | None, content_type: str) -> web.StreamResponse:
    """Send ``head`` of a longer body, then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    if declared is not None:
        response.content_length = declared
    await response.prepare(request)
    await response.write(head)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response


class BrokenRemote:
    """The app and its per-case request counts."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.authorization: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        case = body["messages"][-1]["content"].removeprefix("case:")
        self.hits[case] += 1
        self.authorization.append(request.headers.get("Authorization", ""))
        json_type = {"Content-Type": "application/json"}
        if case == "ok":
            return web.Response(body=_completion(), headers=json_type)
        if case == "non_json":
            return web.Response(body=b"this is not json at all", headers=json_type)
        if case == "html_page":
            return web.Response(
                body=b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>hi</body></html>",
                headers={"Content-Type": "text/html"},
            )
        if case == "html_error":
            return web.Response(
                status=502,
                body=b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                headers={"Content-Type": "text/html"},
            )
        if case == "missing_choices":
            return web.Response(body=orjson.dumps({"id": "x", "object": "chat.completion"}), headers=json_type)
        if case == "empty_content":
            return web.Response(body=_completion({"role": "assistant", "content": ""}), headers=json_type)
        if case == "null_content":
            return web.Response(body=_completion({"role": "assistant", "content": None}), headers=json_type)
        if case == "wrong_content_type":
            return web.Response(body=_completion(), headers={"Content-Type": "text/plain"})
        if case == "truncated_body":
            full = _completion()
            return await _cut_after(request, full[:25], len(full), "application/json")
        if case == "truncated_json":
            return web.Response(body=_completion()[:25], headers=json_type)
        if case == "stream_cut":
            head = _sse(_delta("The ans"), _delta("wer is"))
            return await _cut_after(request, head, None, "text/event-stream")
        if case == "stream_error":
            payload = _sse(_delta("The"), {"message": "Internal server error", "error": "engine crashed"})
            return web.Response(body=payload, headers={"Content-Type": "text/event-stream"})
        if case == "stream_garbage":
            return web.Response(
                body=_sse(_delta("a"), b"[1, 2]", b"[DONE]"), headers={"Content-Type": "text/event-stream"}
            )
        if case == "echo_key":  # a server that quotes the credential back in its error
            return web.Response(
                status=400,
                body=orjson.dumps({"message": f"bad request from {request.headers['Authorization']}"}),
                headers=json_type,
            )
        if case.startswith("status_"):
            status = int(case.removeprefix("status_"))
            return web.Response(status=status, body=orjson.dumps({"message": f"status {status}"}), headers=json_type)
        raise AssertionError(f"unknown case {case}")


@contextmanager
def broken_remote() -> Iterator[tuple[str, BrokenRemote]]:
    """Serve the broken app on a free loopback port; yields (base_url, app state)."""
    state = BrokenRemote()

    def make_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", state.handle)
        return app

    with app_in_thread(make_app) as port:
        yield f"http://127.0.0.1:{port}/v1", state
