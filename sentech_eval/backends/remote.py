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
import time
from typing import Any

import aiohttp
import orjson

from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.types import Completion, Sampling

CONFIG_KEYS = {"kind", "base_url", "model", "api_key_env", "timeout_s", "stream", "send_seed"}
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
SNIPPET = 160


def _snippet(raw: bytes) -> str:
    text = raw[:SNIPPET].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("…" if len(raw) > SNIPPET else "")


def error_message(status: int, raw: bytes) -> str:
    """The server's own error text, from the Sentech, OpenAI or ``detail`` error shapes."""
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
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        kind = "an HTML page" if b"<html" in raw[:512].lower() else "not JSON"
        return Completion(status="error", error=f"response body is {kind} (content-type {content_type or 'none'}): {_snippet(raw)!r}")
    if not isinstance(body, dict):
        return Completion(status="error", error=f"response body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return Completion(status="error", error="response has no 'choices'")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return Completion(status="error", error="response choices[0].message.content is missing or not a string")
    if content == "":
        return Completion(status="error", error="response content is empty", finish_reason=choice.get("finish_reason"))
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        output=content,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        total_tokens=_int_or_none(usage.get("total_tokens")),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class RemoteBackend:
    """POSTs to ``{base_url}/chat/completions`` with a Bearer key; optional SSE streaming."""

    kind = "remote"

    def __init__(self, base_url: str, model: str, api_key: str, *, timeout_s: float = 60.0,
                 stream: bool = False, send_seed: bool = False, concurrency: int = 16) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.stream = stream
        self.send_seed = send_seed
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int) -> "RemoteBackend":
        """Build from the ``backend`` config node; the key comes from the environment only."""
        unknown = sorted(set(cfg.keys()) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"Unknown config key 'backend.{unknown[0]}' for backend=remote; known keys are: {', '.join(sorted(CONFIG_KEYS))}.")
        base_url = str(cfg.get("base_url") or "")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"backend.base_url={base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1).")
        env_name = str(cfg.get("api_key_env") or "SENTECH_API_KEY")
        api_key = os.environ.get(env_name, "").strip()
        if not api_key:
            raise BackendError(
                f"The environment variable {env_name} is not set; export your Sentech API key there, "
                "or use backend=local (embedded model, no key), or start `sentech-eval serve` and point backend.base_url at it."
            )
        timeout_s = float(cfg.get("timeout_s") or 60.0)
        return cls(base_url, str(cfg.model), api_key, timeout_s=timeout_s, stream=bool(cfg.get("stream")),
                   send_seed=bool(cfg.get("send_seed")), concurrency=concurrency)

    def metadata(self) -> dict[str, Any]:
        """Endpoint and model (never the key)."""
        return {"kind": self.kind, "url": self.url, "model": self.model, "stream": self.stream}

    def set_timeout(self, timeout_s: float) -> None:
        """Per-attempt timeout (the runner's ``runner.timeout_s`` overrides the backend's)."""
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    def request_body(self, messages: list[dict[str, str]], sampling: Sampling) -> dict[str, Any]:
        """Exactly the contract's fields (null sampling values are not sent)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, **sampling.request_fields()}
        if self.send_seed and sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.stream:
            body["stream"] = True
        return body

    async def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        """One request; never raises for a request failure."""
        session = self._get_session()
        data = orjson.dumps(self.request_body(messages, sampling))
        start = time.perf_counter()
        try:
            async with session.post(self.url, data=data, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    return Completion(
                        status="error", http_status=resp.status, error=error_message(resp.status, raw),
                        latency_s=time.perf_counter() - start,
                        retryable=resp.status in RETRYABLE_STATUS,
                        retry_after_s=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                if self.stream and resp.content_type == "text/event-stream":
                    result = await self._read_stream(resp, start)
                else:
                    raw = await resp.read()
                    result = parse_completion_body(raw, resp.content_type)
                result.latency_s = time.perf_counter() - start
                result.http_status = resp.status
                if self.stream and result.status == "ok" and result.ttft_s is None:
                    result.ttft_s = result.latency_s  # a non-streamed answer: the first token came with the whole body
                return result
        except asyncio.TimeoutError:
            return Completion(status="error", error=f"timed out after {self.timeout.total:g} s",
                              latency_s=time.perf_counter() - start, retryable=True)
        except aiohttp.ClientPayloadError as exc:
            return Completion(status="error", error=f"response body was cut off: {exc}",
                              latency_s=time.perf_counter() - start, retryable=True)
        except aiohttp.ClientConnectionError as exc:
            return Completion(status="error", error=f"connection error: {type(exc).__name__}: {exc}",
                              latency_s=time.perf_counter() - start, retryable=True)
        except aiohttp.ClientError as exc:
            return Completion(status="error", error=f"request failed: {type(exc).__name__}: {exc}",
                              latency_s=time.perf_counter() - start, retryable=False)

    async def _read_stream(self, resp: aiohttp.ClientResponse, start: float) -> Completion:
        """Read OpenAI-style SSE chunks; ttft_s at the first chunk with non-empty content."""
        pieces: list[str] = []
        ttft = None
        finish_reason = None
        usage: dict[str, Any] = {}
        done = False
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
            except orjson.JSONDecodeError:
                return Completion(status="error", error=f"stream chunk is not JSON: {_snippet(payload)!r}")
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    pieces.append(content)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        output = "".join(pieces)
        if not done:
            return Completion(status="error", output=output or None, ttft_s=ttft,
                              error="stream ended before 'data: [DONE]' (cut mid-way)", retryable=True)
        if not output:
            return Completion(status="error", error="stream finished with empty content", finish_reason=finish_reason)
        return Completion(
            output=output, finish_reason=finish_reason, ttft_s=ttft,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            total_tokens=_int_or_none(usage.get("total_tokens")),
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
