"""The ``sentech-eval`` dispatcher's exit: the work is saved and the exit code kept, without teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sentech_eval.cli import SUBCOMMANDS, usage


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose stdout is a pipe and buffered, as under `| tee`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env
    )


def test_exit_without_teardown_flushes_output_runs_atexit_and_keeps_the_code(tmp_path):
    """Buffered output (no newline, stdout a pipe) and an atexit function's file survive; the code is the command's."""
    proc = run_python(
        f"""
        import atexit, logging, sys
        from sentech_eval.cli import exit_without_teardown
        handler = logging.FileHandler({str(tmp_path / "job.log")!r}, delay=False)
        logging.getLogger("job").addHandler(handler)
        logging.getLogger("job").warning("the last line of the log")
        atexit.register(lambda: open({str(tmp_path / "atexit.txt")!r}, "w").write("ran"))
        atexit.register(lambda: print("printed at exit"))
        sys.stdout.write("buffered, no newline")
        sys.stderr.write("err tail")
        exit_without_teardown(3)
        print("not reached")
        """,
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newlineprinted at exit\n"
    assert proc.stderr.endswith("err tail")
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "the last line of the log" in (tmp_path / "job.log").read_text()


def test_exit_without_teardown_waits_for_a_working_thread(tmp_path):
    """A non-daemon thread still writing is waited for, as Python's own exit would."""
    proc = run_python(
        f"""
        import threading, time
        from sentech_eval.cli import exit_without_teardown
        def work():
            time.sleep(0.5)
            open({str(tmp_path / "thread.txt")!r}, "w").write("done")
        threading.Thread(target=work).start()
        exit_without_teardown(4)
        """,
        tmp_path,
    )
    assert proc.returncode == 4, proc.stderr
    assert (tmp_path / "thread.txt").read_text() == "done"


def test_module_entry_reports_an_unknown_command_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sentech_eval.cli", "nope"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 2
    assert "unknown command 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_lists_every_subcommand():
    text = usage()
    assert all(f"  {name}" in text for name in SUBCOMMANDS)
