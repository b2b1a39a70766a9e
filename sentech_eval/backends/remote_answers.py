"""The remote backend's reading of answers: a 200 body into a Completion, an error body into one line of text.

Everything here is a pure function of bytes and headers a server sent (untrusted input): no network,
no key. ``parse_completion_body`` turns a chat completion into a ``Completion`` (anything malformed
becomes a precise error row); ``error_message`` reads the Sentech, OpenAI and FastAPI error shapes;
``parse_retry_after`` and ``parse_capacity`` read the two headers the runner uses.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from sentech_eval.types import MAX_ADVERTISED_CAPACITY, Completion

SNIPPET = 160
# A usage count a server may report: 0 ≤ n ≤ this (no context window holds a billion tokens).
MAX_TOKEN_COUNT = 1_000_000_000
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class ResponseTooLarge(Exception):
    """A body beyond ``backend.max_response_mb`` (its size so far is ``args[0]``)."""


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def snippet(raw: bytes) -> str:
    """The start of a body as one line of text (at most SNIPPET characters, then …)."""
    text = raw[:SNIPPET].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("…" if len(raw) > SNIPPET else "")


def is_html(raw: bytes) -> bool:
    """True for a body that is an HTML page (a proxy's or a load balancer's error page)."""
    head = raw[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def html_title(raw: bytes) -> str:
    """An HTML page's <title> as one line (else the start of the body)."""
    match = _TITLE.search(raw[:4096])
    title = match.group(1).decode("utf-8", "replace").strip() if match else ""
    return " ".join(title.split()) or snippet(raw)


def json_problem(exc: Exception) -> str:
    """orjson's reason without the position noise, e.g. 'unexpected end of data: line 1 column 40 (char 39)'."""
    return str(exc).strip() or type(exc).__name__


def media_type(header: str) -> str:
    """A Content-Type header's media type: 'application/json; charset=utf-8' -> 'application/json'.

    (aiohttp's ``resp.content_type`` parses the whole header with the email package: dearer.)
    """
    return header.partition(";")[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    """True for application/json and any +json media type."""
    return content_type == "application/json" or content_type.endswith("+json")


def error_message(status: int, raw: bytes) -> str:
    """The server's own error text, from the Sentech, OpenAI or ``detail`` error shapes."""
    if not raw.strip():
        return f"HTTP {status}: empty error body"
    if is_html(raw):
        return f"HTTP {status}: an HTML error page ({html_title(raw)!r}) instead of a JSON error"
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP {status}: non-JSON error body: {snippet(raw)!r}"
    if isinstance(body, dict):
        message, detail = body.get("message"), body.get("error")
        if isinstance(detail, dict):  # OpenAI: {"error": {"message": ...}}
            message, detail = detail.get("message") or message, None
        if message is None and "detail" in body:  # FastAPI: {"detail": "..."} or a 422's list of field errors
            message = body["detail"]
        if message is not None:
            detail = readable(detail) if isinstance(detail, str) else ""
            return f"HTTP {status}: {readable(message)}" + (f" ({detail})" if detail else "")
    return f"HTTP {status}: {snippet(raw)!r}"


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


def readable(message: Any) -> str:
    """A server's error message as one line: field errors named, stack frames dropped, at most 300 characters."""
    if isinstance(message, list):
        text = _field_errors(message) or short_repr(message)
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


def parse_completion_body(raw: bytes, content_type: str, clean: Callable[[bytes], bytes] | None = None) -> Completion:
    """Turn a 200 body into a Completion; anything malformed becomes a precise error.

    ``clean`` (the key's redactor) is applied to the raw body before the slow path, whose error messages
    may quote it; a well-formed answer's fields are cleaned by the caller after decoding.
    """
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
            and is_json_type(content_type)
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
    return _parse_completion_body_checked(raw if clean is None else clean(raw), content_type)


def _parse_completion_body_checked(raw: bytes, content_type: str) -> Completion:
    """The slow path: find exactly what is wrong with a body (or accept an unusual but valid one)."""
    # Hot path first: a JSON content type and a body that parses (an HTML page or an empty body
    # never does, and an answer that merely mentions "<html" is not an HTML page).
    body = problem = None
    if is_json_type(content_type):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problem = exc
    if body is None:
        if is_html(raw):
            return Completion(
                status="error",
                error=f"response is an HTML page ({html_title(raw)!r}, content-type "
                f"{content_type or 'none'}), not a JSON chat completion",
            )
        if not is_json_type(content_type):
            return Completion(
                status="error",
                error=f"response has content-type {content_type or 'none'!r}, not application/json: {snippet(raw)!r}",
            )
        if not raw.strip():
            return Completion(status="error", error="response body is empty")
        if problem is not None:
            return Completion(
                status="error", error=f"response body is not valid JSON ({json_problem(problem)}): {snippet(raw)!r}"
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
            else f"response 'choices' is {describe(choices)}, not a non-empty list",
        )
    choice = choices[0]
    if not isinstance(choice, dict):
        return Completion(status="error", error=f"response choices[0] is {describe(choice)}, not an object")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    if not isinstance(message, dict):
        return Completion(status="error", error="response choices[0] has no 'message' object")
    if not isinstance(content, str):
        return Completion(
            status="error", error=f"response choices[0].message.content is {describe(content)}, not a string"
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
            return f"response usage.{name} is {describe(value)} ({short_repr(value)}), not a whole number"
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
        int_or_none(usage.get(name)) for name in USAGE_FIELDS
    )
    return completion


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def describe(value: Any) -> str:
    """What kind of JSON value this is, for a message: 'missing or null', 'an empty list', 'a dict' …"""
    if value is None:
        return "missing or null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return f"a {type(value).__name__}"


def payload_reason(exc: BaseException) -> str:
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


def exception_text(exc: BaseException) -> str:
    """An exception's message, or its class name when it has none."""
    return str(exc) or type(exc).__name__


def int_or_none(value: Any) -> int | None:
    """A whole number as an int (5.0 -> 5); anything else (a bool, a string, 2.5) -> None."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
