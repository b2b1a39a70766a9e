"""Every bad input of issue 7 gives its one sentence: exit 2, no traceback, before any request.

Each case is the real `sentech-eval run` command, called in-process (``call_cli``: exit code, stdout and
stderr as a process gives them), all of them once in a module fixture.
``backend.base_url`` points at a listening socket that nobody answers: the test checks that no
connection was ever made to it, i.e. the sentence came before any request.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import call_cli

KEY = "sk-bad-input-3b8e71c0"


def _write_datasets(d: Path) -> dict[str, Path]:
    """One broken dataset per case."""
    files: dict[str, Path] = {}

    def frame(name: str, df: pd.DataFrame) -> None:
        files[name] = d / f"{name}.parquet"
        df.to_parquet(files[name])

    def table(name: str, t: pa.Table) -> None:
        files[name] = d / f"{name}.parquet"
        pq.write_table(t, files[name])

    frame("missing_id", pd.DataFrame({"prompt": ["a", "b"]}))
    frame("missing_prompt", pd.DataFrame({"id": ["a", "b"], "question": ["x", "y"]}))
    frame("float_ids", pd.DataFrame({"id": [1.5, 2.5], "prompt": ["a", "b"]}))
    frame("int_prompt", pd.DataFrame({"id": ["a", "b"], "prompt": [1, 2]}))
    frame("messages_not_list", pd.DataFrame({"id": ["a"], "messages": ["hello"]}))
    frame("duplicate_ids", pd.DataFrame({"id": ["a", "b", "a"], "prompt": ["x", "y", "z"]}))
    frame("null_id", pd.DataFrame({"id": ["a", None], "prompt": ["x", "y"]}))
    frame("no_rows", pd.DataFrame({"id": pd.Series([], dtype=str), "prompt": pd.Series([], dtype=str)}))
    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table(
        "bad_role",
        pa.table(
            {
                "id": ["a", "b"],
                "messages": pa.array(
                    [
                        [{"role": "user", "content": "hi"}],
                        [{"role": "system", "content": "s"}, {"role": "robot", "content": "x"}],
                    ],
                    msgs,
                ),
            }
        ),
    )
    table(
        "empty_content",
        pa.table(
            {
                "id": ["a", "b"],
                "messages": pa.array([[{"role": "user", "content": "  "}], [{"role": "user", "content": "ok"}]], msgs),
            }
        ),
    )
    frame("empty_prompt", pd.DataFrame({"id": [1, 2], "prompt": ["fine", ""]}))
    files["zero_bytes"] = d / "zero_bytes.parquet"
    files["zero_bytes"].write_bytes(b"")
    files["csv_without_prompt"] = d / "data.csv"
    files["csv_without_prompt"].write_text("id,question\n1,hello\n")
    files["text_file"] = d / "data.txt"
    files["text_file"].write_text("id,prompt\n1,hello\n")
    files["missing_file"] = d / "nope.parquet"
    return files


# case -> (overrides, fragments every one of which must be in the one error line); {D} = dataset paths
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # datasets: the sentence names file, column and row
    "missing_id": (("dataset.path={missing_id}",), ("missing_id.parquet", "column 'id'", "missing")),
    "missing_prompt": (
        ("dataset.path={missing_prompt}",),
        ("missing_prompt.parquet", "column 'messages'", "no 'prompt' column"),
    ),
    "float_ids": (("dataset.path={float_ids}",), ("float_ids.parquet", "column 'id'", "has type double")),
    "int_prompt": (("dataset.path={int_prompt}",), ("int_prompt.parquet", "column 'prompt'", "has type int64")),
    "messages_not_list": (
        ("dataset.path={messages_not_list}",),
        ("column 'messages'", "list of {role: string, content: string}"),
    ),
    "duplicate_ids": (
        ("dataset.path={duplicate_ids}",),
        ("duplicate_ids.parquet", "column 'id', row 2", "duplicate id 'a'"),
    ),
    "null_id": (("dataset.path={null_id}",), ("null_id.parquet", "column 'id', row 1", "is null")),
    "no_rows": (("dataset.path={no_rows}",), ("no_rows.parquet", "has no rows")),
    "zero_bytes": (("dataset.path={zero_bytes}",), ("zero_bytes.parquet", "is not a readable Parquet file")),
    "csv_without_prompt": (
        ("dataset.path={csv_without_prompt}",),
        ("data.csv", "column 'messages'", "dataset.columns.prompt=NAME"),
    ),
    "text_file": (("dataset.path={text_file}",), ("data.txt", "is not a readable Parquet file", ".jsonl or .csv")),
    "missing_file": (("dataset.path={missing_file}",), ("nope.parquet", "does not exist")),
    "bad_role": (
        ("dataset.path={bad_role}",),
        ("bad_role.parquet", "column 'messages', row 1", "role 'robot'", "system, user or assistant"),
    ),
    "empty_content": (
        ("dataset.path={empty_content}",),
        ("empty_content.parquet", "column 'messages', row 0", "empty content"),
    ),
    "empty_prompt": (("dataset.path={empty_prompt}",), ("empty_prompt.parquet", "column 'prompt', row 1", "is empty")),
    # config: one sentence naming the key and what is allowed
    "unknown_runner_key": (("+runner.foo=1",), ("Unknown config key 'runner.foo'", "known keys are")),
    "unknown_sampling_key": (("+sampling.foo=1",), ("Unknown config key 'sampling.foo'",)),
    "unknown_backend_key": (("+backend.foo=1",), ("Unknown config key 'backend.foo'", "backend=remote")),
    "unknown_top_key": (("+foo=1",), ("Unknown config key 'foo'",)),
    "temperature_range": (("sampling.temperature=3",), ("sampling.temperature=3 is out of range", "between 0 and 2")),
    "top_p_range": (("sampling.top_p=0",), ("sampling.top_p=0 is out of range", "greater than 0")),
    "max_tokens_range": (("sampling.max_tokens=0",), ("sampling.max_tokens=0 is out of range", "at least 1")),
    "temperature_type": (("sampling.temperature=hot",), ("sampling.temperature", "must be a number")),
    "concurrency_zero": (("runner.concurrency=0",), ("runner.concurrency=0 must be at least 1",)),
    "concurrency_negative": (("runner.concurrency=-4",), ("runner.concurrency=-4 must be at least 1",)),
    "unknown_backend_group": (("backend=nope",), ("Unknown backend 'nope'", "remote")),
    "unknown_backend_kind": (("backend.kind=nope",), ("Unknown backend kind 'nope'",)),
    "unknown_scorer": (("scorers=[nope]",), ("Unknown scorer 'nope'", "exact_match")),
    "bad_base_url": (
        ("backend.base_url=ftp://example.com/v1",),
        ("backend.base_url", "must start with http:// or https://"),
    ),
    "missing_key": (("runner.max_retries=0",), ("SENTECH_API_KEY is not set",)),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case; returns case -> (CompletedProcess, run_dir)."""
    root = tmp_path_factory.mktemp("bad_input")
    files = _write_datasets(root)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"

    def run(case: str):
        overrides, _ = CASES[case]
        run_dir = root / "runs" / case
        args = [
            "run",
            "backend=remote",
            f"backend.base_url={base_url}",
            "dataset.limit=null",
            "runner.progress=false",
            f"hydra.run.dir={run_dir}",
            *(o.format(**{k: str(v) for k, v in files.items()}) for o in overrides),
        ]
        result = call_cli(*args, key=None if case == "missing_key" else KEY)
        return case, (result, run_dir)

    results = dict(map(run, CASES))
    try:
        connection, _ = listener.accept()
        connection.close()
        results["__connected__"] = True
    except BlockingIOError:
        results["__connected__"] = False
    finally:
        listener.close()
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_sentence(outcomes, case):
    result, run_dir = outcomes[case]
    _, fragments = CASES[case]
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("sentech-eval run: error: ")
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert line.rstrip().endswith("."), line
    if case.startswith("unknown_") and case != "unknown_top_key":
        assert "write +" not in line, line  # a schema's keys are fixed: `+` adds nothing there
    assert not (run_dir / "results.parquet").exists()  # no rows, not even error rows
    assert KEY not in result.stderr + result.stdout


def test_no_request_was_sent_for_any_bad_input(outcomes):
    assert outcomes["__connected__"] is False
