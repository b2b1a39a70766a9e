"""The one credential pattern (sentech_eval/secrets.py): names, shapes, values, encodings, URLs, redaction."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from sentech_eval.errors import ConfigError
from sentech_eval.secrets import (
    Redactor,
    find_credentials,
    is_credential_name,
    override_problem,
    refuse_secret_overrides,
    url_credential,
)

KEY = "sk-test-4f9a0c1e7b2d4a6c8e0f1a3b5c7d9e1f"
PLAIN_KEY = "Zq81mXv0Lr5TnB2kWp7cYd4H"  # no vendor prefix: a long mixed run is still a key's shape


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "apiKey",
        "APIKEY",
        "X-Api-Key",
        "headers.Authorization",
        "access_token",
        "backend.token",
        "client_secret",
        "password",
        "Cookie",
        "hydra.job.env_set.HF_TOKEN",
        "SENTECH_API_KEY",
        "x-amz-signature",
        "auth",
    ],
)
def test_credential_names(name):
    assert is_credential_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "api_key_env",
        "max_tokens",
        "prompt_tokens",
        "top_k",
        "author",
        "keyword",
        "keys",
        "monkey",
        "base_url",
        "tokenizer",
        "api-version",
        "passage",
        "key_file",
    ],
)
def test_names_that_are_not_credentials(name):
    assert not is_credential_name(name)


@pytest.mark.parametrize(
    "arg",
    [
        f"backend.api_key={KEY}",
        f"+backend.key={KEY}",
        f"++backend.headers.X-Api-Key={KEY}",
        f"+backend.headers={{Authorization:'Bearer {KEY}'}}",
        f"+backend.extra={{token: {PLAIN_KEY}}}",
        f"+backend.note={KEY}",
        f"+backend.note={PLAIN_KEY}",
        f"sampling.comment='{KEY}'",
        f"backend.base_url=https://api.example.com/v1?api%5Fkey={PLAIN_KEY}",
        f"backend.base_url=https://api.example.com/v1%3Fapi_key%3D{PLAIN_KEY}",
        f"backend.base_url=https://api.example.com/v1?access_token={PLAIN_KEY}",
        f"backend.base_url=https://user:{PLAIN_KEY}@api.example.com/v1",
        f"backend.api_key_env={KEY}",
        f"backend.api_key_env={PLAIN_KEY}",
        "backend.api_key_env=sk_live_4f9a0c1e7b2d4a6c8e0f",
        f"+backend.x=Basic {base64.b64encode(f'user:{KEY}'.encode()).decode()}",
        f"+backend.x={base64.b64encode(KEY.encode()).decode()}",
        f"hydra.job.env_set.SENTECH_API_KEY={KEY}",
        f"hydra.run.dir=/tmp/{KEY}",
        f"+backend.x={quote(quote(KEY, safe=''), safe='')}",
    ],
)
def test_overrides_carrying_a_key_are_refused(arg):
    assert override_problem(arg) is not None


def test_the_configured_key_is_refused_by_value_whatever_its_shape(monkeypatch):
    value = "justlettersandnothingelse"  # no shape at all: only its value gives it away
    monkeypatch.setenv("MY_KEY_VAR", value)
    for arg in (
        f"+backend.note={value}",
        f"+backend.note={quote(value)}x",
        f"+backend.note={base64.b64encode(value.encode()).decode()}",
    ):
        with pytest.raises(ConfigError) as info:
            refuse_secret_overrides(["backend.api_key_env=MY_KEY_VAR", arg])
        assert value not in str(info.value)


@pytest.mark.parametrize(
    "arg",
    [
        "sampling.temperature=0.5",
        "backend.api_key_env=SENTECH_API_KEY",
        "backend.api_key_env=OPENAI_API_KEY",
        "backend.model=meta-llama/Meta-Llama-3.1-8B-Instruct",
        "backend.model=DeepSeek-R1-Distill-Qwen-32B-Instruct",
        "hydra.run.dir=/tmp/pytest-of-root/pytest-3/test_an_override_carrying0/run",
        "-m",
        "+sweep=temperature",
        "scorers=[exact_match,contains]",
        "sampling.max_tokens=64",
        "dataset.path=/data/2026-11-25_17-00-00/q.parquet",
        "backend.base_url=http://127.0.0.1:8000/v1?author=me&keyword=capital",
        "backend.base_url=https://h/v1?api-version=2024-06-01",
    ],
)
def test_ordinary_overrides_pass(arg):
    assert override_problem(arg) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1?author=me",
        "https://api.example.com/v1?keyword=paris&page=2",
        "https://api.example.com/v1",
        "http://localhost:8000/v1?q=token+count",
    ],
)
def test_harmless_query_parameters_pass_the_url_check(url):
    assert url_credential(url) is None


@pytest.mark.parametrize(
    "url",
    [
        f"https://api.example.com/v1?key={PLAIN_KEY}",
        "https://api.example.com/v1?api_key=x",
        "https://api.example.com/v1?apiKey=x",
        "https://u:p@api.example.com/v1",
        f"https://api.example.com/{KEY}/v1",
        "https://api.example.com/v1?X-Amz-Signature=abc",
    ],
)
def test_urls_carrying_a_credential(url):
    assert url_credential(url) is not None


def test_config_entries_holding_a_credential_by_name_or_value():
    node = {
        "backend": {"api_key_env": "SENTECH_API_KEY", "max_tokens": 3, "headers": {"Authorization": "x"}, "note": KEY},
        "sampling": {"top_k": 4},
    }
    assert find_credentials(node) == ["backend.headers", "backend.note"] or sorted(find_credentials(node)) == [
        "backend.headers.Authorization",
        "backend.note",
    ]


def test_redaction_covers_the_key_and_long_prefixes_and_suffixes():
    redactor = Redactor(KEY)
    n = len(KEY)
    assert redactor.text(f"a {KEY} b") == "a [redacted] b"
    assert redactor.text(f"cut: {KEY[: n // 2 + 1]}") == "cut: [redacted]"
    assert redactor.text(f"cut: {KEY[:-1]}") == "cut: [redacted]"
    assert redactor.text(f"{KEY[3:]} tail") == "[redacted] tail"
    assert redactor.raw(f"x{KEY}y".encode()) == b"x[redacted]y"
    assert redactor.text("nothing here") == "nothing here"
    assert redactor.text(KEY[:7]) == KEY[:7]  # short pieces are ordinary text


def test_a_key_too_short_to_be_secret_is_not_searched_for():
    assert Redactor("k").text("Stockholm") == "Stockholm"


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: "".join(f"\\u{ord(c):04x}" for c in k),  # JSON-escaped
        lambda k: "\\u0073" + k[1:],  # one character escaped
        lambda k: "".join(f"%{ord(c):02X}" for c in k),  # percent-encoded
        lambda k: "".join(f"&#{ord(c)};" for c in k),  # HTML character references
        lambda k: "".join(f"\\x{ord(c):02x}" for c in k),
        lambda k: __import__("base64").b64encode(f"user:{k}".encode()).decode(),  # an echoed Basic header
        lambda k: __import__("base64").urlsafe_b64encode(f"ab{k}".encode()).decode().rstrip("="),
        lambda k: __import__("base64").b64encode(k[:20].encode()).decode(),  # a long part of it
    ],
)
def test_the_redactor_finds_the_key_in_the_value_as_it_decodes(encode):
    from sentech_eval.secrets import Redactor

    key = "sk-" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    cleaned = Redactor(key).text(f"model {encode(key)} end")
    assert cleaned == "model [redacted] end"
    assert Redactor(key).text("plain text with \\n and 100% and &amp;") == "plain text with \\n and 100% and &amp;"


def test_the_redactor_cleans_every_text_field_of_a_completion():
    from sentech_eval.secrets import Redactor
    from sentech_eval.types import Completion

    key = "sk-" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    done = Completion(output=key, response_model=f"m-{key}", finish_reason=key, error=f"e {key}", latency_s=1.0)
    Redactor(key).completion_fields(done)
    assert (done.output, done.response_model, done.finish_reason, done.error) == (
        "[redacted]",
        "m-[redacted]",
        "[redacted]",
        "e [redacted]",
    )
    assert done.latency_s == 1.0


@pytest.mark.parametrize("unit", ["A", "ab", "a=", "QUJD", "%41", "a_", "a-", "=", "a: ", "x.y", "sk-", "1a", "k=v&"])
def test_the_credential_checks_are_linear_in_a_values_length(unit):
    """A 20,000-character value took 7 s (a regex tried every start of a long run): now a doubling of the
    length at most about doubles the time, and 40,000 characters take well under a second."""
    import time

    from sentech_eval.secrets import _credential_problem, credential_problem

    def timed(n: int) -> float:
        value = unit * (n // len(unit))
        _credential_problem.cache_clear()
        started = time.perf_counter()
        credential_problem(value, ["secretvalue123"])
        return time.perf_counter() - started

    small, large = min(timed(10_000) for _ in range(3)), min(timed(40_000) for _ in range(3))
    assert large < 1.0, large
    assert large < 8 * small + 0.05, (small, large)  # 4x the length: about 4x the time, not 16x


def test_the_same_value_is_checked_once():
    from sentech_eval.secrets import _credential_problem, credential_problem

    _credential_problem.cache_clear()
    value = "model-name-" + "x" * 5000
    credential_problem(value, ["secretvalue123"])
    credential_problem(value, ["secretvalue123"])
    assert _credential_problem.cache_info().hits == 1
