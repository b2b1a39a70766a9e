"""The remote backend: the Sentech Chat Completions API (or any OpenAI-compatible server) over aiohttp.

One ``aiohttp.ClientSession`` per run, its connector sized to the runner's concurrency. The API
key is read from the environment variable named by ``backend.api_key_env`` and is never put in a
row, an error message or metadata. Every request failure becomes a ``Completion`` with
``status="error"``, ``http_status`` and a precise ``error``; ``retryable`` tells the runner
whether trying again can help (429, 5xx, timeouts, dropped connections).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson

from sentech_eval.backends.base import Backend
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.types import Completion, Sampling, time_per_output_token

CONFIG_KEYS = {"kind", "base_url", "model", "api_key_env", "timeout_s", "stream", "send_seed", "include_usage"}
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
SNIPPET = 160


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SECRET_QUERY = re.compile(r"(api_?key|key|token|secret|password|auth)", re.IGNORECASE)


def _snippet(raw: bytes) -> str:
    text = raw[:SNIPPET].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("…" if len(raw) > SNIPPET else "")


def _is_html(raw: bytes) -> bool:
    head = raw[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _html_title(raw: bytes) -> str:
    match = _TITLE.search(raw[:4096])
    title = match.group(1).decode("utf-8", "replace").strip() if match else ""
    return " ".join(title.split()) or _snippet(raw)


def _json_problem(exc: Exception) -> str:
    """orjson's reason without the position noise, e.g. 'unexpected end of data: line 1 column 40 (char 39)'."""
    return str(exc).strip() or type(exc).__name__


def media_type(header: str) -> str:
    """A Content-Type header's media type: 'application/json; charset=utf-8' -> 'application/json'.

    (aiohttp's ``resp.content_type`` parses the whole header with the email package: dearer.)
    """
    return header.partition(";")[0].strip().lower()


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def error_message(status: int, raw: bytes) -> str:
    """The server's own error text, from the Sentech, OpenAI or ``detail`` error shapes."""
    if not raw.strip():
        return f"HTTP {status}: empty error body"
    if _is_html(raw):
        return f"HTTP {status}: an HTML error page ({_html_title(raw)!r}) instead of a JSON error"
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP {status}: non-JSON error body: {_snippet(raw)!r}"
    if isinstance(body, dict):
        message, detail = body.get("message"), body.get("error")
        if isinstance(detail, dict):  # OpenAI: {"error": {"message": ...}}
            message, detail = detail.get("message") or message, None
        if message is None and "detail" in body:
            message = body["detail"]
        if message is not None:
            return f"HTTP {status}: {message}" + (f" ({detail})" if isinstance(detail, str) and detail else "")
    return f"HTTP {status}: {_snippet(raw)!r}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_completion_body(raw: bytes, content_type: str) -> Completion:
    """Turn a 200 body into a Completion; anything malformed becomes a precise error."""
    try:  # the hot path: a well-formed answer, checked with as few Python steps as possible
        body = orjson.loads(raw)
        choice = body["choices"][0]
        content = choice["message"]["content"]
        usage = body["usage"]
        prompt_tokens, completion_tokens, total_tokens = (
            usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
        finish_reason = choice.get("finish_reason")
        model = body.get("model")
        if (type(content) is str and content and not content.isspace() and type(prompt_tokens) is int
                and type(completion_tokens) is int and type(total_tokens) is int
                and (finish_reason is None or type(finish_reason) is str) and _is_json_type(content_type)):
            return Completion(output=content, finish_reason=finish_reason,
                              response_model=model if type(model) is str else None, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, total_tokens=total_tokens, usage_source="server")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        pass
    return _parse_completion_body_checked(raw, content_type)


def _parse_completion_body_checked(raw: bytes, content_type: str) -> Completion:
    """The slow path: find exactly what is wrong with a body (or accept an unusual but valid one)."""
    # Hot path first: a JSON content type and a body that parses (an HTML page or an empty body
    # never does, and an answer that merely mentions "<html" is not an HTML page).
    body = problem = None
    if _is_json_type(content_type):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problem = exc
    if body is None:
        if _is_html(raw):
            return Completion(status="error", error=f"response is an HTML page ({_html_title(raw)!r}, content-type "
                                                    f"{content_type or 'none'}), not a JSON chat completion")
        if not _is_json_type(content_type):
            return Completion(status="error", error=f"response has content-type {content_type or 'none'!r}, "
                                                    f"not application/json: {_snippet(raw)!r}")
        if not raw.strip():
            return Completion(status="error", error="response body is empty")
        if problem is not None:
            return Completion(status="error", error=f"response body is not valid JSON ({_json_problem(problem)}): {_snippet(raw)!r}")
    if not isinstance(body, dict):
        return Completion(status="error", error=f"response body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        if "choices" not in body and ("message" in body or "error" in body):
            return Completion(status="error", error="response has no 'choices' but an error: " + error_message(200, raw))
        return Completion(status="error", error="response has no 'choices'" if "choices" not in body
                          else f"response 'choices' is {_describe(choices)}, not a non-empty list")
    choice = choices[0]
    if not isinstance(choice, dict):
        return Completion(status="error", error=f"response choices[0] is {_describe(choice)}, not an object")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    if not isinstance(message, dict):
        return Completion(status="error", error="response choices[0] has no 'message' object")
    if not isinstance(content, str):
        return Completion(status="error", error=f"response choices[0].message.content is {_describe(content)}, not a string")
    if not content.strip():
        return Completion(status="error", error="response content is empty", finish_reason=finish_reason)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    completion_tokens = _int_or_none(usage.get("completion_tokens"))
    return Completion(
        output=content,
        finish_reason=finish_reason,
        response_model=body["model"] if isinstance(body.get("model"), str) else None,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=completion_tokens,
        total_tokens=_int_or_none(usage.get("total_tokens")),
        usage_source="server" if completion_tokens is not None else "none",
    )


def _describe(value: Any) -> str:
    if value is None:
        return "missing or null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return f"a {type(value).__name__}"


def _payload_reason(exc: BaseException) -> str:
    """The innermost readable reason of an aiohttp payload error (e.g. 'Not enough data to satisfy ...')."""
    seen = exc
    while seen is not None:
        message = getattr(seen, "message", None)
        if isinstance(message, str) and message:
            return message
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    inner = re.search(r"message='([^']+)'", text)
    return inner.group(1) if inner else (text or type(exc).__name__)


def _exc_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_base_url(base_url: str) -> None:
    """Refuse a URL that is not http(s), or that carries a credential (user:password@ or ?api_key=)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = base_url if not (parts.username or parts.password) else "(a URL with credentials)"
        raise ConfigError(f"backend.base_url={shown!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1).")
    if parts.username or parts.password or any(_SECRET_QUERY.search(name) for name, _ in parse_qsl(parts.query)):
        raise ConfigError(
            "backend.base_url carries a credential (user:password@ or a key in the query string); keys never go in "
            "config — export the key in the environment variable named by backend.api_key_env (default SENTECH_API_KEY)."
        )


class RemoteBackend(Backend):
    """POSTs to ``{base_url}/chat/completions`` with a Bearer key; optional SSE streaming."""

    kind = "remote"

    def __init__(self, base_url: str, model: str, api_key: str, *, timeout_s: float = 60.0,
                 stream: bool = False, send_seed: bool = False, include_usage: bool = True,
                 concurrency: int = 16) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.stream = stream
        self.send_seed = send_seed
        self.include_usage = include_usage
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._api_key = api_key
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._body_for: Sampling | None = None
        self._body_fields: dict[str, Any] = {}
        # Per-attempt timeouts are enforced by one watchdog task, not by a timer per request:
        # aiohttp's per-request timeout costs ~10-15 us of CPU a request (benchmarks/README.md).
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int) -> "RemoteBackend":
        """Build from the ``backend`` config node; the key comes from the environment only."""
        unknown = sorted(set(cfg.keys()) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"Unknown config key 'backend.{unknown[0]}' for backend=remote; known keys are: {', '.join(sorted(CONFIG_KEYS))}.")
        base_url = str(cfg.get("base_url") or "")
        check_base_url(base_url)
        env_name = str(cfg.get("api_key_env") or "SENTECH_API_KEY")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
            raise ConfigError("backend.api_key_env must be the NAME of an environment variable (like SENTECH_API_KEY), "
                              "not the key itself; export the key in that variable.")
        api_key = os.environ.get(env_name, "").strip()
        if not api_key:
            raise BackendError(
                f"The environment variable {env_name} is not set; export your Sentech API key there, "
                "or use backend=local (embedded model, no key), or start `sentech-eval serve` and point backend.base_url at it."
            )
        timeout_s = float(cfg.get("timeout_s") or 60.0)
        include_usage = cfg.get("include_usage")
        backend = cls(base_url, str(cfg.model), api_key, timeout_s=timeout_s, stream=bool(cfg.get("stream")),
                      send_seed=bool(cfg.get("send_seed")), include_usage=include_usage is None or bool(include_usage),
                      concurrency=concurrency)
        backend.auth_hint = f"; check the key in the environment variable {env_name}"
        return backend

    def metadata(self) -> dict[str, Any]:
        """Endpoint and model (never the key)."""
        return {"kind": self.kind, "url": self.url, "model": self.model, "stream": self.stream}

    def cache_identity(self) -> dict[str, Any]:
        """What identifies this backend's answers for the response cache (never the key)."""
        return {"backend": self.kind, "base_url": self.base_url, "model": self.model, "stream": self.stream,
                "seed_sent": self.send_seed}

    def set_timeout(self, timeout_s: float) -> None:
        """Per-attempt timeout (the runner's ``runner.timeout_s`` overrides the backend's)."""
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                                  timeout=aiohttp.ClientTimeout(total=None))
            self._watchdog = asyncio.ensure_future(self._watch())
        return self._session

    async def _watch(self) -> None:
        """Cancel requests past their deadline (checked every tenth of the timeout, at most 0.25 s)."""
        while True:
            total = self.timeout.total or 60.0
            await asyncio.sleep(max(0.01, min(0.25, total / 10)))
            now = time.monotonic()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    def request_body(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> dict[str, Any]:
        """Exactly the contract's fields (null sampling values are not sent)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, **sampling.request_fields()}
        if self.send_seed and sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.stream:
            body["stream"] = True
            if self.include_usage:  # OpenAI and vLLM send usage in a last chunk only when asked
                body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> Completion:
        """One request; never raises for a request failure (the key never appears in ``error``)."""
        session = self._session or self._get_session()
        data = self._encode(messages, sampling)
        task = asyncio.current_task()
        timeout_s = self.timeout.total
        if timeout_s is not None and task is not None:
            self._deadlines[task] = time.monotonic() + timeout_s
        start = time.perf_counter()
        try:
            async with session.post(self.url, data=data) as resp:
                status = resp.status
                if status != 200:
                    raw = await resp.read()
                    result = Completion(
                        status="error", http_status=status, error=error_message(status, raw),
                        latency_s=time.perf_counter() - start, retryable=status in RETRYABLE_STATUS,
                        retry_after_s=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                else:
                    content_type = media_type(resp.headers.get("Content-Type", ""))
                    if self.stream and content_type == "text/event-stream":
                        result = await self._read_stream(resp, start)
                    else:
                        result = parse_completion_body(await resp.read(), content_type)
                    result.latency_s = latency = time.perf_counter() - start
                    result.http_status = 200
                    if self.stream and result.status == "ok":
                        if result.ttft_s is None:
                            result.ttft_s = latency  # a non-streamed answer: the first token came with the whole body
                        result.tpot_s = time_per_output_token(latency, result.ttft_s, result.completion_tokens)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the run is being stopped: not ours to swallow
            self._expired.discard(task)
            task.uncancel()
            result = self._failure(f"timed out after {timeout_s:g} s", start, retryable=True)
        except asyncio.TimeoutError:
            result = self._failure(f"timed out after {timeout_s:g} s", start, retryable=True)
        except aiohttp.ClientPayloadError as exc:
            result = self._failure(f"response body was cut off before its end ({_payload_reason(exc)})", start,
                                   retryable=True)
        except aiohttp.ClientConnectorCertificateError as exc:
            result = self._failure(f"TLS certificate verification failed for {self.base_url} ({_exc_text(exc)}); "
                                   "the server needs a valid certificate", start, retryable=False)
        except aiohttp.ServerDisconnectedError as exc:
            result = self._failure(f"the server closed the connection without answering ({_exc_text(exc)})", start,
                                   retryable=True)
        except aiohttp.ClientConnectionError as exc:
            result = self._failure(f"connection error: {type(exc).__name__}: {_exc_text(exc)}", start, retryable=True)
        except aiohttp.ClientError as exc:
            result = self._failure(f"request failed: {type(exc).__name__}: {_exc_text(exc)}", start, retryable=False)
        finally:
            if task is not None:
                self._deadlines.pop(task, None)
                if self._expired and task in self._expired:  # our cancel surfaced as another error
                    self._expired.discard(task)
                    task.uncancel()
        if result.error is not None and self._api_key in result.error:
            result.error = result.error.replace(self._api_key, "[redacted]")
        return result

    @staticmethod
    def _failure(error: str, start: float, *, retryable: bool) -> Completion:
        return Completion(status="error", error=error, latency_s=time.perf_counter() - start, retryable=retryable)

    def _encode(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> bytes:
        if sampling is not self._body_for:  # the runner reuses one Sampling object per repeat
            self._body_for, self._body_fields = sampling, self.request_body([], sampling)
        return orjson.dumps({**self._body_fields, "messages": messages})

    async def _read_stream(self, resp: aiohttp.ClientResponse, start: float) -> Completion:
        """Read OpenAI-style SSE chunks; ttft_s at the first chunk with non-empty content, itl_s the
        gaps between content chunks; token counts from the server's usage, else the content chunks."""
        pieces: list[str] = []
        times: list[float] = []  # perf_counter at each content chunk
        clock = time.perf_counter
        ttft = None
        finish_reason = None
        response_model = None
        usage: dict[str, Any] = {}
        done = False
        try:
            async for line in resp.content:
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
                    return Completion(status="error", output="".join(pieces) or None, ttft_s=ttft,
                                      error=f"stream chunk is not valid JSON ({_json_problem(exc)}): {_snippet(payload)!r}")
                if not isinstance(chunk, dict):
                    return Completion(status="error", output="".join(pieces) or None, ttft_s=ttft,
                                      error=f"stream chunk is a JSON {type(chunk).__name__}, not an object")
                if "choices" not in chunk and ("message" in chunk or "error" in chunk):
                    return Completion(status="error", output="".join(pieces) or None, ttft_s=ttft, retryable=True,
                                      error="the stream reported an error mid-way: " + error_message(200, payload)[10:])
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
            return Completion(status="error", output=output or None, ttft_s=ttft, retryable=True,
                              error=f"the stream was cut mid-way (the connection closed before 'data: [DONE]' after "
                                    f"{len(output)} characters: {_payload_reason(exc)})")
        except ValueError as exc:  # aiohttp: a line longer than its buffer
            return Completion(status="error", output="".join(pieces) or None, ttft_s=ttft,
                              error=f"stream line could not be read ({exc})")
        output = "".join(pieces)
        if not done:
            return Completion(status="error", output=output or None, ttft_s=ttft, retryable=True,
                              error=f"the stream was cut mid-way (ended before 'data: [DONE]' after {len(output)} characters)")
        if not output.strip():
            return Completion(status="error", error="stream finished with empty content", finish_reason=finish_reason)
        prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        completion_tokens = _int_or_none(usage.get("completion_tokens"))
        total_tokens = _int_or_none(usage.get("total_tokens"))
        if completion_tokens is not None:
            usage_source = "server"
        else:  # a server that sends no usage: one content chunk is one token (as vLLM's client counts)
            usage_source, completion_tokens = "chunks", len(times)
            if prompt_tokens is not None:
                total_tokens = prompt_tokens + completion_tokens
        return Completion(
            output=output, finish_reason=finish_reason, ttft_s=ttft, response_model=response_model,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total_tokens,
            itl_s=[b - a for a, b in zip(times, times[1:])], usage_source=usage_source,
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._session is not None:
            await self._session.close()
            self._session = None
