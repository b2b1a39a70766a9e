"""Retry-After and the token budget: a server cannot stall or hang a run.

Real `sentech-eval run` processes against the hostile host: a ``Retry-After`` is honoured only on
429/503 and only up to ``runner.max_retry_after_s`` (86400, a date in 2100, ``inf`` and ``nan``
included), the progress bar says why the run waits, a ``Retry-After`` on a 400 pauses nothing, and
an absurd but in-range ``total_tokens`` with ``runner.tpm`` set does not put the token bucket into
a debt the run never leaves.
"""

from __future__ import annotations

import time

import pandas as pd
from hostile_server import hostile_server
from reliability_support import call_cli, new_key, rows


def _run(url, tmp_path, modes, *extra, progress=False):
    data = tmp_path / "modes.parquet"
    pd.DataFrame({"id": [f"{m}-{i}" for i, m in enumerate(modes)], "prompt": [f"mode:{m}" for m in modes]}).to_parquet(
        data
    )
    started = time.perf_counter()
    result = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={data}",
        f"runner.progress={'true' if progress else 'false'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "runner.backoff_base_s=0.01",
        "runner.backoff_max_s=0.05",
        "runner.max_retries=1",
        *extra,
        key=new_key(),
    )
    return result, time.perf_counter() - started


def test_retry_after_is_capped_and_shown_on_the_progress_bar(tmp_path):
    modes = ["retry_after_huge", "retry_after_date", "retry_after_inf", "retry_after_garbage", "ok"]
    with hostile_server() as (url, state):
        result, took = _run(url, tmp_path, modes, "runner.max_retry_after_s=1.5", "runner.concurrency=1", progress=True)
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run").set_index("prompt_id")
    assert (df.loc[[f"{m}-{i}" for i, m in enumerate(modes[:-1])], "attempts"] == 2).all()
    assert state.hits["retry_after_huge"] == 2 and state.hits["retry_after_inf"] == 2
    # three capped pauses of 1.5 s (huge, date, inf); nan is not a delay
    assert 4.0 <= took < 60, took
    assert "Retry-After" in result.stderr and "server asked" in result.stderr, result.stderr[-2000:]


def test_a_retry_after_on_a_400_pauses_nothing(tmp_path):
    modes = ["retry_after_400"] + ["ok"] * 30
    with hostile_server() as (url, state):
        result, took = _run(url, tmp_path, modes, "runner.max_retry_after_s=600", "runner.concurrency=2")
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == 31 and (df["status"] == "ok").sum() == 30
    assert state.hits["retry_after_400"] == 1  # a 400 is not retried, and its Retry-After is not believed
    assert took < 60, took


def test_an_absurd_token_count_with_tpm_does_not_hang_the_run(tmp_path):
    modes = ["usage_large_valid", "ok"] * 10
    with hostile_server() as (url, _state):
        result, took = _run(url, tmp_path, modes, "runner.tpm=600000", "runner.concurrency=2")
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == 20 and (df["status"] == "ok").all()
    assert took < 90, took
