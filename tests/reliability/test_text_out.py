"""Server and dataset text is data in every output format: JUnit XML, markdown, the terminal, plots.

Model names and error messages here are what a hostile server (or dataset) can put in results.parquet;
every command that prints or writes them must keep its own structure: XML that parses, markdown whose
headings and table rows are ours, a terminal that receives no control sequence, plots whose labels are text.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synthetic_results import make_results, write_run  # noqa: E402

from sentech_eval.cli import main  # noqa: E402

HOSTILE_MODELS = [
    "m\x00\x1b[31mred\x1b[0m",
    "m\n## ✅ PASSED injected",
    "m | fake | row\n| x | y |",
    "m\x1b]0;title\x07\x1b[2J",
    "<img src=x onerror=alert(1)>",
]


def _runs(tmp_path: Path, model_a: str, model_b: str) -> tuple[Path, Path]:
    a = write_run(make_results(n=30, accuracy=0.9, model=model_a), tmp_path / "a")
    b = write_run(make_results(n=30, accuracy=0.5, model=model_b, backend="local"), tmp_path / "b")
    return a, b


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_check_writes_valid_junit_and_markdown_whose_structure_is_ours(tmp_path, model, capsys):
    a, b = _runs(tmp_path, model, model + " 2")
    junit, summary = tmp_path / "check.xml", tmp_path / "summary.md"
    code = main(
        ["check", "--baseline", str(a), "--candidate", str(b), "--max-score-drop", "contains=0.01"]
        + ["--junit", str(junit), "--summary", str(summary)]
    )
    out, err = capsys.readouterr()
    assert code == 1, err  # a real regression: the verdict is the gate's, not the model name's
    ET.parse(junit)  # parses: nothing XML cannot hold
    text = summary.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["## sentech-eval check: ❌ FAILED"], headings
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1, table  # every row has our columns
    assert "<img" not in text
    for stream in (out, err, text):
        assert "\x1b" not in stream and "\x07" not in stream and "\x00" not in stream


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_report_and_compare_print_no_control_sequence_and_no_injected_heading(tmp_path, model, capsys):
    a, b = _runs(tmp_path, model, "other")
    assert main(["report", str(a), "--out", str(tmp_path / "rep")]) == 0
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert [line for line in out.splitlines() if line.startswith("#") and not line.startswith("## sentech-eval ")] == []


@pytest.mark.parametrize("name", ["cost $5", "$x^$", "a $\\frac{1}{0}$ b", "$$", "price$"])
def test_a_dollar_in_a_model_or_dataset_name_is_text_in_plots(tmp_path, name, capsys):
    """matplotlib would parse '$…$' as maths (ParseSyntaxException); labels are text."""
    df = make_results(n=20, model=name)
    df["dataset"] = f"data {name}"
    run = write_run(df, tmp_path / "run")
    other = make_results(n=20, model=name + " v2", temperature=0.7, seed=1)
    other["config_id"] = "other-cfg"
    sweep = write_run(__import__("pandas").concat([df, other]), tmp_path / "sweep")
    for path in (run, sweep):
        assert main(["report", str(path), "--out", str(tmp_path / f"rep-{path.name}")]) == 0
        assert (tmp_path / f"rep-{path.name}" / "report.html").is_file()
    out, err = capsys.readouterr()
    assert "Traceback" not in err


def test_the_end_of_a_run_shows_a_servers_control_characters_escaped(tmp_path):
    from sentech_eval.commands.run_summary import error_lines, read_outcome

    df = make_results(n=5, error_ids={0, 1})
    df.loc[df["status"] == "error", "error"] = "HTTP 503: \x1b]0;pwned\x07\x1b[2Jgone"
    run = write_run(df, tmp_path / "run")
    lines = error_lines(read_outcome(run / "results.parquet"))
    assert lines and all("\x1b" not in line and "\x07" not in line for line in lines)
    assert "\\x1b]0;pwned\\x07" in lines[0]


def test_the_end_of_a_run_shows_control_characters_from_its_config_escaped(tmp_path, echo_server):
    """The result lines of `run` carry the run dir and config names: shown escaped, never obeyed."""
    from cli_helpers import TEST_KEY, call_cli

    run_dir = tmp_path / "dir\x1b[31mred\x07"
    proc = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=2",
        "runner.progress=false",
        f"hydra.run.dir='{run_dir}'",
        "scorers=[contains]",
        key=TEST_KEY,
    )
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "results.parquet").is_file()
    assert "dir\\x1b[31mred\\x07" in proc.stderr  # the path is printed, escaped
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
