"""`sentech-eval view` as a user starts it: one line with the URL, Ctrl-C (or SIGTERM) stops it cleanly and
leaves no worker behind, bad input exits 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from cli_helpers import REPO_ROOT, run_cli


def start_viewer(results_tree, tmp_path) -> subprocess.Popen:
    """`sentech-eval view RESULTS --port 0` in its own process, its cache in ``tmp_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "sentech_eval.cli", "view", str(results_tree), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def worker_processes_of(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (the viewer's spawned worker, its resource tracker)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return children


def test_view_prints_its_url_serves_and_stops_on_ctrl_c(results_tree, tmp_path):
    proc = start_viewer(results_tree, tmp_path)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("sentech-eval view: http://127.0.0.1:") and line.endswith("/"), line
        url = line.split(": ", 1)[1]
        for _ in range(120):  # until every run's summary is computed (and cached)
            with urllib.request.urlopen(url, timeout=30) as response:
                page = response.read()
            assert response.status == 200 and b"capitals/run-a" in page
            if b'id="pending"' not in page:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in err
    assert out == ""  # nothing but the URL line on stdout
    assert (tmp_path / "cache" / "sentech-eval" / "view").is_dir()  # its cache: the user cache dir


def test_view_refuses_a_missing_dir_in_one_sentence(tmp_path):
    done = run_cli("view", str(tmp_path / "nope"))
    assert done.returncode == 2 and "is not a directory" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_view_help_explains_itself():
    done = run_cli("view", "--help")
    assert done.returncode == 0 and "--host" in done.stdout and "token" in done.stdout and "--open" in done.stdout


def test_open_starts_a_browser_on_the_url_and_only_with_open(results_tree, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), "BROWSER": str(browser)}
    for flags in ([], ["--open"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentech_eval.cli", "view", str(results_tree), "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            url = proc.stdout.readline().strip().split(": ", 1)[1]
            for _ in range(40):
                if flags and opened.exists():
                    break
                time.sleep(0.25)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        if flags:
            assert opened.read_text().split() == [url]
        else:
            time.sleep(1)
            assert not opened.exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_view_stopped_by_a_signal_leaves_no_worker_behind(results_tree, tmp_path, stop):
    proc = start_viewer(results_tree, tmp_path)
    try:
        url = proc.stdout.readline().strip().split(": ", 1)[1]
        with urllib.request.urlopen(url, timeout=30) as response:  # starts the worker (summaries)
            assert response.status == 200
        workers = []
        for _ in range(100):
            workers = worker_processes_of(proc.pid)
            if workers:
                break
            time.sleep(0.05)
        assert workers, "the viewer started no worker process"
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if stop == signal.SIGTERM:
        assert proc.returncode == 0 and "Traceback" not in err and "stopped" in err, err
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
    assert alive == [], f"worker processes outlived the viewer: {alive}"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
