"""One sentence, never a traceback, and nothing lost, at odd but ordinary places (issue 24, section 4).

An existing file given as --out, users' columns named like the comparison's internal ones, a run dir
holding a corrupt or a foreign results.parquet, a resumed run whose dataset column changed type, and
report over runs whose extra columns disagree. The files involved are left exactly as they were.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from reliability_support import assert_one_sentence, call_cli, new_key, remote_run_args, rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic_results import make_results, write_run  # noqa: E402

from sentech_eval.cli import main  # noqa: E402
from sentech_eval.server.testing import running_server  # noqa: E402


def _in_process(capsys, argv: list[str]) -> subprocess.CompletedProcess:
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    return (
        write_run(make_results(n=12), tmp_path / "a"),
        write_run(make_results(n=12, backend="local", seed=1, accuracy=0.5), tmp_path / "b"),
    )


@pytest.mark.parametrize("command", ["report", "compare", "check"])
def test_an_existing_file_as_out_is_one_sentence(tmp_path, two_runs, capsys, command):
    a, b = two_runs
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    argv = {
        "report": ["report", str(a), "--out", str(taken)],
        "compare": ["compare", str(a), str(b), "--out", str(taken)],
        "check": ["check", "--baseline", str(a), "--candidate", str(b), "--max-error-rate", "0", "--out", str(taken)],
    }[command]
    assert_one_sentence(_in_process(capsys, argv), f"--out={taken} is an existing file, not a directory")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("column", ["_merge", "output_a", "latency_s_b", "__side", "prompt_a"])
@pytest.mark.parametrize("side", ["a", "b", "both"])
def test_compare_never_collides_with_a_users_column(tmp_path, capsys, column, side):
    a, b = make_results(n=12), make_results(n=12, backend="local", seed=1)
    for name, df in (("a", a), ("b", b)):
        if side in (name, "both"):
            df[column] = f"user {name}"
    result = _in_process(
        capsys,
        ["compare", str(write_run(a, tmp_path / "a")), str(write_run(b, tmp_path / "b")), "--out", str(tmp_path / "o")],
    )
    assert result.returncode == 0, result.stderr
    metrics = pd.read_parquet(tmp_path / "o" / "compare.parquet").set_index("metric")
    assert metrics.loc["pairs", "n_pairs"] == 12


def _corrupt(run: Path) -> bytes:
    (run / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    return (run / "results.parquet").read_bytes()


def _foreign(run: Path) -> bytes:
    pd.DataFrame({"x": [1, 2]}).to_parquet(run / "results.parquet")
    return (run / "results.parquet").read_bytes()


@pytest.mark.parametrize("spoil, fragment", [(_corrupt, "is not a readable Parquet file"), (_foreign, "")])
def test_a_corrupt_or_foreign_results_file_is_named_and_kept(tmp_path, two_runs, capsys, spoil, fragment):
    a, b = two_runs
    before = spoil(a)
    for argv in (
        ["report", str(a), "--out", str(tmp_path / "r")],
        ["compare", str(a), str(b), "--out", str(tmp_path / "c")],
        ["check", "--baseline", str(a), "--candidate", str(b), "--max-error-rate", "0"],
        ["score", str(a), "scorers=[contains]"],
    ):
        line = assert_one_sentence(_in_process(capsys, argv), str(a / "results.parquet") if fragment else "", fragment)
        assert "Traceback" not in line
    assert (a / "results.parquet").read_bytes() == before


@pytest.mark.parametrize(
    "spoil, fragment", [(_corrupt, "is not a readable Parquet file"), (_foreign, "was not written by sentech-eval")]
)
def test_a_run_into_a_dir_with_a_corrupt_or_foreign_results_file_sends_nothing_and_keeps_it(tmp_path, spoil, fragment):
    run = tmp_path / "run"
    run.mkdir()
    before = spoil(run)
    key = new_key()
    with running_server(engine="echo", api_key=key) as url:
        result = call_cli(*remote_run_args(url, run, "dataset.limit=3"), key=key)
    assert_one_sentence(result, fragment, "left untouched")
    assert (run / "results.parquet").read_bytes() == before
    assert not (run / "results.parts").exists()


def _dataset(path: Path, extra: list) -> str:
    n = len(extra)
    pd.DataFrame({"id": [f"q{i}" for i in range(n)], "prompt": [f"p{i}" for i in range(n)], "extra": extra}).to_parquet(
        path
    )
    return str(path)


def test_a_resume_whose_dataset_column_changed_type_is_one_sentence_before_sending(tmp_path):
    run, key = tmp_path / "run", new_key()
    words = _dataset(tmp_path / "words.parquet", ["a", "b", "c", "d"])
    numbers = _dataset(tmp_path / "numbers.parquet", [1, 2, 3, 4])
    with running_server(engine="echo", api_key=key) as url:
        first = call_cli(
            *remote_run_args(url, run, f"dataset.path={words}", "dataset.name=d", "dataset.limit=2"), key=key
        )
        assert first.returncode == 0, first.stderr
        before = (run / "results.parquet").read_bytes()
        for _ in range(2):  # every resume says the same, and sends nothing
            again = call_cli(*remote_run_args(url, run, f"dataset.path={numbers}", "dataset.name=d"), key=key)
            assert_one_sentence(again, "Column 'extra'", "string", "int64", "choose another hydra.run.dir")
            assert (run / "results.parquet").read_bytes() == before


def test_a_resume_whose_column_can_widen_keeps_every_row(tmp_path):
    run, key = tmp_path / "run", new_key()
    numbers = _dataset(tmp_path / "numbers.parquet", [1, 2, 3, 4])
    words = _dataset(tmp_path / "words.parquet", ["a", "b", "c", "d"])
    with running_server(engine="echo", api_key=key) as url:
        assert (
            call_cli(
                *remote_run_args(url, run, f"dataset.path={numbers}", "dataset.name=d", "dataset.limit=2"), key=key
            ).returncode
            == 0
        )
        resumed = call_cli(*remote_run_args(url, run, f"dataset.path={words}", "dataset.name=d"), key=key)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(rows(run)["extra"].astype(str)) == ["1", "2", "c", "d"]


def test_a_resume_with_other_scorers_keeps_the_earlier_score_columns(tmp_path):
    """Section 5: the earlier rows' scores stay; the new rows have the new scorer's (and null for the old)."""
    run, key = tmp_path / "run", new_key()
    with running_server(engine="echo", api_key=key) as url:
        first = call_cli(*remote_run_args(url, run, "dataset.limit=3", "scorers=[exact_match]"), key=key)
        assert first.returncode == 0, first.stderr
        second = call_cli(*remote_run_args(url, run, "dataset.limit=6", "scorers=[contains]"), key=key)
    assert second.returncode == 0, second.stderr
    df = rows(run)
    assert len(df) == 6
    assert df["score_exact_match"].notna().sum() == 3 and df["score_contains"].notna().sum() == 3


def test_report_over_runs_whose_extra_columns_disagree_reports_both(tmp_path, capsys):
    one, two = make_results(n=10), make_results(n=10, backend="local", seed=1)
    one["extra"], two["extra"] = 7, "seven"
    write_run(one, tmp_path / "runs" / "one")
    write_run(two, tmp_path / "runs" / "two")
    result = _in_process(capsys, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert result.returncode == 0, result.stderr
    summary = pd.read_parquet(tmp_path / "rep" / "summary.parquet")
    assert summary["n"].sum() == 20


def test_report_over_runs_whose_core_column_disagrees_names_it(tmp_path, capsys):
    one, two = make_results(n=10), make_results(n=10, backend="local", seed=1)
    two["http_status"] = two["http_status"].astype(str)
    write_run(one, tmp_path / "runs" / "one")
    write_run(two, tmp_path / "runs" / "two")
    assert_one_sentence(
        _in_process(capsys, ["report", str(tmp_path / "runs")]), "Column 'http_status'", "one at a time"
    )
