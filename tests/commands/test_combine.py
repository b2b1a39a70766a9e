"""`sentech-eval combine`: only a sweep dir is combined; a table with rows is never replaced by an empty one."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic_results import make_results, write_run  # noqa: E402

from sentech_eval.cli import main  # noqa: E402


def _one_sentence(capsys, code: int, *fragments: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("marker", [".hydra", "job_status.json"])
def test_a_plain_run_dir_is_refused_and_left_as_it_was(tmp_path, capsys, marker):
    run = write_run(make_results(n=12), tmp_path / "run")
    (run / marker).mkdir() if marker == ".hydra" else (run / marker).write_text("{}")
    before = (run / "results.parquet").read_bytes()
    _one_sentence(capsys, main(["combine", str(run)]), "is a run dir, not a sweep dir", "nothing was changed")
    assert (run / "results.parquet").read_bytes() == before
    assert not (run / "trials.parquet").exists() and not (run / "sweep.json").exists()


def test_a_dir_without_jobs_never_replaces_rows_with_an_empty_table(tmp_path, capsys):
    run = write_run(make_results(n=12), tmp_path / "loose")  # a results file, no job dirs, no .hydra/
    _one_sentence(capsys, main(["combine", str(run)]), "holds 12 rows", "kept as it is")
    assert len(pd.read_parquet(run / "results.parquet")) == 12


def test_an_empty_sweep_dir_still_combines_to_an_empty_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert main(["combine", str(sweep)]) == 0
    assert len(pd.read_parquet(sweep / "results.parquet")) == 0


def test_jobs_whose_extra_column_disagrees_in_type_are_combined_as_text(tmp_path, capsys):
    """One job's dataset column is a number, the other's text: the combined table holds both, as text."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    one, two = make_results(n=5), make_results(n=5, backend="local", seed=1)
    one["extra"], two["extra"] = 7, "seven"
    for name, df in (("0", one), ("1", two)):
        write_run(df, sweep / name)
        (sweep / name / ".hydra").mkdir()
    assert main(["combine", str(sweep)]) == 0, capsys.readouterr().err
    combined = pd.read_parquet(sweep / "results.parquet")
    assert len(combined) == 10 and sorted(set(combined["extra"])) == ["7", "seven"]
