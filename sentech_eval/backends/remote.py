"""The remote backend: the Sentech Chat Completions API (or any OpenAI-compatible server) over aiohttp.

This module is the HTTP transport (session, request, timeouts, redirects, size caps); reading an
answer is ``remote_answers`` (a body, an error body, headers) and ``remote_sse`` (a stream).

One ``aiohttp.ClientSession`` per run, its connector sized to the runner's concurrency. The API
key is read from the environment variable named by ``backend.api_key_env`` and is never put in a
row, an error message or metadata. Every request failure becomes a ``Completion`` with
``status="error"``, ``http_status`` and a precise ``error``; ``retryable`` tells the runner
whether trying again can help (429, 5xx, timeouts, dropped connections).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
import aiohttp.http_exceptions
import orjson

from sentech_eval.backends.base import Backend
from sentech_eval.backends.remote_answers import (
    ResponseTooLarge,
    error_message,
    exception_text,
    media_type,
    parse_capacity,
    parse_completion_body,
    parse_retry_after,
    payload_reason,
)
from sentech_eval.backends.remote_sse import read_stream
from sentech_eval.config import RemoteBackendConfig, RunnerConfig, backend_settings, number_setting
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.secrets import Redactor, environment_secrets, url_credential
from sentech_eval.types import CAPACITY_HEADER, Completion, Sampling, time_per_output_token

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
ERROR_BODY_BYTES = 1 << 20  # an error body is read up to 1 MiB: its message is at the start
MAX_REDIRECTS = 5


def check_base_url(base_url: str) -> None:
    """Refuse a URL that is not http(s), or that carries a credential (user:password@, ?api_key=, a key-shaped part).

    Harmless query parameters (``?author=…``, ``?keyword=…``) pass.
    """
    problem = url_credential(base_url, environment_secrets())
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = "(a URL carrying a credential)" if problem else base_url
        raise ConfigError(
            f"backend.base_url={shown!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)."
        )
    if problem is not None:
        raise ConfigError(
            f"backend.base_url is refused: {problem}; keys never go in config — export the key in the environment "
            "variable named by backend.api_key_env (default SENTECH_API_KEY)."
        )


def endpoint_url(base_url: str, endpoint: str) -> str:
    """``base_url`` with ``endpoint`` added to its path, before any query string:
    ``https://h/v1?api-version=1`` + ``chat/completions`` -> ``https://h/v1/chat/completions?api-version=1``."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{endpoint}"))


def check_api_key(api_key: str, env_name: str) -> None:
    """A key must be printable ASCII without spaces (it goes into an HTTP header); never echoes the key."""
    for index, char in enumerate(api_key):
        if not 0x21 <= ord(char) <= 0x7E:
            kind = (
                "a control character"
                if ord(char) < 0x20 or ord(char) == 0x7F
                else ("a space" if char.isspace() else "a non-ASCII character")
            )
            raise BackendError(
                f"The key in the environment variable {env_name} contains {kind} at position {index + 1} of "
                f"{len(api_key)}; export the key again without it (a copy-paste often adds a line break)."
            )


def _encoded(resp: aiohttp.ClientResponse) -> bool:
    """A compressed body: its declared length says nothing about its decoded size (a gzip bomb)."""
    encoding = resp.headers.get("Content-Encoding")
    return bool(encoding) and encoding.strip().lower() != "identity"


def _same_origin(a: str, b: str) -> bool:
    pa_, pb = urlsplit(a), urlsplit(b)
    return (pa_.scheme, pa_.hostname, pa_.port) == (pb.scheme, pb.hostname, pb.port)


class RemoteBackend(Backend):
    """POSTs to ``{base_url}/chat/completions`` with a Bearer key; optional SSE streaming.

    Everything a server sends is untrusted: bodies are capped (``max_response_mb``), stream lines may
    be of any length, usage counts are range-checked, redirects are not followed (unless
    ``follow_redirects`` and same-origin), and the key is redacted from every text the server controls.
    """

    kind = "remote"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        *,
        timeout_s: float = RemoteBackendConfig.timeout_s,
        stream: bool = RemoteBackendConfig.stream,
        send_seed: bool = RemoteBackendConfig.send_seed,
        include_usage: bool = RemoteBackendConfig.include_usage,
        concurrency: int = RunnerConfig.concurrency,
        max_response_mb: float = RemoteBackendConfig.max_response_mb,
        follow_redirects: bool = RemoteBackendConfig.follow_redirects,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = endpoint_url(base_url, "chat/completions")
        self.model = model
        self.stream = stream
        self.send_seed = send_seed
        self.include_usage = include_usage
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_response_bytes = int(max_response_mb * 1024 * 1024)
        self.max_response_mb = max_response_mb
        self.follow_redirects = follow_redirects
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._redactor = Redactor(api_key)
        self._concurrency = concurrency
        self._capacity_unread = True  # the first answer's X-Sentech-Capacity header is read, once
        self._session: aiohttp.ClientSession | None = None
        self._body_for: Sampling | None = None
        self._body_fields: dict[str, Any] = {}
        # Per-attempt timeouts are enforced by one watchdog task, not by a timer per request:
        # aiohttp's per-request timeout costs CPU on every request (figure: benchmarks/README.md).
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int) -> RemoteBackend:
        """Build from the ``backend`` config node (checked against ``RemoteBackendConfig``); the key
        comes from the environment only."""
        remote: RemoteBackendConfig = backend_settings(cfg, RemoteBackendConfig)
        check_base_url(remote.base_url)
        number_setting("backend.timeout_s", remote.timeout_s, positive=True)
        number_setting("backend.max_response_mb", remote.max_response_mb, positive=True)
        env_name = remote.api_key_env
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
            raise ConfigError(
                "backend.api_key_env must be the NAME of an environment variable (like SENTECH_API_KEY), "
                "not the key itself; export the key in that variable."
            )
        api_key = os.environ.get(env_name, "").strip()
        if not api_key:
            raise BackendError(
                f"The environment variable {env_name} is not set; export your Sentech API key there, "
                "or use backend=local (embedded model, no key), or start `sentech-eval serve` and point backend.base_url at it."
            )
        check_api_key(api_key, env_name)
        backend = cls(
            remote.base_url,
            remote.model,
            api_key,
            timeout_s=float(remote.timeout_s),
            stream=remote.stream,
            send_seed=remote.send_seed,
            include_usage=remote.include_usage,
            concurrency=concurrency,
            max_response_mb=float(remote.max_response_mb),
            follow_redirects=remote.follow_redirects,
        )
        backend.auth_hint = f"; check the key in the environment variable {env_name}"
        return backend

    def metadata(self) -> dict[str, Any]:
        """Endpoint and model (never the key)."""
        return {
            "kind": self.kind,
            "url": self.url,
            "model": self.model,
            "stream": self.stream,
            "max_response_mb": self.max_response_mb,
            "follow_redirects": self.follow_redirects,
        }

    def cache_identity(self) -> dict[str, Any]:
        """What identifies this backend's answers for the response cache (never the key)."""
        return {
            "backend": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "stream": self.stream,
            "seed_sent": self.send_seed,
        }

    def set_timeout(self, timeout_s: float) -> None:
        """Per-attempt timeout (the runner's ``runner.timeout_s`` overrides the backend's)."""
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300)
            # Header lines and SSE lines are not limited by aiohttp's line buffer: stream lines are split
            # here (any length the model can produce); a body's size is capped by max_response_mb.
            # A benchmark client sends the same request every time: no cookie a server sets is kept or sent back.
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
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

    async def _read_capped(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body, or ResponseTooLarge once it passes ``limit`` bytes (a declared length is checked first)."""
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise ResponseTooLarge(declared)
        if declared is not None and not _encoded(resp):
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(size)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: int, start: float, status: int | None) -> Completion:
        return Completion(
            status="error",
            http_status=status,
            latency_s=time.perf_counter() - start,
            retryable=False,
            error=f"response body is larger than backend.max_response_mb={self.max_response_mb:g} "
            "(not read further); raise backend.max_response_mb if answers this large are expected",
        )

    async def _follow(
        self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse, data: bytes
    ) -> tuple[aiohttp.ClientResponse, str | None]:
        """After a 3xx: follow it only when ``follow_redirects`` and same-origin (re-POSTing the same body).

        Returns the final response and, for a redirect that is not followed, the Location it named.
        """
        url = self.url
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location", "")
            target = urljoin(url, location) if location else ""
            resp.release()
            if not (self.follow_redirects and target and _same_origin(target, self.url)):
                return resp, target or "(no Location header)"
            url = target
            resp = await session.post(url, data=data, allow_redirects=False)
            if resp.status not in REDIRECT_STATUS:
                return resp, None
        resp.release()
        return resp, f"{url} (more than {MAX_REDIRECTS} redirects)"

    async def complete(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> Completion:
        """One request; never raises for a request failure (the key never appears in any text field)."""
        session = self._session or self._get_session()
        data = self._encode(messages, sampling)
        task = asyncio.current_task()
        timeout_s = self.timeout.total
        if timeout_s is not None and task is not None:
            self._deadlines[task] = time.monotonic() + timeout_s
        start = time.perf_counter()
        redact = self._redactor.raw
        resp = None
        try:
            resp = await session.post(self.url, data=data, allow_redirects=False)
            status = resp.status
            redirected_to = None
            if status in REDIRECT_STATUS:
                resp, redirected_to = await self._follow(session, resp, data)
                status = resp.status
            if redirected_to is not None:
                why = (
                    "it is not the same origin as backend.base_url"
                    if self.follow_redirects
                    else "redirects are not followed (set backend.base_url to the final URL, or "
                    "backend.follow_redirects=true for a same-origin redirect)"
                )
                result = Completion(
                    status="error",
                    http_status=status,
                    latency_s=time.perf_counter() - start,
                    error=f"HTTP {status}: the server redirected to {redirected_to}; {why}",
                )
            elif status != 200:
                limit = min(ERROR_BODY_BYTES, self.max_response_bytes)
                try:
                    message = error_message(status, redact(await self._read_capped(resp, limit)))
                except ResponseTooLarge:
                    message = f"HTTP {status}: an error body over {limit / 1048576:g} MB (not read further)"
                if status == 404:
                    message += f" (no endpoint at {self.url}; backend.base_url usually ends in /v1)"
                retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
                result = Completion(
                    status="error",
                    http_status=status,
                    error=message,
                    latency_s=time.perf_counter() - start,
                    retryable=status in RETRYABLE_STATUS,
                    retry_after_s=retry_after,
                )
            else:
                if self._capacity_unread:
                    self._capacity_unread = False
                    self.advertised_capacity = parse_capacity(resp.headers.get(CAPACITY_HEADER))
                content_type = media_type(resp.headers.get("Content-Type", ""))
                if self.stream and content_type == "text/event-stream":
                    result = await read_stream(resp, start, max_response_mb=self.max_response_mb, redact=redact)
                else:
                    declared = resp.content_length
                    if declared is not None and declared <= self.max_response_bytes and not _encoded(resp):
                        raw = await resp.read()
                    else:
                        raw = await self._read_capped(resp, self.max_response_bytes)
                    result = parse_completion_body(raw, content_type, redact)
                result.latency_s = latency = time.perf_counter() - start
                result.http_status = 200
                if self.stream and result.status == "ok":
                    if result.ttft_s is None:
                        result.ttft_s = latency  # a non-streamed answer: the first token came with the whole body
                    result.tpot_s = time_per_output_token(latency, result.ttft_s, result.completion_tokens)
        except ResponseTooLarge as exc:
            if resp is not None:
                resp.close()  # drop the connection rather than read the rest
            result = self._too_large(exc.args[0], start, resp.status if resp is not None else None)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the run is being stopped: not ours to swallow
            self._expired.discard(task)
            task.uncancel()
            result = self._failure(f"timed out after {timeout_s:g} s", start, retryable=True)
        except TimeoutError:
            result = self._failure(f"timed out after {timeout_s:g} s", start, retryable=True)
        except aiohttp.ClientPayloadError as exc:
            result = self._failure(
                f"response body was cut off before its end ({payload_reason(exc)})", start, retryable=True
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            result = self._failure(
                f"TLS certificate verification failed for {self.base_url} ({exception_text(exc)}); "
                "the server needs a valid certificate",
                start,
                retryable=False,
            )
        except aiohttp.ServerDisconnectedError as exc:
            result = self._failure(
                f"the server closed the connection without answering ({exception_text(exc)})", start, retryable=True
            )
        except aiohttp.ClientConnectionError as exc:
            result = self._failure(
                f"connection error: {type(exc).__name__}: {exception_text(exc)}", start, retryable=True
            )
        except aiohttp.ClientResponseError as exc:  # a malformed status line or header from the server
            result = self._failure(
                f"the server's answer is not valid HTTP ({exception_text(exc)})", start, retryable=False
            )
        except aiohttp.ClientError as exc:
            result = self._failure(
                f"request failed: {type(exc).__name__}: {exception_text(exc)}", start, retryable=False
            )
        except aiohttp.http_exceptions.HttpProcessingError as exc:  # e.g. a header line beyond aiohttp's limit
            result = self._failure(
                f"the server's answer is not valid HTTP ({type(exc).__name__}: {exc.message})", start, retryable=False
            )
        finally:
            if resp is not None:
                resp.release()
            if task is not None:
                self._deadlines.pop(task, None)
                if self._expired and task in self._expired:  # our cancel surfaced as another error
                    self._expired.discard(task)
                    task.uncancel()
        self._redactor.completion_fields(result)  # every text the server filled, as decoded and stored
        return result

    @staticmethod
    def _failure(error: str, start: float, *, retryable: bool) -> Completion:
        return Completion(status="error", error=error, latency_s=time.perf_counter() - start, retryable=retryable)

    def _encode(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> bytes:
        if sampling is not self._body_for:  # the runner reuses one Sampling object per repeat
            self._body_for, self._body_fields = sampling, self.request_body([], sampling)
        return orjson.dumps({**self._body_fields, "messages": messages})

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._session is not None:
            await self._session.close()
            self._session = None
