"""A hostile HTTP server: a real aiohttp app on a loopback port whose answers attack the client.

`sentech-eval serve` is well-behaved, and ``broken_remote.py`` is merely broken; this host sends
what an adversary (or a badly broken proxy) would: numbers out of range, endless lines and bodies,
redirects to other hosts, absurd ``Retry-After`` values, and the caller's own key quoted back.
Each request picks its mode from the last user message (``"mode:<name>"``), so one dataset runs
every mode in one `sentech-eval run`; the server counts requests per mode and records what it got.

Modes (by class):

- numbers: ``usage_overflow`` (2**64-1), ``usage_negative``, ``usage_huge`` (10**12), ``usage_large_valid``
  (9×10^8: in range, but far beyond what the request could use), ``usage_float``
  (3.5), ``usage_string`` ("12"), ``usage_bool``, ``stream_usage_overflow``.
- sizes: ``long_sse_line`` (one SSE line of ``LONG_LINE_BYTES``), ``huge_body`` (declared length),
  ``huge_chunked`` (no length), ``huge_error`` (a 500 with a chunked body far beyond any cap),
  ``gzip_bomb`` (small on the wire, huge decoded), ``long_header`` (a header line over aiohttp's limit).
- redirects: ``redirect_301_cross``/``redirect_302_cross``/``redirect_307_cross``/``redirect_308_cross``
  (to ``other_origin``), ``redirect_307_same``/``redirect_308_same`` (to ``/v2/chat/completions`` here),
  ``redirect_loop``; ``/v2/chat/completions`` answers ok only to a POST with the prompt.
- Retry-After: ``retry_after_huge`` (429, 86400), ``retry_after_400`` (400, 3600), ``retry_after_date``
  (503, a date a day ahead), ``retry_after_garbage`` (503, "nan"), ``retry_after_inf`` (429, "inf").
- key: ``key_cut`` (non-JSON error body with the key placed across the 160-character cut),
  ``key_prefix`` (a JSON error quoting 3/4 of the key), ``key_in_output`` (a 200 quoting the key),
  ``key_in_stream`` (an SSE answer quoting it), ``key_in_finish_reason``, ``key_in_html`` (an HTML
  title), ``key_in_location`` (a redirect whose Location carries it), ``key_suffix`` (the last 3/4),
  ``key_in_model`` / ``key_in_stream_model`` (the answer's ``model`` field), and the key JSON-escaped
  (``\\u0073k-…``: only the decoded value shows it) in ``key_escaped_in_model``, ``key_escaped_in_output``,
  ``key_escaped_in_stream``, ``key_escaped_in_error``; ``key_percent_in_location`` (percent-encoded).
- text: ``invalid_utf8``, ``lone_surrogate``, ``deep_json``.
- SSE line endings: ``sse_cr`` (events separated by a lone CR), ``sse_crlf``, ``sse_mixed``.
- ``set_cookie`` sets a new 1 KB cookie on every answer (``cookies_received`` shows what came back);
  ``queries`` records every request's query string (``backend.base_url`` with ``?api-version=…``).
- capacity: ``capacity=<value>`` answers ok with ``X-Sentech-Capacity: <value>`` (garbage, huge, negative…).
- ``ok`` answers normally.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from aiohttp import web
from reliability_support import app_in_thread

LONG_LINE_BYTES = (
    900_000  # one SSE line well past aiohttp's readline buffer and the old 512 KiB limit (under the 1 MB cap)
)
HUGE_BYTES = 8 * 1024 * 1024  # beyond the max_response_mb=1 the tests set
JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}


def completion(content: str = "fine", usage: dict | None = None, finish_reason: str = "stop") -> bytes:
    """A well-formed chat completion body."""
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4} if usage is None else usage
    return orjson.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "hostile",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": usage,
        }
    )


def json_escaped(text: str) -> str:
    """``text`` with every character written as a JSON ``\\uXXXX`` escape (``sk-1`` -> ``\\u0073\\u006b…``)."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


FINISH = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def sse(*chunks: dict | bytes) -> bytes:
    """An SSE body of ``chunks``, a finishing chunk (``finish_reason: stop``), then ``[DONE]``."""
    out = b""
    for chunk in (*chunks, FINISH):
        out += b"data: " + (chunk if isinstance(chunk, bytes) else orjson.dumps(chunk)) + b"\n\n"
    return out + b"data: [DONE]\n\n"


def delta(text: str, usage: dict | None = None) -> dict:
    """One streamed chunk carrying ``text``."""
    chunk: dict = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


class HostileServer:
    """The app's state: request counts per mode, and what the /v2 target and the other origin received."""

    def __init__(self, other_origin: str = "http://127.0.0.1:9") -> None:
        self.hits: Counter[str] = Counter()
        self.v2_requests: list[tuple[str, bytes]] = []  # (method, body) received at /v2/chat/completions
        self.other_origin = other_origin
        self.base = ""  # this server's own origin, set when it listens
        self.queries: list[str] = []  # the query string of every request to /v1/chat/completions
        self.cookies_received: list[str] = []  # the Cookie header of every request ("" for none)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = body["messages"][-1]["content"].removeprefix("mode:")
        self.hits[mode] += 1
        self.queries.append(request.query_string)
        self.cookies_received.append(request.headers.get("Cookie", ""))
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        stream = bool(body.get("stream"))
        return await self.answer(request, mode, key, stream)

    async def answer(self, request: web.Request, mode: str, key: str, stream: bool) -> web.StreamResponse:  # noqa: C901
        if mode == "ok":
            return web.Response(body=completion(), headers=JSON)
        if mode == "set_cookie":  # a server that sets a fresh 1 KB cookie on every answer
            response = web.Response(body=completion(), headers=JSON)
            response.set_cookie(f"c{sum(self.hits.values())}", "v" * 1000)
            return response
        # ---- SSE line endings: the spec allows CRLF, LF and a lone CR
        if mode in ("sse_cr", "sse_crlf", "sse_mixed"):
            body = sse(delta("fi"), delta("ne"))
            if mode == "sse_cr":
                body = body.replace(b"\n", b"\r")
            elif mode == "sse_crlf":
                body = body.replace(b"\n", b"\r\n")
            else:
                body = body.replace(b"\n\n", b"\r\r", 1).replace(b"\n\n", b"\r\n\r\n", 1)
            return web.Response(body=body, headers=SSE)
        if mode.startswith("capacity="):
            return web.Response(body=completion(), headers={**JSON, "X-Sentech-Capacity": mode.partition("=")[2]})
        # ---- numbers
        usage_cases = {
            "usage_overflow": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 18446744073709551615},
            "usage_negative": {"prompt_tokens": -5, "completion_tokens": 1, "total_tokens": 4},
            "usage_huge": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 10**12},
            "usage_large_valid": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 900_000_000},
            "usage_float": {"prompt_tokens": 3.5, "completion_tokens": 1, "total_tokens": 4},
            "usage_string": {"prompt_tokens": "12", "completion_tokens": 1, "total_tokens": 4},
            "usage_bool": {"prompt_tokens": True, "completion_tokens": 1, "total_tokens": 4},
        }
        if mode in usage_cases:
            return web.Response(body=completion(usage=usage_cases[mode]), headers=JSON)
        if mode == "stream_usage_overflow":
            usage = json.dumps({"prompt_tokens": 2**70, "completion_tokens": 1, "total_tokens": 2})  # beyond orjson
            return web.Response(body=sse(delta("fine"), f'{{"choices": [], "usage": {usage}}}'.encode()), headers=SSE)
        # ---- sizes
        if mode == "long_sse_line":
            return web.Response(body=sse(delta("x" * LONG_LINE_BYTES)), headers=SSE)
        if mode in ("huge_body", "huge_chunked", "huge_error"):
            response = web.StreamResponse(status=500 if mode == "huge_error" else 200, headers=JSON)
            if mode == "huge_body":
                response.content_length = HUGE_BYTES
            await response.prepare(request)
            try:
                piece = b" " * 65536
                for _ in range(HUGE_BYTES // len(piece)):
                    await response.write(piece)
            except (ConnectionError, RuntimeError):
                pass  # the client stopped reading: what it should do
            return response
        if mode == "gzip_bomb":
            packed = gzip.compress(b'{"choices": [{"message": {"content": "' + b"a" * HUGE_BYTES + b'"}}]}')
            return web.Response(body=packed, headers={**JSON, "Content-Encoding": "gzip"})
        if mode == "long_header":
            return web.Response(body=completion(), headers={**JSON, "X-Long": "h" * 20000})
        # ---- redirects
        if mode.startswith("redirect_"):
            _, status, where = mode.split("_")
            if where == "loop":
                return web.Response(status=307, headers={"Location": "/v1/chat/completions"})
            target = f"{self.other_origin}/v1/chat/completions" if where == "cross" else "/v2/chat/completions"
            return web.Response(status=int(status), headers={"Location": target})
        # ---- Retry-After
        retry_cases = {
            "retry_after_huge": (429, "86400"),
            "retry_after_400": (400, "3600"),
            "retry_after_date": (503, "Fri, 31 Dec 2100 23:59:59 GMT"),
            "retry_after_garbage": (503, "nan"),
            "retry_after_inf": (429, "inf"),
        }
        if mode in retry_cases:
            status, value = retry_cases[mode]
            return web.Response(
                status=status,
                body=orjson.dumps({"message": f"status {status}"}),
                headers={**JSON, "Retry-After": value},
            )
        # ---- the key quoted back
        if mode == "key_cut":  # the key straddles the 160-character snippet cut
            return web.Response(
                status=400,
                body=("e" * (160 - len(key) // 2) + key + " and more").encode(),
                headers={"Content-Type": "text/plain"},
            )
        if mode == "key_prefix":
            return web.Response(
                status=400, body=orjson.dumps({"message": f"bad key {key[: len(key) * 3 // 4]}"}), headers=JSON
            )
        if mode == "key_suffix":
            return web.Response(
                status=400, body=orjson.dumps({"message": f"bad key …{key[len(key) // 4 :]}"}), headers=JSON
            )
        if mode == "key_in_output":
            return web.Response(body=completion(content=f"Your key is {key}. Also Bearer {key}"), headers=JSON)
        if mode == "key_in_stream":
            return web.Response(body=sse(delta("Your key is "), delta(key[:10]), delta(key[10:])), headers=SSE)
        if mode == "key_in_finish_reason":
            return web.Response(body=completion(finish_reason=key), headers=JSON)
        if mode == "key_in_html":
            return web.Response(
                status=502,
                body=f"<html><head><title>{key}</title></head></html>".encode(),
                headers={"Content-Type": "text/html"},
            )
        if mode in ("key_in_model", "key_escaped_in_model"):  # the answer's own "model" field names the key
            quoted = json_escaped(key) if mode == "key_escaped_in_model" else key
            return web.Response(
                body=completion().replace(b'"model":"hostile"', f'"model":"{quoted}"'.encode()), headers=JSON
            )
        if mode == "key_in_stream_model":
            chunk = {**delta("fine"), "model": key}
            return web.Response(body=sse(chunk), headers=SSE)
        if mode == "key_escaped_in_output":  # JSON-escaped on the wire: only the decoded value shows the key
            return web.Response(body=completion().replace(b"fine", f"key {json_escaped(key)}".encode()), headers=JSON)
        if mode == "key_escaped_in_stream":
            return web.Response(
                body=sse(f'{{"choices":[{{"index":0,"delta":{{"content":"{json_escaped(key)}"}}}}]}}'.encode()),
                headers=SSE,
            )
        if mode == "key_escaped_in_error":
            body = f'{{"error": {{"message": "bad key {json_escaped(key)}"}}}}'.encode()
            return web.Response(status=400, body=body, headers=JSON)
        if mode == "key_percent_in_location":
            encoded = "".join(f"%{ord(c):02X}" for c in key)
            return web.Response(status=301, headers={"Location": f"{self.other_origin}/v1?next={encoded}"})
        if mode == "key_in_location":
            return web.Response(status=301, headers={"Location": f"{self.other_origin}/v1?token={key}"})
        # ---- text
        if mode == "invalid_utf8":
            return web.Response(body=completion().replace(b"fine", b"fi\xff\xfene"), headers=JSON)
        if mode == "lone_surrogate":
            return web.Response(body=completion().replace(b"fine", b"fi\\ud800ne"), headers=JSON)
        if mode == "deep_json":
            return web.Response(body=b"[" * 5000 + b"]" * 5000, headers=JSON)
        raise AssertionError(f"unknown mode {mode}")

    async def v2(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.v2_requests.append((request.method, body))
        if request.method != "POST" or not body:
            return web.Response(status=200, body=completion(content="GET with no body"), headers=JSON)
        return web.Response(body=completion(content="moved fine"), headers=JSON)


@contextmanager
def hostile_server(other_origin: str = "http://127.0.0.1:9") -> Iterator[tuple[str, HostileServer]]:
    """Serve the hostile app on a free loopback port; yields (base_url ending in /v1, state)."""
    state = HostileServer(other_origin)

    def make_app() -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", state.handle)
        app.router.add_route("*", "/v2/chat/completions", state.v2)
        return app

    with app_in_thread(make_app) as port:
        state.base = f"http://127.0.0.1:{port}"
        yield f"{state.base}/v1", state
