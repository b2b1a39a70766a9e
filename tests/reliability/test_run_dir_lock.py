"""Two runs, one directory: a run holds an OS lock on its run dir; a second run stops at once.

Real `sentech-eval run` processes against the real server: while one run writes into a dir, a
second one into the same dir exits 2 with one sentence naming the first process, and the first
ends with every row once. After ``kill -9`` the kernel releases the lock and a re-run resumes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from reliability_support import (
    REPO_ROOT,
    assert_one_row_per_key,
    assert_one_sentence,
    call_cli,
    cli_command,
    cli_env,
    new_key,
    remote_run_args,
    rows,
    run_cli,
)

from sentech_eval.engine.results import PARTS_DIR
from sentech_eval.engine.rundir import LOCK_FILE
from sentech_eval.server.testing import running_server

SLOW_RUN = ("runner.concurrency=2", "runner.flush_s=0.1")  # with 100 ms answers: 200 rows take ~10 s


def _start(args: list[str], key: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(key), cwd=REPO_ROOT
    )


def _wait_for_parts(run_dir, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((run_dir / PARTS_DIR).glob("part-*.parquet")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the first run flushed nothing")


@contextmanager
def _first_run_writing(run_dir, latency_ms: float) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """(server url, key, the first run) once that run has flushed rows into ``run_dir``; the server stays up."""
    key = new_key()
    with running_server(engine="echo", api_key=key, latency_ms=latency_ms) as url:
        first = _start(remote_run_args(url, run_dir, *SLOW_RUN), key)
        try:
            _wait_for_parts(run_dir, first)
            yield url, key, first
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()


def _assert_every_row_once(run_dir):
    final = rows(run_dir)
    assert len(final) == 200 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)
    return final


def test_a_second_run_into_a_busy_dir_stops_at_once_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    with _first_run_writing(run_dir, latency_ms=100) as (url, key, first):
        started = time.monotonic()
        second = call_cli(*remote_run_args(url, run_dir, *SLOW_RUN), key=key)
        took = time.monotonic() - started
        assert first.poll() is None, "the first run must still be going for this test to mean anything"
        out, err = first.communicate(timeout=120)
    line = assert_one_sentence(second, f"Another sentech-eval run (pid {first.pid} on", str(run_dir))
    assert "choose another hydra.run.dir" in line
    assert took < 60
    assert first.returncode == 0, err
    final = _assert_every_row_once(run_dir)
    assert final["run_id"].nunique() == 1  # every row from the first run: the second sent nothing


def test_the_lock_dies_with_its_process(tmp_path):
    run_dir = tmp_path / "run"
    with _first_run_writing(run_dir, latency_ms=30) as (url, key, first):
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert (run_dir / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock with the process
        resumed = call_cli(*remote_run_args(url, run_dir, *SLOW_RUN), key=key)
    assert resumed.returncode == 0, resumed.stderr
    assert "rows already done are skipped" in resumed.stderr
    _assert_every_row_once(run_dir)


def test_score_refuses_while_a_run_writes_and_no_row_is_lost(tmp_path):
    """`score DIR` during a (resumed) run: one sentence naming the run, nothing rewritten; the run keeps every row."""
    run_dir = tmp_path / "run"
    with _first_run_writing(run_dir, latency_ms=100) as (_url, key, first):
        scored = call_cli("score", str(run_dir), "scorers=[contains]", key=None)
        assert first.poll() is None, "the run must still be going for this test to mean anything"
        out, err = first.communicate(timeout=120)
    assert_one_sentence(scored, f"Another sentech-eval process (pid {first.pid} on", "`sentech-eval score`")
    assert first.returncode == 0, err
    _assert_every_row_once(run_dir)
    after = call_cli("score", str(run_dir), "scorers=[contains]", key=None)  # the run is over: score may write
    assert after.returncode == 0, after.stderr
    assert len(rows(run_dir)) == 200


def test_a_run_refuses_a_dir_that_score_is_rewriting(tmp_path):
    from sentech_eval.engine.rundir import holding_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with running_server(engine="echo", api_key=(key := new_key())) as url, holding_run_dir(run_dir, "score"):
        second = run_cli(*remote_run_args(url, run_dir), key=key)  # a process: this one's locks are re-entrant
    assert_one_sentence(second, "Another sentech-eval run", str(run_dir))
