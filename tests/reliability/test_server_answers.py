"""Broken server answers become rows with ``status="error"`` and a precise ``error``; never a crash.

One real `sentech-eval run` (streaming on) against the purpose-built broken host in
``broken_remote.py``: each dataset row asks for one misbehaviour. Also: which statuses are
retried (the host counts requests per row), and a 403 stops the run like a 401.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from broken_remote import broken_remote
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_support import assert_one_sentence, call_cli, new_key, rows

from sentech_eval.backends.remote_answers import parse_completion_body

# case -> (attempts with runner.max_retries=1, fragment of the error; None = the row is ok)
CASES: dict[str, tuple[int, str | None]] = {
    "ok": (1, None),
    "non_json": (1, "response body is not valid JSON ("),
    "html_page": (1, "response is an HTML page ('Welcome to nginx!', content-type text/html)"),
    "html_error": (2, "HTTP 502: an HTML error page ('502 Bad Gateway') instead of a JSON error"),
    "missing_choices": (1, "response has no 'choices'"),
    "empty_content": (1, "response content is empty"),
    "null_content": (1, "response choices[0].message.content is missing or null, not a string"),
    "wrong_content_type": (1, "response has content-type 'text/plain', not application/json"),
    "truncated_body": (2, "response body was cut off before its end"),
    "truncated_json": (1, "response body is not valid JSON ("),
    "stream_cut": (2, "the stream was cut mid-way"),
    "stream_error": (2, "the stream reported an error mid-way: Internal server error (engine crashed)"),
    "stream_garbage": (1, "stream chunk is a JSON list, not an object"),
    "status_400": (1, "HTTP 400: status 400"),
    "status_404": (1, "HTTP 404: status 404"),
    "status_422": (1, "HTTP 422: status 422"),
    "status_429": (2, "HTTP 429: status 429"),
    "status_500": (2, "HTTP 500: status 500"),
    "status_502": (2, "HTTP 502: status 502"),
    "status_503": (2, "HTTP 503: status 503"),
    "status_504": (2, "HTTP 504: status 504"),
    "echo_key": (1, "HTTP 400: bad request from Bearer [redacted]"),
}


def _dataset(path, cases) -> str:
    pd.DataFrame({"id": list(cases), "prompt": [f"case:{c}" for c in cases]}).to_parquet(path)
    return str(path)


def _args(url: str, tmp_path, cases, *extra: str) -> list[str]:
    data = _dataset(tmp_path / "cases.parquet", cases)
    return [
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={data}",
        "dataset.name=cases",
        "runner.progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        "runner.backoff_base_s=0.01",
        "runner.backoff_max_s=0.05",
        "runner.max_retries=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("answers")
    key = new_key()
    with broken_remote() as (url, host):
        result = call_cli(*_args(url, tmp_path, CASES, "backend.stream=true"), key=key)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    df = rows(tmp_path / "run").set_index("prompt_id")
    return df, host, key, result


@pytest.mark.parametrize("case", list(CASES))
def test_each_broken_answer_is_a_precise_error_row(broken_run, case):
    df, host, key, _ = broken_run
    attempts, fragment = CASES[case]
    row = df.loc[case]
    if fragment is None:
        assert row["status"] == "ok" and row["output"] == "fine" and pd.isna(row["error"])
    else:
        assert row["status"] == "error"
        assert fragment in row["error"], row["error"]
        assert len(row["error"]) < 400
    assert row["attempts"] == attempts, (row["attempts"], row["error"])
    assert host.hits[case] == attempts  # what the host actually received


def test_the_key_never_reaches_an_error_or_the_output(broken_run):
    df, host, key, result = broken_run
    assert all(h == f"Bearer {key}" for h in host.authorization)  # it was sent...
    text = df.astype(str).to_string()
    assert key not in text  # ...but appears nowhere in the results
    assert key not in result.stderr and key not in result.stdout


def test_a_cut_stream_keeps_what_arrived_but_is_not_ok(broken_run):
    df, *_ = broken_run
    row = df.loc["stream_cut"]
    assert row["status"] == "error" and row["output"] == "The answer is"


def test_403_stops_the_run_with_one_sentence(tmp_path):
    with broken_remote() as (url, host):
        data = tmp_path / "cases.parquet"
        pd.DataFrame({"id": range(100), "prompt": ["case:status_403"] * 100}).to_parquet(data)
        result = call_cli(
            "run",
            "backend=remote",
            f"backend.base_url={url}",
            f"dataset.path={data}",
            "runner.progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            "runner.concurrency=4",
            key=new_key(),
        )
    assert_one_sentence(result, "The server rejected the API key", "HTTP 403", "SENTECH_API_KEY")
    assert host.hits["status_403"] <= 4  # the requests already in flight, not 100
    assert len(rows(tmp_path / "run")) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["choices", "message", "content", "delta", "usage", "finish_reason", "error", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(body=json_values, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_any_json_answer_parses_to_a_completion_without_raising(body, content_type):
    completion = parse_completion_body(json.dumps(body).encode(), content_type)
    assert completion.status in ("ok", "error")
    if completion.status == "ok":
        assert isinstance(completion.output, str) and completion.output.strip()
    else:
        assert completion.error and completion.output is None


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_any_bytes_parse_to_a_completion_without_raising(raw):
    completion = parse_completion_body(raw, "application/json")
    assert completion.status == "error" or completion.output
