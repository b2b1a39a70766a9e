"""Interruption and resume: SIGINT/SIGTERM, a second Ctrl-C, kill -9, re-running into a dir with errors.

Runs are real `sentech-eval run` processes against a real server whose ``--latency-ms`` makes
them long enough to interrupt after some rows were flushed (``runner.flush_s`` is small).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_support import (
    REPO_ROOT,
    assert_one_row_per_key,
    call_cli,
    cli_command,
    cli_env,
    new_key,
    remote_run_args,
    rows,
)

from sentech_eval.engine.results import PARTS_DIR
from sentech_eval.server.testing import running_server

SLOW_RUN = ("runner.concurrency=4", "runner.flush_s=0.1")


def _start(args: list[str], key: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(key), cwd=REPO_ROOT
    )


def _wait_for_parts(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((run_dir / PARTS_DIR).glob("part-*.parquet"))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {count} parts were flushed: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {count} flushed parts within {timeout} s")


def _resume_command(stderr: str) -> list[str]:
    """The command the interrupted run printed, as argv for this interpreter."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("sentech-eval run ")]
    assert lines, stderr
    argv = shlex.split(lines[-1])
    assert argv[:2] == ["sentech-eval", "run"]
    return argv[1:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_sending_saves_rows_and_prints_how_to_resume(tmp_path, sig):
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key, latency_ms=30) as url:
        proc = _start(remote_run_args(url, run_dir, *SLOW_RUN), key)
        _wait_for_parts(run_dir, 1, proc)
        signalled = time.time()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert "stopping" in err and "Resume" in err
        saved = rows(run_dir)
        assert 0 < len(saved) < 200 and (saved["status"] == "ok").all()
        last_sent = saved["started_at"].max().timestamp()
        assert last_sent <= signalled + 0.5, "requests were sent after the signal"
        assert not (run_dir / PARTS_DIR).exists()  # merged into results.parquet on the way out
        assert f"{len(saved)} rows are saved" in err
        if sig != signal.SIGINT:
            return
        # Resume with exactly the printed command.
        resumed = call_cli(*_resume_command(err), key=key)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(saved)} rows already done are skipped" in resumed.stderr
    final = rows(run_dir)
    assert len(final) == 200 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)
    # the rows saved before the interruption were kept, not re-requested
    before = saved.set_index(["prompt_id", "repeat"])["run_id"]
    after = final.set_index(["prompt_id", "repeat"])["run_id"]
    assert (after.loc[before.index] == before).all()


def test_second_ctrl_c_abandons_in_flight_requests(tmp_path):
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key, latency_ms=6000) as url:
        proc = _start(remote_run_args(url, run_dir, *SLOW_RUN), key)
        deadline = time.monotonic() + 60
        while not (run_dir / PARTS_DIR).exists() and time.monotonic() < deadline:  # the writer is set up
            time.sleep(0.02)
        time.sleep(0.5)  # requests are in flight (each takes 6 s)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert took < 4.5, f"waited {took:.1f} s for requests that take 6 s"
    assert len(rows(run_dir)) == 0  # nothing finished, nothing invented


def test_kill_9_then_resume_gives_exactly_one_row_per_key(tmp_path):
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key, latency_ms=20) as url:
        args = remote_run_args(url, run_dir, *SLOW_RUN, "runner.repeats=2")
        proc = _start(args, key)
        _wait_for_parts(run_dir, 3, proc)
        proc.kill()
        proc.communicate(timeout=30)
        flushed = rows(run_dir)  # what survived: the complete part files
        assert 0 < len(flushed) < 400
        resumed = call_cli(*args, key=key)
    assert resumed.returncode == 0, resumed.stderr
    # only rows that were never flushed are requested again
    assert f"{len(flushed)} rows already done are skipped" in resumed.stderr
    assert f"{400 - len(flushed)} ok, 0 errors" in resumed.stderr
    final = rows(run_dir)
    assert len(final) == 400 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)
    assert not (run_dir / PARTS_DIR).exists()


def test_rerun_into_the_same_dir_retries_only_the_error_rows(tmp_path):
    key = new_key()
    run_dir = tmp_path / "run"
    args = ("dataset.limit=60", "runner.max_retries=0")
    with running_server(engine="echo", api_key=key, seed=11, error_rate=0.3, error_status=500) as url:
        first = call_cli(*remote_run_args(url, run_dir, *args), key=key)
    assert first.returncode == 0, first.stderr
    before = rows(run_dir)
    errors = before[before["status"] == "error"]
    assert 5 <= len(errors) <= 40 and (errors["http_status"] == 500).all()
    with running_server(engine="echo", api_key=key) as url:  # the API has recovered
        second = call_cli(*remote_run_args(url, run_dir, *args), key=key)
    assert second.returncode == 0, second.stderr
    assert f"{len(errors)} ok, 0 errors, {60 - len(errors)} skipped" in second.stderr
    after = rows(run_dir)
    assert len(after) == 60 and (after["status"] == "ok").all()
    assert_one_row_per_key(after)
    new_run = after["run_id"] != before["run_id"].iloc[0]
    assert set(after.loc[new_run, "prompt_id"]) == set(errors["prompt_id"])

    # runner.resume=false starts over: every row is requested again
    with running_server(engine="echo", api_key=key) as url:
        third = call_cli(*remote_run_args(url, run_dir, *args, "runner.resume=false"), key=key)
    assert third.returncode == 0, third.stderr
    fresh = rows(run_dir)
    assert len(fresh) == 60 and fresh["run_id"].nunique() == 1
    assert fresh["run_id"].iloc[0] not in set(after["run_id"])


def test_ctrl_c_stops_a_batched_local_run_and_the_printed_command_finishes_it(tmp_path):
    """backend=local with continuous batching (issue 28): Ctrl-C lets the sequences in the batch finish,
    saves them, prints how to resume; the resume runs the rest with one row per key."""
    run_dir = tmp_path / "run"
    args = [
        "run",
        "backend=local",
        "backend.parallel=4",
        "dataset=capitals",
        "dataset.limit=24",
        "runner.flush_s=0.1",
        f"hydra.run.dir={run_dir}",
    ]
    proc = _start(args, "")
    _wait_for_parts(run_dir, 1, proc, timeout=120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "parallel=4" in err
    saved = rows(run_dir)
    assert 0 < len(saved) < 24 and (saved["status"] == "ok").all(), saved[["status", "error"]]
    assert f"{len(saved)} rows are saved" in err
    resumed = call_cli(*_resume_command(err), key="")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(saved)} rows already done are skipped" in resumed.stderr
    final = rows(run_dir)
    assert len(final) == 24 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)
