"""The Sentech contract as an aiohttp application: routing, auth, validation, JSON and SSE.

``POST /v1/chat/completions`` with ``Authorization: Bearer KEY`` and the seed's body answers

    {"id": "chatcmpl-…", "object": "chat.completion", "created", "model",
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"},
     "choices": [{"index": 0, "message": {"role": "assistant", "content"}, "finish_reason"}]}

or, with ``"stream": true``, OpenAI-style ``chat.completion.chunk`` Server-Sent Events ending in
``data: [DONE]``. Errors keep the seed's shapes: ``401 {"message": "Invalid API key."}``,
``400 {"message": "Messages must be a non-empty array."}``, any other bad request ``400
{"message": <one sentence>}``, too large ``413``, and ``500 {"message": "Internal server error",
"error": …}``. A bad request is never a 500. Faults (``faults.py``) are injected after auth.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from sentech_eval.server.engines import BadRequest, ChatRequest, Engine, Generation
from sentech_eval.server.faults import NO_FAULT, FaultConfig, FaultInjector
from sentech_eval.types import CAPACITY_HEADER, SAMPLING_RANGES, Sampling

log = logging.getLogger("sentech_eval.server")

CHAT_PATH = "/v1/chat/completions"
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB

INVALID_KEY = "Invalid API key."
EMPTY_MESSAGES = "Messages must be a non-empty array."
ROLES = frozenset(("system", "user", "assistant"))

_JSON = "application/json"
_JSON_HEADERS = {"Content-Type": _JSON}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(status=status, body=orjson.dumps(payload), headers=headers or _JSON_HEADERS)


def _message_response(status: int, message: str, **extra: str) -> web.Response:
    return json_response(status, {"message": message, **extra})


# ----------------------------------------------------------------------------------------- validation
def _describe(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"the string {shown!r}"
    if isinstance(value, (int, float)):
        return f"{value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# The sampling fields in request order with their ranges (types.SAMPLING_RANGES), as flat tuples
# for the per-request check: (name, low, high, low bound excluded) and (name, low, high).
_NUMBER_FIELDS = tuple((name, r.low, r.high, r.low_open) for name, r in SAMPLING_RANGES.items() if not r.integer)
_INTEGER_FIELDS = tuple((name, int(r.low), int(r.high)) for name, r in SAMPLING_RANGES.items() if r.integer)


def _number_problem(name: str, value: Any) -> BadRequest:
    if type(value) not in (int, float):
        return BadRequest(f"{name} must be a number, got {_describe(value)}.")
    return BadRequest(f"{name} must be {SAMPLING_RANGES[name].describe()}, got {value!r}.")


def _integer_value(name: str, value: Any, lo: int, hi: int) -> int:
    kind = type(value)
    if kind is float and value.is_integer():
        value = int(value)
    elif kind is not int:
        raise BadRequest(f"{name} must be an integer, got {_describe(value)}.")
    if value < lo:
        raise BadRequest(f"{name} must be at least {lo}, got {value}.")
    if value > hi:
        raise BadRequest(f"{name} must be at most {hi}, got {value}.")
    return value


def parse_request(body: Any) -> ChatRequest:
    """Validate a decoded body into a ``ChatRequest``; ``BadRequest`` names the first problem.

    This runs on every request, so the checks are plain type/range comparisons over
    precomputed field tables (no schema library, no regex).
    """
    if type(body) is not dict:
        raise BadRequest(f"The request body must be a JSON object, got {_describe(body)}.")
    get = body.get
    messages = get("messages")
    if type(messages) is not list or not messages:
        raise BadRequest(EMPTY_MESSAGES)
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise BadRequest(f"messages[{i}] must be an object with role and content, got {_describe(message)}.")
        role = message.get("role")
        if type(role) is not str or role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of system, user, assistant, got {_describe(role)}.")
        if type(message.get("content")) is not str:
            raise BadRequest(f"messages[{i}].content must be a string, got {_describe(message.get('content'))}.")
    model = get("model")
    if model is not None and type(model) is not str:
        raise BadRequest(f"model must be a string, got {_describe(model)}.")
    stream = get("stream")
    if stream is not None and type(stream) is not bool:
        raise BadRequest(f"stream must be a boolean, got {_describe(stream)}.")
    include_usage = False
    stream_options = get("stream_options")
    if stream_options is not None:  # OpenAI's {"include_usage": true}
        if type(stream_options) is not dict:
            raise BadRequest(f"stream_options must be an object, got {_describe(stream_options)}.")
        include_usage = stream_options.get("include_usage")
        if include_usage is not None and type(include_usage) is not bool:
            raise BadRequest(f"stream_options.include_usage must be a boolean, got {_describe(include_usage)}.")
        include_usage = include_usage is True
    numbers = []
    for name, lo, hi, lo_open in _NUMBER_FIELDS:
        value = get(name)
        if value is not None:
            kind = type(value)
            if (kind is not float and kind is not int) or value > hi or value < lo or (lo_open and value == lo):
                raise _number_problem(name, value)
        numbers.append(value)
    integers = []
    for name, lo, hi in _INTEGER_FIELDS:
        value = get(name)
        if value is not None and (type(value) is not int or value < lo or value > hi):
            value = _integer_value(name, value, lo, hi)
        integers.append(value)
    temperature, top_p, frequency_penalty, presence_penalty = numbers
    top_k, max_tokens, seed = integers
    sampling = Sampling(temperature, top_p, top_k, frequency_penalty, presence_penalty, max_tokens, seed)
    return ChatRequest(messages, model, sampling, stream is True, include_usage)


# ----------------------------------------------------------------------------------------- the app
@dataclass(frozen=True)
class ServerOptions:
    """How the app behaves besides its engine."""

    api_keys: tuple[str, ...] = ()
    no_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Usage in a stream: "always" (on the finishing chunk; in a chunk of its own when the client
    # sends stream_options.include_usage), "requested" (only then, as OpenAI and vLLM do) or
    # "never" (as llama_cpp.server does), so clients can be tested against each kind of server.
    stream_usage: str = "always"
    # Server processes sharing the port (`serve --workers`): the advertised capacity is the
    # engine's slots times this.
    workers: int = 1


STREAM_USAGE = ("always", "requested", "never")


class ChatServer:
    """Request handlers bound to one engine, its keys and its fault injector."""

    def __init__(self, engine: Engine, options: ServerOptions, seed: int = 0) -> None:
        self.engine = engine
        self.options = options
        self._keys = tuple(k.encode() for k in options.api_keys)
        self._auth = not options.no_auth
        self._max_body = options.max_body_bytes
        self._faults = FaultInjector(options.faults, seed) if options.faults.active else None
        self._echo_model = engine.answers_as_requested_model
        slots = engine.slots
        # How many requests this server answers at once (None: no limit), advertised in /health and
        # in a header of every answer, so a client can size its concurrency (more only queue here).
        self.capacity = slots * options.workers if slots else None
        advertised = {CAPACITY_HEADER: str(self.capacity)} if self.capacity else {}
        self._ok_headers = {**_JSON_HEADERS, **advertised}
        self._sse_headers = {**_SSE_HEADERS, **advertised}
        # ids: a random per-process prefix plus a counter (unique, and cheaper than urandom per request)
        prefix, counter = "chatcmpl-" + os.urandom(6).hex(), itertools.count(1)
        self._next_id = lambda: f"{prefix}{next(counter):012x}"
        self._too_large = f"The request body is larger than the limit of {self._max_body} bytes."

    # -- helpers
    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries an accepted key (constant-time compare)."""
        if not header or header[:7].lower() != "bearer ":
            return False
        try:
            token = header[7:].strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        ok = False
        for key in self._keys:  # no early exit: every key is compared
            ok |= hmac.compare_digest(token, key)
        return ok

    def _error_response(self, status: int) -> web.Response:
        if status == 500:
            return _message_response(500, "Internal server error", error="Injected fault (--error-rate).")
        headers = dict(_JSON_HEADERS)
        retry_after = self.options.faults.retry_after_s
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        message = (
            "Rate limit exceeded; retry later." if status == 429 else "Service temporarily unavailable; retry later."
        )
        return json_response(status, {"message": message}, headers)

    # -- handlers
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        if self._auth and not self.authorized(request.headers.get("Authorization")):
            return _message_response(401, INVALID_KEY)
        fault = self._faults.next() if self._faults is not None else NO_FAULT
        if fault.drop:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            return _drop_connection(request)
        length = request.content_length
        if length is not None and length > self._max_body:
            return _message_response(413, self._too_large)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _message_response(413, self._too_large)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.error_status is not None:
            return self._error_response(fault.error_status)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            reason = "the body is empty" if not raw.strip() else str(exc).split(":")[0].lower()
            return _message_response(400, f"The request body must be valid JSON ({reason}).")
        try:
            chat = parse_request(body)
        except BadRequest as exc:
            return _message_response(400, str(exc))
        # echo plays whatever model was asked for; a real engine names the model it actually ran
        model = (chat.model or self.engine.model) if self._echo_model else self.engine.model
        if chat.stream:
            return await self._stream(request, chat, model)
        try:
            gen = await self.engine.complete(chat)
        except BadRequest as exc:
            return _message_response(400, str(exc))
        except Exception as exc:  # an engine failure is the server's fault: 500 in the seed's shape
            log.exception("engine %s failed", self.engine.name)
            return _message_response(500, "Internal server error", error=f"{type(exc).__name__}: {exc}")
        return web.Response(
            body=orjson.dumps(
                {
                    "id": self._next_id(),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "usage": _usage(gen),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": gen.text},
                            "finish_reason": gen.finish_reason,
                        }
                    ],
                }
            ),
            headers=self._ok_headers,
        )

    async def _stream(self, request: web.Request, chat: ChatRequest, model: str) -> web.StreamResponse:
        head = {
            "id": self._next_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def event(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> bytes:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        events = self.engine.stream(chat)
        try:
            first = await anext(events)
        except BadRequest as exc:
            return _message_response(400, str(exc))
        except Exception as exc:  # nothing sent yet: a proper 500
            log.exception("engine %s failed", self.engine.name)
            return _message_response(500, "Internal server error", error=f"{type(exc).__name__}: {exc}")
        response = web.StreamResponse(status=200, headers=self._sse_headers)
        await response.prepare(request)
        await response.write(event({"role": "assistant"}))
        item: str | Generation = first
        try:
            while True:
                if isinstance(item, Generation):
                    mode = self.options.stream_usage
                    if chat.include_usage and mode != "never":  # OpenAI: a last chunk of its own, no choices
                        usage = b"data: " + orjson.dumps({**head, "choices": [], "usage": _usage(item)}) + b"\n\n"
                        await response.write(event({}, item.finish_reason) + usage + b"data: [DONE]\n\n")
                    elif mode == "always":
                        await response.write(event({}, item.finish_reason, _usage(item)) + b"data: [DONE]\n\n")
                    else:
                        await response.write(event({}, item.finish_reason) + b"data: [DONE]\n\n")
                    break
                await response.write(event({"content": item}))
                item = await anext(events)
        except ConnectionResetError:  # the client went away: stop generating, nothing to report
            await events.aclose()
            return response
        except asyncio.CancelledError:
            await events.aclose()
            raise
        except Exception as exc:  # headers are gone: report in-band and end without [DONE]
            log.exception("engine %s failed mid-stream", self.engine.name)
            payload = {"message": "Internal server error", "error": f"{type(exc).__name__}: {exc}"}
            await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the engine's model, OpenAI-style."""
        if self._auth and not self.authorized(request.headers.get("Authorization")):
            return _message_response(401, INVALID_KEY)
        return json_response(
            200, {"object": "list", "data": [{"id": self.engine.model, "object": "model", "owned_by": "sentech-eval"}]}
        )

    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: liveness without auth, and the capacity (requests answered at once; null = no limit)."""
        return json_response(
            200, {"status": "ok", "engine": self.engine.name, "model": self.engine.model, "capacity": self.capacity}
        )

    async def fallback(self, request: web.Request) -> web.Response:
        """Unknown routes (404) and wrong methods on known ones (405), always JSON."""
        if request.path == CHAT_PATH:
            return json_response(405, {"message": f"Use POST for {CHAT_PATH}."}, {**_JSON_HEADERS, "Allow": "POST"})
        return _message_response(404, f"Not found: {request.method} {request.path}; the API is POST {CHAT_PATH}.")


def _usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _drop_connection(request: web.Request) -> web.Response:
    """Close the connection without answering (simulates a network failure).

    The returned response is never sent: aiohttp's write fails on the aborted transport with a
    ConnectionError, which it treats as a client that went away (no traceback in the log).
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=499)


CHAT_SERVER = web.AppKey("chat_server", ChatServer)


def create_app(engine: Engine, options: ServerOptions | None = None, seed: int = 0) -> web.Application:
    """The aiohttp application: routes, body-size limit, engine start/stop hooks; ``seed`` seeds the faults."""
    options = options or ServerOptions()
    server = ChatServer(engine, options, seed)
    app = web.Application(client_max_size=options.max_body_bytes)
    app[CHAT_SERVER] = server
    app.router.add_post(CHAT_PATH, server.chat_completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/health", server.health)
    app.router.add_route("*", "/{tail:.*}", server.fallback)

    async def start_engine(_: web.Application) -> None:
        await engine.start()

    async def close_engine(_: web.Application) -> None:
        await engine.close()

    app.on_startup.append(start_engine)
    app.on_cleanup.append(close_engine)
    return app


async def start_site(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Start serving ``app`` on host:port (0 = a free port); returns the runner and the real port."""
    engine = app[CHAT_SERVER].engine
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # stop work for clients that left (a model generation); the echo engine has nothing to stop
        handler_cancellation=engine.cancel_on_disconnect,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound_port(site)


def bound_port(site: web.TCPSite) -> int:
    """The port a started site listens on."""
    server = site._server  # noqa: SLF001 - aiohttp exposes no public accessor for the real port
    sockets: Iterable = server.sockets if server is not None else ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("the site is not listening")
