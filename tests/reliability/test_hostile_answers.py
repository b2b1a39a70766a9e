"""A server's answer is untrusted input: one real `sentech-eval run` per transport against the hostile host.

Each dataset row asks ``hostile_server.py`` for one attack (``mode:<name>``). The run must end
normally (exit 0, no traceback), with one row per prompt: an error row with a precise message for
every attack, never a crash, a hang, a followed cross-origin redirect or a stored key.
"""

from __future__ import annotations

import re
import time

import pandas as pd
import pytest
from hostile_server import LONG_LINE_BYTES, hostile_server
from reliability_support import call_cli, new_key, rows

MB_CAP = ("backend.max_response_mb=1",)

# mode -> (status, fragment of the error or None, attempts with runner.max_retries=1)
PLAIN: dict[str, tuple[str, str | None, int]] = {
    "ok": ("ok", None, 1),
    "usage_overflow": ("error", "response usage.total_tokens=18446744073709551615 is out of range", 1),
    "usage_negative": ("error", "response usage.prompt_tokens=-5 is out of range", 1),
    "usage_huge": ("error", "response usage.total_tokens=1000000000000 is out of range", 1),
    "usage_float": ("error", "response usage.prompt_tokens is a float (3.5), not a whole number", 1),
    "usage_string": ("error", "response usage.prompt_tokens is a string ('12'), not a whole number", 1),
    "usage_bool": ("error", "response usage.prompt_tokens is a bool (True), not a whole number", 1),
    "huge_body": ("error", "response body is larger than backend.max_response_mb=1", 1),
    "huge_chunked": ("error", "response body is larger than backend.max_response_mb=1", 1),
    "gzip_bomb": ("error", "response body is larger than backend.max_response_mb=1", 1),
    "huge_error": ("error", "HTTP 500: an error body over 1 MB (not read further)", 2),
    "long_header": ("error", "the server's answer is not valid HTTP", 1),
    "redirect_301_cross": (
        "error",
        "HTTP 301: the server redirected to {other}/v1/chat/completions; redirects are not followed",
        1,
    ),
    "redirect_302_cross": ("error", "HTTP 302: the server redirected to {other}/v1/chat/completions", 1),
    "redirect_307_cross": ("error", "HTTP 307: the server redirected to {other}/v1/chat/completions", 1),
    "redirect_308_cross": ("error", "HTTP 308: the server redirected to {other}/v1/chat/completions", 1),
    "redirect_307_same": (
        "error",
        "HTTP 307: the server redirected to {self}/v2/chat/completions; redirects are not followed",
        1,
    ),
    "invalid_utf8": ("error", "response body is not valid JSON (", 1),
    "lone_surrogate": ("error", "response body is not valid JSON (", 1),
    "deep_json": ("error", "response body is not valid JSON (", 1),
    "key_cut": ("error", "HTTP 400: non-JSON error body:", 1),
    "key_prefix": ("error", "HTTP 400: bad key [redacted]", 1),
    "key_suffix": ("error", "HTTP 400: bad key …[redacted]", 1),
    "key_in_output": ("ok", None, 1),
    "key_in_finish_reason": ("ok", None, 1),
    "key_in_html": ("error", "HTTP 502: an HTML error page ('[redacted]')", 2),
    "key_in_location": ("error", "HTTP 301: the server redirected to {other}/v1?token=[redacted]", 1),
    "key_in_model": ("ok", None, 1),
    "key_escaped_in_model": ("ok", None, 1),
    "key_escaped_in_output": ("ok", None, 1),
    "key_escaped_in_error": ("error", "HTTP 400: bad key [redacted]", 1),
    "key_percent_in_location": ("error", "HTTP 301: the server redirected to {other}/v1?next=[redacted]", 1),
}
STREAMED: dict[str, tuple[str, str | None, int]] = {
    "ok": ("ok", None, 1),
    "long_sse_line": ("ok", None, 1),
    "stream_usage_overflow": ("error", "response usage.prompt_tokens=1180591620717411303424 is out of range", 1),
    "key_in_stream": ("ok", None, 1),
    "key_in_stream_model": ("ok", None, 1),
    "key_escaped_in_stream": ("ok", None, 1),
    "sse_cr": ("ok", None, 1),
    "sse_crlf": ("ok", None, 1),
    "sse_mixed": ("ok", None, 1),
    "huge_chunked": ("error", "larger than backend.max_response_mb=1", 1),
}


def _dataset(path, modes) -> str:
    pd.DataFrame({"id": list(modes), "prompt": [f"mode:{m}" for m in modes]}).to_parquet(path)
    return str(path)


def _run(url, tmp_path, modes, key, *extra):
    data = _dataset(tmp_path / "modes.parquet", modes)
    return call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={data}",
        "runner.progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        "runner.backoff_base_s=0.01",
        "runner.backoff_max_s=0.05",
        "runner.max_retries=1",
        "runner.max_retry_after_s=0.1",
        *MB_CAP,
        *extra,
        key=key,
    )


def _key_parts(key: str) -> list[str]:
    """Every 8-character piece of the key: none may be stored anywhere."""
    return [key[i : i + 8] for i in range(0, len(key) - 7)]


def _check(df: pd.DataFrame, expected: dict, key: str, fill: dict[str, str]) -> None:
    assert sorted(df["prompt_id"]) == sorted(expected), "one row per prompt, none lost"
    by_id = df.set_index("prompt_id")
    for mode, (status, fragment, attempts) in expected.items():
        row = by_id.loc[mode]
        assert row["status"] == status, f"{mode}: {row['status']} {row['error']}"
        if fragment is not None:
            assert fragment.format(**fill) in row["error"], f"{mode}: {row['error']!r}"
        assert row["attempts"] == attempts, f"{mode}: {row['attempts']} attempts"
    text = df.select_dtypes(include=["object", "string"]).astype(str).to_string()  # every text column
    for part in _key_parts(key):
        assert part not in text, f"a piece of the key ({part!r}) was stored"


def test_plain_answers_from_a_hostile_server(tmp_path):
    key = new_key()
    with hostile_server() as (other_url, other):
        with hostile_server(other_origin=other.base) as (url, state):
            started = time.perf_counter()
            result = _run(url, tmp_path, PLAIN, key)
            elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    df = rows(tmp_path / "run")
    _check(df, PLAIN, key, {"other": other.base, "self": state.base})
    assert sum(other.hits.values()) == 0 and other.v2_requests == [], "a redirect reached another host"
    assert state.v2_requests == [], "a redirect was followed although backend.follow_redirects=false"
    by_id = df.set_index("prompt_id")
    assert "Your key is [redacted]. Also Bearer [redacted]" == by_id.loc["key_in_output", "output"]
    assert by_id.loc["key_in_finish_reason", "finish_reason"] == "[redacted]"
    assert by_id.loc["key_in_model", "response_model"] == "[redacted]"
    assert by_id.loc["key_escaped_in_model", "response_model"] == "[redacted]"
    assert by_id.loc["key_escaped_in_output", "output"] == "key [redacted]"
    assert elapsed < 120


def test_streamed_answers_from_a_hostile_server(tmp_path):
    key = new_key()
    with hostile_server() as (url, _state):
        result = _run(url, tmp_path, STREAMED, key, "backend.stream=true")
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    _check(df, STREAMED, key, {})
    by_id = df.set_index("prompt_id")
    assert len(by_id.loc["long_sse_line", "output"]) == LONG_LINE_BYTES  # a line of any length is read whole
    assert by_id.loc["key_in_stream", "output"] == "Your key is [redacted]"
    assert by_id.loc["key_in_stream_model", "response_model"] == "[redacted]"
    assert by_id.loc["key_escaped_in_stream", "output"] == "[redacted]"
    for mode in ("sse_cr", "sse_crlf", "sse_mixed"):  # every line ending the SSE spec allows
        assert by_id.loc[mode, "output"] == "fine", mode


@pytest.mark.parametrize("mode", ["redirect_307_same", "redirect_308_same"])
def test_a_same_origin_redirect_is_followed_only_when_asked(tmp_path, mode):
    key = new_key()
    with hostile_server() as (url, state):
        result = _run(url, tmp_path, {mode: None, "redirect_301_cross": None}, key, "backend.follow_redirects=true")
    assert result.returncode == 0, result.stderr
    by_id = rows(tmp_path / "run").set_index("prompt_id")
    assert by_id.loc[mode, "status"] == "ok" and by_id.loc[mode, "output"] == "moved fine"
    assert [method for method, _ in state.v2_requests] == ["POST"] and b"mode:" in state.v2_requests[0][1]
    cross = by_id.loc["redirect_301_cross"]
    assert cross["status"] == "error" and "it is not the same origin as backend.base_url" in cross["error"]


def test_a_redirect_loop_ends_in_an_error_row(tmp_path):
    with hostile_server() as (url, _state):
        result = _run(
            url, tmp_path, {"redirect_307_loop": None, "ok": None}, new_key(), "backend.follow_redirects=true"
        )
    assert result.returncode == 0, result.stderr  # (a run whose every row failed would exit 1)
    error = rows(tmp_path / "run").set_index("prompt_id").loc["redirect_307_loop", "error"]
    assert re.search(r"HTTP 307: the server redirected to .* \(more than 5 redirects\)", error), error


@pytest.mark.parametrize(
    "value, expected",
    [
        ("4", 4),
        ("1000000", 1_000_000),
        ("1000001", None),
        ("0", None),
        ("-3", None),
        ("4.5", None),
        ("1e3", None),
        ("abc", None),
        ("4, 8", None),
        ("99999999999999999999", None),
        ("", None),
        ("+4", None),
        ("0x10", None),
    ],
)
def test_an_advertised_capacity_is_parsed_defensively(value, expected):
    """A server's X-Sentech-Capacity header is untrusted: only a plain positive integer counts; the answer stays ok."""
    import asyncio

    from sentech_eval.backends.remote import RemoteBackend
    from sentech_eval.types import Sampling

    async def ask(base_url: str) -> tuple[str, int | None]:
        backend = RemoteBackend(base_url, "m", new_key(), concurrency=16)
        try:
            done = await backend.complete([{"role": "user", "content": f"mode:capacity={value}"}], Sampling())
            return done.status, backend.advertised_capacity
        finally:
            await backend.aclose()

    with hostile_server() as (url, _):
        status, capacity = asyncio.run(ask(url))
    assert status == "ok" and capacity == expected


def test_a_base_url_with_a_query_string_keeps_the_path_before_the_query_and_no_cookie_is_kept(tmp_path):
    """`?api-version=…` stays a query (POST …/v1/chat/completions?api-version=…); a server's cookies never come back."""
    key = new_key()
    with hostile_server() as (url, state):
        data = tmp_path / "cookies.parquet"
        pd.DataFrame({"id": [f"c{i}" for i in range(30)], "prompt": ["mode:set_cookie"] * 30}).to_parquet(data)
        result = call_cli(
            "run",
            "backend=remote",
            # (by name: aiohttp's default jar would keep a name's cookies, never an IP address's)
            f"backend.base_url='{url.replace('127.0.0.1', 'localhost')}?api-version=2024-06-01'",
            f"dataset.path={data}",
            "runner.progress=false",
            "runner.concurrency=1",
            f"hydra.run.dir={tmp_path / 'run'}",
            key=key,
        )
    assert result.returncode == 0, result.stderr
    assert (rows(tmp_path / "run")["status"] == "ok").all()
    assert state.queries == ["api-version=2024-06-01"] * 30
    assert state.cookies_received == [""] * 30
