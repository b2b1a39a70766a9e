"""Bad input and bad places: one sentence, exit 2, no traceback, nothing lost.

Each case is the real `sentech-eval run` CLI (in-process, ``call_cli``; a process of its own where a
signal or a resource limit is the test): corrupt Parquet pages behind an intact footer,
non-numeric and negative settings, a run dir that is a file, a key with a control character,
reserved column names, a key typo (named with the nearest valid key), a disk that fills up during
the merge, Ctrl-C during the merge, and Ctrl-C in a sweep (the printed command resumes the same
sweep dir). A dataset given by path is named after its file.
"""

from __future__ import annotations

import json
import resource
import shlex
import signal
import subprocess
import time

import pandas as pd
import pytest
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
)

from sentech_eval.engine.results import PARTS_DIR, RESULTS_FILE, read_metadata
from sentech_eval.server.testing import running_server


def _prompts(path, n=5, **extra_columns):
    pd.DataFrame({"id": range(n), "prompt": [f"What is {i} plus {i}?" for i in range(n)], **extra_columns}).to_parquet(
        path, compression="zstd"
    )
    return path


def test_corrupt_parquet_pages_behind_an_intact_footer(tmp_path):
    path = _prompts(tmp_path / "corrupt.parquet", 500)
    raw = bytearray(path.read_bytes())
    for i in range(200, 1200):  # inside the column chunks; the footer (schema, row count) is intact
        raw[i] = (raw[i] * 7 + 13) % 256
    path.write_bytes(bytes(raw))
    result = call_cli("run", f"dataset.path={path}", f"hydra.run.dir={tmp_path / 'run'}", key=None)
    assert_one_sentence(result, f"Dataset {path} is corrupt after row 0", "write the file again")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("backend.timeout_s=abc", "Config key 'backend.timeout_s' must be a number, got 'abc'"),
        ("backend.timeout_s=-1", "backend.timeout_s=-1 must be greater than 0"),
        ("backend.timeout_s=0", "backend.timeout_s=0 must be greater than 0"),
        ("backend.max_response_mb=-5", "backend.max_response_mb=-5 must be greater than 0"),
        ("backend.follow_redirects=maybe", "Config key 'backend.follow_redirects' must be true or false, got 'maybe'"),
        ("runner.timeout_s=-1", "runner.timeout_s=-1 must be greater than 0"),
        ("runner.backoff_base_s=-1", "runner.backoff_base_s=-1 must be 0 or more"),
        ("runner.backoff_max_s=-0.5", "runner.backoff_max_s=-0.5 must be 0 or more"),
        ("runner.flush_s=-1", "runner.flush_s=-1 must be greater than 0"),
        ("runner.flush_s=abc", "Config key 'runner.flush_s' must be a number, got 'abc'"),
        ("runner.max_retry_after_s=-1", "runner.max_retry_after_s=-1 must be 0 or more"),
        ("runner.rpm=nan", "Config key 'runner.rpm' must be a number or null"),
    ],
)
def test_non_numeric_and_negative_settings(tmp_path, override, fragment):
    result = call_cli(
        "run",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
        key=new_key(),
    )
    assert_one_sentence(result, fragment)


@pytest.mark.parametrize(
    "typo, nearest",
    [
        ("sampling.temprature=0.5", "sampling.temperature"),
        ("runner.concurency=4", "runner.concurrency"),
        ("dataset.limt=3", "dataset.limit"),
        ("backend.base_ur=http://x/v1", "backend.base_url"),
        ("sampling.top-p=0.5", "sampling.top_p"),
    ],
)
def test_a_key_typo_names_the_nearest_valid_key(tmp_path, typo, nearest):
    result = call_cli("run", "backend=remote", typo, f"hydra.run.dir={tmp_path / 'run'}", key=new_key())
    key = typo.split("=")[0]
    assert_one_sentence(result, f"Unknown config key '{key}'", f"the nearest valid key is '{nearest}'")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: (p.write_text("x"), p)[1], "is an existing file, not a directory"),
        (lambda p: (p.write_text("x"), p / "run")[1], "cannot be created (a part of the path is a file)"),
    ],
)
def test_a_run_dir_that_cannot_be_one(tmp_path, make, fragment):
    run_dir = make(tmp_path / "taken")
    result = call_cli("run", f"hydra.run.dir={run_dir}", key=None)
    assert_one_sentence(result, f"hydra.run.dir={run_dir}", fragment)


@pytest.mark.parametrize(
    "char, kind",
    [("\x01", "a control character"), ("\n", "a control character"), (" ", "a space"), ("é", "a non-ASCII character")],
)
def test_a_key_with_a_bad_character(tmp_path, char, kind):
    key = new_key()
    bad = key[:10] + char + key[10:]
    result = call_cli(
        "run", "backend=remote", "backend.base_url=http://127.0.0.1:9/v1", f"hydra.run.dir={tmp_path / 'run'}", key=bad
    )
    assert_one_sentence(result, f"contains {kind} at position 11", "SENTECH_API_KEY")
    assert key[:10] not in result.stderr and key[10:] not in result.stderr


@pytest.mark.parametrize("column", ["__row", "__row_max", "status", "score_mine", "job", "latency_s"])
def test_reserved_column_names_are_refused_up_front(tmp_path, column):
    path = _prompts(tmp_path / "data.parquet", **{column: [1, 2, 3, 4, 5]})
    result = call_cli("run", f"dataset.path={path}", f"hydra.run.dir={tmp_path / 'run'}", key=None)
    assert_one_sentence(result, f"column '{column}'", "is reserved", "rename the column")
    assert not (tmp_path / "run" / RESULTS_FILE).exists()


def test_a_dataset_given_by_path_is_named_after_its_file(tmp_path):
    key = new_key()
    path = _prompts(tmp_path / "my_questions.parquet")
    with running_server(engine="echo", api_key=key) as url:
        result = call_cli(
            *remote_run_args(url, tmp_path / "run", f"dataset.path={path}", "runner.progress=true"), key=key
        )
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    assert set(df["dataset"]) == {"my_questions"}
    assert read_metadata(tmp_path / "run" / RESULTS_FILE)["dataset"]["name"] == "my_questions"
    assert "my_questions on remote" in result.stderr  # the progress bar
    assert "capitals" not in result.stderr and "arithmetic" not in result.stderr


def _merge_size(tmp_path, url, key) -> int:
    probe = tmp_path / "probe"
    result = call_cli(*remote_run_args(url, probe, "runner.flush_rows=10"), key=key)
    assert result.returncode == 0, result.stderr
    return (probe / RESULTS_FILE).stat().st_size


def test_a_full_disk_during_the_merge_loses_nothing_and_says_how_to_finish(tmp_path):
    """The file-size limit (RLIMIT_FSIZE) lets the small part files through and stops the merged file,
    the way a disk that fills up at the end of a run does (the write fails with an OSError)."""
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key) as url:
        limit = int(_merge_size(tmp_path, url, key) * 0.8)

        def small_files() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        full = subprocess.run(
            cli_command(*remote_run_args(url, run_dir, "runner.flush_rows=10")),
            capture_output=True,
            text=True,
            env=cli_env(key),
            cwd=REPO_ROOT,
            timeout=120,
            preexec_fn=small_files,
        )
        assert len(list((run_dir / PARTS_DIR).glob("part-*.parquet"))) == 20
        line = assert_one_sentence(
            full, f"Could not write {run_dir / RESULTS_FILE}", f"every row is safe in {run_dir / PARTS_DIR}"
        )
        assert "Traceback" not in full.stderr
        command = shlex.split(full.stderr.strip().splitlines()[-1])
        assert command[:2] == ["sentech-eval", "run"] and f"hydra.run.dir={run_dir}" in command, line
        finished = call_cli(*command[1:], key=key)
    assert finished.returncode == 0, finished.stderr
    assert "200 rows already done are skipped" in finished.stderr
    final = rows(run_dir)
    assert len(final) == 200 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)
    assert not (run_dir / PARTS_DIR).exists()


def test_ctrl_c_during_the_merge_exits_130_with_a_message(tmp_path):
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key) as url:
        args = remote_run_args(url, run_dir, "runner.flush_rows=1", "runner.repeats=6", "runner.concurrency=32")
        proc = subprocess.Popen(
            cli_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(key),
            cwd=REPO_ROOT,
        )
        tmp = run_dir / (RESULTS_FILE + ".tmp")
        deadline = time.monotonic() + 180
        while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if not tmp.exists():
            proc.kill()
            pytest.skip("the merge finished before it could be interrupted (machine too fast)")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert (
            "interrupted while merging results.parquet" in err and f"every row is safe in {run_dir / PARTS_DIR}" in err
        )
        assert not tmp.exists()
        command = shlex.split(err.strip().splitlines()[-1])
        assert command[:2] == ["sentech-eval", "run"]
        finished = call_cli(*command[1:], key=key)
    assert finished.returncode == 0, finished.stderr
    final = rows(run_dir)
    assert len(final) == 1200 and (final["status"] == "ok").all()
    assert_one_row_per_key(final)


def test_ctrl_c_in_a_sweep_prints_a_command_that_resumes_the_same_sweep_dir(tmp_path):
    key = new_key()
    with running_server(engine="echo", api_key=key, latency_ms=30) as url:
        args = [
            "run",
            "-m",
            "backend=remote",
            f"backend.base_url={url}",
            "dataset=arithmetic",
            "runner.progress=false",
            "sampling.temperature=0,0.5",
            "runner.concurrency=4",
            "runner.flush_s=0.1",
            f"hydra.sweep.dir={tmp_path}/sweep_${{now:%H-%M-%S-%f}}",
        ]
        proc = subprocess.Popen(
            cli_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(key),
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f"sweep_*/0/{PARTS_DIR}/part-*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        sweep_dirs = list(tmp_path.glob("sweep_*"))
        assert len(sweep_dirs) == 1
        lines = [line.strip() for line in err.splitlines() if line.strip().startswith("sentech-eval run ")]
        command = shlex.split(lines[-1])
        assert f"hydra.sweep.dir={sweep_dirs[0]}" in command and "-m" in command, lines[-1]
        saved = len(rows(sweep_dirs[0] / "0"))
        resumed = call_cli(*command[1:], key=key)
    assert resumed.returncode == 0, resumed.stderr
    assert list(tmp_path.glob("sweep_*")) == sweep_dirs, "the resume started a new sweep dir"
    assert f"{saved} rows already done are skipped" in resumed.stderr
    for job in ("0", "1"):
        final = rows(sweep_dirs[0] / job)
        assert len(final) == 200 and (final["status"] == "ok").all()
        assert_one_row_per_key(final)
    sweep = json.loads((sweep_dirs[0] / "sweep.json").read_text())
    assert sweep.get("status") != "incomplete"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (("scorers=[numeric]", "scorers.numeric.tolerance=abc"), "Scorer 'numeric': bad options"),
        (("scorers=[regex]", "scorers.regex.pattern='(unclosed'"), "Scorer 'regex'"),
    ],
)
def test_bad_scorer_options(tmp_path, overrides, fragment):
    result = call_cli(
        "run",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        key=new_key(),
    )
    assert_one_sentence(result, fragment)
