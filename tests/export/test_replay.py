"""export/replay.py: what a tracker gets from a run or sweep dir — found, named, numbered, tagged, redacted."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from synthetic_results import make_results, write_run

from sentech_eval.analysis.summary import summarize
from sentech_eval.cli import main as cli_main
from sentech_eval.errors import ResultsError
from sentech_eval.export.replay import find_sources, replay, safe_strings, summary_metrics


def test_find_sources_sees_runs_and_sweeps_and_keeps_jobs_inside_their_sweep(results, tmp_path):
    assert find_sources(results["run"]) == [(results["run"], "run")]
    assert find_sources(results["sweep"]) == [(results["sweep"], "sweep")]
    assert find_sources(results["run"] / "results.parquet") == [(results["run"], "run")]
    assert find_sources(tmp_path / "results") == [(results["sweep"], "sweep"), (results["run"], "run")]


@pytest.mark.parametrize("make", ["missing", "empty", "other-file"])
def test_nothing_to_export_is_one_sentence_naming_the_path(tmp_path, make):
    path = tmp_path / "x"
    if make == "empty":
        path.mkdir()
    elif make == "other-file":
        path.write_text("hello")
    with pytest.raises(ResultsError, match=str(path)):
        find_sources(path)


def test_a_sweep_that_was_never_combined_says_how_to_combine_it(results):
    (results["sweep"] / "results.parquet").unlink()
    with pytest.raises(ResultsError, match="sentech-eval combine"):
        with replay(results["sweep"], "sweep"):
            pass


def test_metrics_are_the_summary_numbers_and_the_configuration_is_params(tmp_path):
    df = make_results(n=40, repeats=2, error_ids={3})
    write_run(df, tmp_path / "run")
    expected = summarize(df).to_dict("records")[0]
    with replay(tmp_path / "run", "run") as plan:
        (run,) = plan.runs
        assert plan.parent is None and run.kind == "run"
        assert run.name == "capitals remote sentech-small"
        assert run.params["backend"] == "remote" and run.params["temperature"] == "0"
        for name, value in expected.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and name not in run.params:
                assert run.metrics[name] == value, name
        assert "temperature" not in run.metrics and "config_id" not in run.metrics
        assert run.metrics["error_rate"] == pytest.approx(1 / 40)
        assert set(run.files) == {"summary.parquet", "report.html", "results.parquet"}
        assert "<h1>sentech-eval report</h1>" in run.files["report.html"].read_text()  # built, the dir had none
        assert len(run.table) == 80 and {"output", "score_contains"} <= set(run.table.columns)
        assert run.start_ms < run.end_ms


def test_cached_share_is_a_tag(tmp_path):
    df = make_results(n=40)
    df["cached"] = [i % 4 == 0 for i in range(40)]
    write_run(df, tmp_path / "run")
    with replay(tmp_path / "run", "run") as plan:
        assert plan.children[0].tags["cached_share"] == "0.250"


def test_a_gated_run_carries_the_check_verdict(tmp_path, capsys):
    write_run(make_results(n=40, accuracy=0.9), tmp_path / "baseline")
    write_run(make_results(n=40, accuracy=0.5), tmp_path / "worse")
    write_run(make_results(n=40, accuracy=0.9), tmp_path / "same")
    for candidate, code in (("worse", 1), ("same", 0)):
        args = ["--baseline", str(tmp_path / "baseline"), "--candidate", str(tmp_path / candidate)]
        assert cli_main(["check", *args, "--max-score-drop", "0.05"]) == code
    capsys.readouterr()
    verdict = json.loads((tmp_path / "worse" / "check.json").read_text())
    assert verdict["passed"] is False and verdict["thresholds"][0]["passed"] is False
    with replay(tmp_path / "worse", "run") as plan:
        assert plan.children[0].tags["check"] == "fail"
    with replay(tmp_path / "same", "run") as plan:
        assert plan.children[0].tags["check"] == "pass"
    with replay(tmp_path / "baseline", "run") as plan:
        assert "check" not in plan.children[0].tags


def test_rows_limit_sends_a_seeded_sample_but_every_row_counts(tmp_path):
    write_run(make_results(n=40), tmp_path / "run")
    with replay(tmp_path / "run", "run", rows_limit=5) as first, replay(tmp_path / "run", "run", rows_limit=5) as again:
        (run,) = first.runs
        assert len(run.table) == 5 and run.metrics["n"] == 40
        assert set(run.files) == {"summary.parquet", "report.html", "results.sample.parquet"}
        assert run.table["prompt_id"].tolist() == again.runs[0].table["prompt_id"].tolist()
        assert len(pd.read_parquet(run.files["results.sample.parquet"])) == 5


def test_the_identity_survives_a_resume_and_is_the_same_on_every_replay(tmp_path):
    df = make_results(n=10)
    later = make_results(n=10).assign(run_id="resumed-run", prompt_id=lambda d: d["prompt_id"] + "-more")
    later["started_at"] += pd.Timedelta(hours=1)
    write_run(df, tmp_path / "run")
    with replay(tmp_path / "run", "run") as plan:
        key = plan.children[0].key
    write_run(pd.concat([df, later], ignore_index=True), tmp_path / "run")
    with replay(tmp_path / "run", "run") as plan:
        assert plan.children[0].key == key and plan.children[0].params["run_id"] == "remote-run"


def test_safe_strings_blank_credentials_but_keep_our_hex_ids(monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", "k3y-value-123456")
    cleaned = safe_strings(
        {
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "api_key": "anything",
            "note": "uses k3y-value-123456 here",
            "token_shape": "sk-abcdefghijklmnopqrstuvwx",
            "temperature": 0.7,
            "empty": None,
        }
    )
    assert cleaned == {
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "api_key": "[redacted]",
        "note": "[redacted]",
        "token_shape": "[redacted]",
        "temperature": "0.7",
    }


def test_summary_metrics_leave_out_words_and_non_finite_numbers():
    row = {"config_id": "c", "temperature": 0.7, "n": 3, "x_ci_method": "midp", "y": float("nan"), "z": math.inf}
    assert summary_metrics(row) == {"n": 3.0}


def test_pass_at_k_is_exported_when_prompts_were_sampled_more_than_once(tmp_path):
    df = make_results(n=20, repeats=3, accuracy=0.6)
    write_run(df, tmp_path / "run")
    expected = summarize(df).to_dict("records")[0]
    assert "pass_at_1" in expected  # the summary reports pass@k for repeated prompts
    with replay(tmp_path / "run", "run") as plan:
        (run,) = plan.runs
        for name in ("pass_at_1", "pass_at_1_ci_low", "pass_at_1_ci_high"):
            assert run.metrics[name] == expected[name], name
        assert run.tags["pass_at_score"] == expected["pass_at_score"]


def test_a_load_run_sends_its_load_table_one_step_per_level(tmp_path, capsys):
    write_run(make_results(n=40), tmp_path / "run")
    assert cli_main(["report", str(tmp_path / "run"), "slo.latency_s=0.21"]) == 0
    capsys.readouterr()
    load = pd.read_parquet(tmp_path / "run" / "load.parquet")
    with replay(tmp_path / "run", "run") as plan:
        (run,) = plan.runs
        assert run.steps["load.goodput_rps"] == [float(v) for v in load["goodput_rps"]]
        assert "load.parquet" in run.files


def test_a_priced_run_sends_its_cost_figures(tmp_path):
    df = make_results(n=40, accuracy=0.75)
    df["cost_usd"] = 0.002
    write_run(df, tmp_path / "run")
    expected = summarize(df).to_dict("records")[0]
    with replay(tmp_path / "run", "run") as plan:
        (run,) = plan.runs
        for name in (
            "cost_usd",
            "cost_per_1k_requests",
            "cost_per_correct_contains",
            "cost_per_correct_contains_ci_high",
        ):
            assert run.metrics[name] == expected[name], name
