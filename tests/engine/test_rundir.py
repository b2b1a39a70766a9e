"""The run dir checks and its lock, in-process (the CLI side is in tests/reliability/test_run_dir_lock.py)."""

from __future__ import annotations

import multiprocessing

import pytest

from sentech_eval.engine.rundir import LOCK_FILE, lock_run_dir, prepare_run_dir, unlock_run_dir
from sentech_eval.errors import RunDirError


def _try_lock(path: str, queue) -> None:
    try:
        lock_run_dir(path)
        queue.put("locked")
    except RunDirError as exc:
        queue.put(str(exc))


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    run_dir = tmp_path / "run"
    lock_run_dir(run_dir)
    lock_run_dir(run_dir)  # `run` takes it before Hydra starts, the job again
    assert (run_dir / LOCK_FILE).read_text().startswith("pid ")
    queue = multiprocessing.get_context("spawn").Queue()
    other = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(str(run_dir), queue))
    other.start()
    message = queue.get(timeout=60)
    other.join(60)
    assert message.startswith("Another sentech-eval run (pid ") and str(run_dir) in message
    unlock_run_dir(run_dir)
    other = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(str(run_dir), queue))
    other.start()
    assert queue.get(timeout=60) == "locked"
    other.join(60)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: (p.write_text("x"), p)[1], "is an existing file, not a directory"),
        (lambda p: (p.write_text("x"), p / "sub")[1], "cannot be created (a part of the path is a file)"),
    ],
)
def test_a_run_dir_that_cannot_be_one_is_refused_in_one_sentence(tmp_path, make, fragment):
    path = make(tmp_path / "dir")
    with pytest.raises(RunDirError, match=r"choose (another|a writable) hydra.run.dir") as info:
        prepare_run_dir(path)
    assert fragment in str(info.value)
