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
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.http_exceptions
import orjson

from sentech_eval.backends.base import Backend
from sentech_eval.config import RemoteBackendConfig, RunnerConfig, backend_settings, number_setting
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.secrets import Redactor, environment_secrets, url_credential
from sentech_eval.types import CAPACITY_HEADER, MAX_ADVERTISED_CAPACITY, Completion, Sampling, time_per_output_token

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
SNIPPET = 160
ERROR_BODY_BYTES = 1 << 20  # an error body is read up to 1 MiB: its message is at the start
MAX_REDIRECTS = 5
# A usage count a server may report: 0 ≤ n ≤ this (no context window holds a billion tokens).
MAX_TOKEN_COUNT = 1_000_000_000
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class ResponseTooLarge(Exception):
    """A body beyond ``backend.max_response_mb``."""


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
        if message is None and "detail" in body:  # FastAPI: {"detail": "..."} or a 422's list of field errors
            message = body["detail"]
        if message is not None:
            detail = _readable(detail) if isinstance(detail, str) else ""
            return f"HTTP {status}: {_readable(message)}" + (f" ({detail})" if detail else "")
    return f"HTTP {status}: {_snippet(raw)!r}"


# A server's error text may carry a Python stack frame (llama_cpp.server appends one) or a pydantic
# validation report; the row keeps the field and the reason only.
_STACK = re.compile(r"\s*(Traceback \(most recent call last\)|File \"[^\"]*\", line \d+).*", re.DOTALL)
_PYDANTIC_REPORT = re.compile(r"^\s*\d+ validation errors?\b")
_PYDANTIC_ITEM = re.compile(r"""'loc': \(([^)]*)\), 'msg': (?:'([^']*)'|"([^"]*)")""")
MAX_ERROR_CHARS = 300


def _field_errors(items: list[Any]) -> str | None:
    """'body.top_p: Input should be less than or equal to 1' from FastAPI/pydantic ``[{"loc": [...], "msg": ...}]``."""
    parts = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("msg"), str):
            loc = item.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, (list, tuple)) and loc else ""
            parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(dict.fromkeys(parts)) or None


def _readable(message: Any) -> str:
    """A server's error message as one line: field errors named, stack frames dropped, at most 300 characters."""
    if isinstance(message, list):
        text = _field_errors(message) or _short(message)
    elif not isinstance(message, str):
        text = orjson.dumps(message).decode() if isinstance(message, (dict, int, float, bool)) else repr(message)
    else:
        text = _STACK.sub("", message)
        if _PYDANTIC_REPORT.match(text):  # pydantic's str(ValidationError) of dict reprs
            items = [
                {"loc": [p.strip(" '") for p in loc.split(",") if p.strip(" '")], "msg": msg1 or msg2}
                for loc, msg1, msg2 in _PYDANTIC_ITEM.findall(text)
            ]
            text = _field_errors(items) or text
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        try:
            seconds = when.timestamp() - time.time()
        except (OverflowError, OSError, ValueError):
            return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None  # nan / inf: not a delay
    return max(0.0, seconds)


def parse_capacity(value: str | None) -> int | None:
    """A server's advertised capacity (``X-Sentech-Capacity: 4``) as an int; None for anything but a
    plain positive integer up to ``MAX_ADVERTISED_CAPACITY`` (a header is untrusted input)."""
    if value is None or not 0 < len(value) <= 7 or not value.isascii() or not value.isdigit():
        return None
    capacity = int(value)
    return capacity if 0 < capacity <= MAX_ADVERTISED_CAPACITY else None


def parse_completion_body(raw: bytes, content_type: str) -> Completion:
    """Turn a 200 body into a Completion; anything malformed becomes a precise error."""
    try:  # the hot path: a well-formed answer, checked with as few Python steps as possible
        body = orjson.loads(raw)
        choice = body["choices"][0]
        content = choice["message"]["content"]
        usage = body["usage"]
        prompt_tokens, completion_tokens, total_tokens = (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
        )
        finish_reason = choice.get("finish_reason")
        model = body.get("model")
        if (
            type(content) is str
            and content
            and not content.isspace()
            and type(prompt_tokens) is int
            and type(completion_tokens) is int
            and type(total_tokens) is int
            and 0 <= prompt_tokens <= MAX_TOKEN_COUNT
            and 0 <= completion_tokens <= MAX_TOKEN_COUNT
            and 0 <= total_tokens <= MAX_TOKEN_COUNT
            and (finish_reason is None or type(finish_reason) is str)
            and _is_json_type(content_type)
        ):
            return Completion(
                output=content,
                finish_reason=finish_reason,
                response_model=model if type(model) is str else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=total_tokens,
                usage_source="server",
            )
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
            return Completion(
                status="error",
                error=f"response is an HTML page ({_html_title(raw)!r}, content-type "
                f"{content_type or 'none'}), not a JSON chat completion",
            )
        if not _is_json_type(content_type):
            return Completion(
                status="error",
                error=f"response has content-type {content_type or 'none'!r}, not application/json: {_snippet(raw)!r}",
            )
        if not raw.strip():
            return Completion(status="error", error="response body is empty")
        if problem is not None:
            return Completion(
                status="error", error=f"response body is not valid JSON ({_json_problem(problem)}): {_snippet(raw)!r}"
            )
    if not isinstance(body, dict):
        return Completion(status="error", error=f"response body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        if "choices" not in body and ("message" in body or "error" in body):
            return Completion(
                status="error", error="response has no 'choices' but an error: " + error_message(200, raw)
            )
        return Completion(
            status="error",
            error="response has no 'choices'"
            if "choices" not in body
            else f"response 'choices' is {_describe(choices)}, not a non-empty list",
        )
    choice = choices[0]
    if not isinstance(choice, dict):
        return Completion(status="error", error=f"response choices[0] is {_describe(choice)}, not an object")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    if not isinstance(message, dict):
        return Completion(status="error", error="response choices[0] has no 'message' object")
    if not isinstance(content, str):
        return Completion(
            status="error", error=f"response choices[0].message.content is {_describe(content)}, not a string"
        )
    if not content.strip():
        return Completion(status="error", error="response content is empty", finish_reason=finish_reason)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    completion = completion_with_usage(
        Completion(
            output=content,
            finish_reason=finish_reason,
            response_model=body["model"] if isinstance(body.get("model"), str) else None,
        ),
        usage,
    )
    if completion.status == "ok":
        completion.usage_source = "server" if completion.completion_tokens is not None else "none"
    return completion


def usage_problem(usage: dict[str, Any]) -> str | None:
    """Why a server's ``usage`` cannot be stored (a count that is not a whole number in 0..10^9), or None."""
    for name in USAGE_FIELDS:
        value = usage.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"response usage.{name} is {_describe(value)} ({_short(value)}), not a whole number"
        if not 0 <= value <= MAX_TOKEN_COUNT:
            return f"response usage.{name}={value} is out of range (a token count is between 0 and {MAX_TOKEN_COUNT:,})"
    return None


def completion_with_usage(completion: Completion, usage: dict[str, Any]) -> Completion:
    """Set the token counts from a server's ``usage``; an out-of-range count makes the row an error saying so."""
    problem = usage_problem(usage)
    if problem is not None:
        return Completion(
            status="error",
            error=problem,
            output=completion.output,
            finish_reason=completion.finish_reason,
            ttft_s=completion.ttft_s,
        )
    completion.prompt_tokens, completion.completion_tokens, completion.total_tokens = (
        _int_or_none(usage.get(name)) for name in USAGE_FIELDS
    )
    return completion


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


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
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
        self.url = f"{self.base_url}/chat/completions"
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
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout(total=None)
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
                    result = await self._read_stream(resp, start)
                else:
                    declared = resp.content_length
                    if declared is not None and declared <= self.max_response_bytes and not _encoded(resp):
                        raw = await resp.read()
                    else:
                        raw = await self._read_capped(resp, self.max_response_bytes)
                    result = parse_completion_body(redact(raw), content_type)
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
                f"response body was cut off before its end ({_payload_reason(exc)})", start, retryable=True
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            result = self._failure(
                f"TLS certificate verification failed for {self.base_url} ({_exc_text(exc)}); "
                "the server needs a valid certificate",
                start,
                retryable=False,
            )
        except aiohttp.ServerDisconnectedError as exc:
            result = self._failure(
                f"the server closed the connection without answering ({_exc_text(exc)})", start, retryable=True
            )
        except aiohttp.ClientConnectionError as exc:
            result = self._failure(f"connection error: {type(exc).__name__}: {_exc_text(exc)}", start, retryable=True)
        except aiohttp.ClientResponseError as exc:  # a malformed status line or header from the server
            result = self._failure(f"the server's answer is not valid HTTP ({_exc_text(exc)})", start, retryable=False)
        except aiohttp.ClientError as exc:
            result = self._failure(f"request failed: {type(exc).__name__}: {_exc_text(exc)}", start, retryable=False)
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
        text = self._redactor.text
        if result.error is not None:
            result.error = text(result.error)
        if result.output is not None:
            result.output = text(result.output)
        if result.finish_reason is not None:
            result.finish_reason = text(result.finish_reason)
        return result

    @staticmethod
    def _failure(error: str, start: float, *, retryable: bool) -> Completion:
        return Completion(status="error", error=error, latency_s=time.perf_counter() - start, retryable=retryable)

    def _encode(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> bytes:
        if sampling is not self._body_for:  # the runner reuses one Sampling object per repeat
            self._body_for, self._body_fields = sampling, self.request_body([], sampling)
        return orjson.dumps({**self._body_fields, "messages": messages})

    async def _lines(self, resp: aiohttp.ClientResponse) -> Any:
        """The stream's lines, of any length (aiohttp's own readline stops at its buffer size); capped in total."""
        pending = bytearray()
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self.max_response_bytes:
                resp.close()
                raise ResponseTooLarge(size)
            pending += chunk
            if b"\n" not in chunk:
                continue  # a long line grows in place until its end arrives
            *lines, tail = bytes(pending).split(b"\n")
            pending = bytearray(tail)
            for line in lines:
                yield line
        if pending:
            yield bytes(pending)

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
        redact = self._redactor.raw
        try:
            async for line in self._lines(resp):
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
                        error=f"stream chunk is not valid JSON ({_json_problem(exc)}): {_snippet(redact(payload))!r}",
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
                f"{len(output)} characters: {_payload_reason(exc)})",
            )
        except ResponseTooLarge:
            output = "".join(pieces)
            return Completion(
                status="error",
                output=output or None,
                ttft_s=ttft,
                error=f"the stream is larger than backend.max_response_mb={self.max_response_mb:g} "
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

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._session is not None:
            await self._session.close()
            self._session = None
