"""Fault-injection suite: a real `sentech-eval serve` with seeded faults, a real `sentech-eval run`.

1,000 requests (arithmetic, 200 prompts × 5 repeats) through 503s, dropped connections and
answers slower than the timeout must all end ``ok``; Retry-After is obeyed; what cannot succeed
by trying again (400, 413; 403/404/422 in test_server_answers) is tried once; a rejected key stops the run with one sentence.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from reliability_support import assert_one_row_per_key, assert_one_sentence, call_cli, new_key, remote_run_args, rows

from sentech_eval.server.testing import running_server

THOUSAND = ("runner.repeats=5", "runner.max_retries=10")  # 0.3**11 * 1000 ≈ 0.002 rows expected to fail


def _report(name: str, df: pd.DataFrame) -> None:
    dist = df["attempts"].value_counts().sort_index().to_dict()
    print(f"{name}: attempts distribution {dist}")


def _assert_thousand_ok(df: pd.DataFrame) -> None:
    assert len(df) == 1000
    assert_one_row_per_key(df)
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].value_counts()
    assert (df["http_status"] == 200).all()
    assert all(ref in out for ref, out in zip(df["reference"], df["output"]))  # the echo engine's answers
    assert (df["attempts"] > 1).sum() >= 100  # ~30% of first attempts failed
    assert df["attempts"].max() <= 11


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 0.3, "error_status": 503},
        {"drop_rate": 0.3},
    ],
    ids=["503", "drop"],
)
def test_thousand_requests_through_flaky_server_all_end_ok(tmp_path, faults):
    key = new_key()
    with running_server(engine="echo", api_key=key, seed=7, **faults) as url:
        result = call_cli(*remote_run_args(url, tmp_path / "run", *THOUSAND), key=key)
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    _report(str(faults), df)
    _assert_thousand_ok(df)


def test_answers_slower_than_timeout_are_abandoned_and_retried(tmp_path):
    key = new_key()
    with running_server(engine="echo", api_key=key, seed=7, slow_rate=0.1, slow_ms=1500) as url:
        result = call_cli(
            *remote_run_args(url, tmp_path / "run", *THOUSAND, "runner.timeout_s=0.3", "runner.concurrency=32"), key=key
        )
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    _report("slow", df)
    assert len(df) == 1000 and (df["status"] == "ok").all()
    assert_one_row_per_key(df)
    assert (df["attempts"] > 1).sum() >= 50  # ~10% of first attempts were slow
    assert (df["latency_s"] < 1.0).all()  # no ok row waited for a 1.5 s answer (0.3 s limit + loop slack)
    assert df["latency_s"].sum() < 1000 * 0.3


def test_retries_give_up_after_max_retries_with_the_last_error(tmp_path):
    key = new_key()
    with running_server(engine="echo", api_key=key, error_rate=1.0, error_status=503) as url:
        result = call_cli(*remote_run_args(url, tmp_path / "run", "dataset.limit=5", "runner.max_retries=2"), key=key)
    assert result.returncode == 1, result.stderr  # every row failed: said, exit 1, rows kept
    assert "every request failed" in result.stderr and "Traceback" not in result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == 5
    assert (df["status"] == "error").all()
    assert (df["attempts"] == 3).all()
    assert (df["http_status"] == 503).all()
    assert (df["error"] == "HTTP 503: Service temporarily unavailable; retry later.").all()
    assert df["output"].isna().all()  # never placeholder text for an error
    assert "0 ok, 5 errors" in result.stderr


def test_429_with_retry_after_is_obeyed(tmp_path):
    """One request at a time: the next request cannot start before every Retry-After has passed."""
    key = new_key()
    retry_after = 0.25
    with running_server(
        engine="echo", api_key=key, seed=3, error_rate=0.3, error_status=429, retry_after=retry_after
    ) as url:
        result = call_cli(
            *remote_run_args(
                url,
                tmp_path / "run",
                "dataset.limit=30",
                "runner.concurrency=1",
                "runner.max_retries=10",
                "runner.backoff_max_s=0.02",
            ),
            key=key,
        )
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run").sort_values("started_at").reset_index(drop=True)
    _report("429", df)
    assert (df["status"] == "ok").all() and len(df) == 30
    retried = df.index[df["attempts"] > 1]
    assert len(retried) >= 3
    gaps = df["started_at"].diff().shift(-1).dt.total_seconds()  # start of this row → start of the next
    for i in retried:
        if i + 1 < len(df):
            waits = df.at[i, "attempts"] - 1
            # backoff_max_s is 0.02, so only the header can explain waits of retry_after each
            assert gaps[i] >= waits * retry_after * 0.98, (i, df.at[i, "attempts"], gaps[i])


def test_429s_lower_the_concurrency(tmp_path):
    key = new_key()
    with running_server(engine="echo", api_key=key, seed=4, error_rate=0.5, error_status=429) as url:
        result = call_cli(
            *remote_run_args(
                url, tmp_path / "run", "dataset.limit=100", "runner.concurrency=16", "runner.max_retries=12"
            ),
            key=key,
        )
    assert result.returncode == 0, result.stderr
    assert (rows(tmp_path / "run")["status"] == "ok").all()
    match = re.search(r"429s lowered the concurrency to as low as (\d+) of 16", result.stderr)
    assert match, result.stderr
    assert int(match.group(1)) <= 8


@pytest.mark.parametrize(
    ("overrides", "server_options", "status", "fragment"),
    [
        (("sampling.max_tokens=3000000000",), {}, 400, "max_tokens must be at most"),
        (("dataset.limit=5",), {"max_body_bytes": 64}, 413, "larger than the limit"),
    ],
    ids=["400", "413"],
)
def test_client_errors_are_never_retried(tmp_path, overrides, server_options, status, fragment):
    key = new_key()
    with running_server(engine="echo", api_key=key, **server_options) as url:
        result = call_cli(*remote_run_args(url, tmp_path / "run", "dataset.limit=5", *overrides), key=key)
    # every row failed: the run says so and exits 1, but keeps every row (nothing retried, nothing lost)
    assert result.returncode == 1, result.stderr
    assert "every request failed" in result.stderr and "Traceback" not in result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == 5
    assert (df["attempts"] == 1).all()
    assert (df["http_status"] == status).all()
    assert df["error"].str.contains(fragment).all(), df["error"].iloc[0]


def test_rejected_key_stops_the_run_at_once_with_one_sentence(tmp_path):
    with running_server(engine="echo", api_key=new_key()) as url:
        result = call_cli(*remote_run_args(url, tmp_path / "run", "runner.repeats=5"), key=new_key())
    line = assert_one_sentence(result, "The server rejected the API key", "HTTP 401", "SENTECH_API_KEY")
    assert line.count(". ") <= 1
    df = rows(tmp_path / "run")
    assert len(df) == 0  # not 1,000 rows of 401s
