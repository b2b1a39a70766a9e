"""The regression gate: exit codes, thresholds (CLI and YAML), significance rule, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from synthetic_results import make_results, write_run

from sentech_eval.cli import main as cli


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return write_run(make_results(accuracy=0.9), tmp_path / "baseline")


def run_check(baseline: Path, candidate: Path, *extra: str) -> int:
    return cli(["check", "--baseline", str(baseline), "--candidate", str(candidate), *extra])


def test_identical_results_pass(baseline: Path, tmp_path: Path, capsys) -> None:
    same = write_run(make_results(accuracy=0.9), tmp_path / "same")
    code = run_check(
        baseline,
        same,
        "--max-score-drop",
        "exact_match=0.02",
        "--max-score-drop",
        "contains=0",
        "--max-latency-increase",
        "0.10",
        "--max-error-rate",
        "0.01",
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "PASSED" in out and "5 of 5 thresholds hold" in out


def test_exact_match_drop_of_0_2_fails(baseline: Path, tmp_path: Path, capsys) -> None:
    cand = write_run(make_results(accuracy=0.7, backend="local"), tmp_path / "cand")
    code = run_check(baseline, cand, "--max-score-drop", "exact_match=0.02")
    out = capsys.readouterr().out
    assert code == 1
    assert "| score_drop[exact_match] | drop ≤ 0.02 | 0.9 | 0.7 | -0.2000 | **FAIL** |" in out


def test_drop_within_threshold_passes(baseline: Path, tmp_path: Path) -> None:
    cand = write_run(make_results(accuracy=0.875), tmp_path / "cand")  # one more wrong answer of 40
    assert run_check(baseline, cand, "--max-score-drop", "exact_match=0.05") == 0
    assert run_check(baseline, cand, "--max-score-drop", "exact_match=0.02") == 1


def test_doubled_p50_latency_fails(baseline: Path, tmp_path: Path, capsys) -> None:
    slow = write_run(make_results(accuracy=0.9, latency_s=0.40), tmp_path / "slow")
    code = run_check(baseline, slow, "--max-latency-increase", "0.10", "--max-score-drop", "0.02")
    out = capsys.readouterr().out
    assert code == 1
    assert "latency_p50_increase" in out and "latency_p95_increase" in out
    assert "score_drop[exact_match] | drop ≤ 0.02 | 0.9 | 0.9 | +0.0000 | pass" in out


def test_latency_within_lenient_threshold_passes(baseline: Path, tmp_path: Path) -> None:
    slow = write_run(make_results(accuracy=0.9, latency_s=0.40), tmp_path / "slow")
    assert run_check(baseline, slow, "--max-latency-increase", "1.5") == 0


def test_error_rate_threshold(baseline: Path, tmp_path: Path, capsys) -> None:
    flaky = write_run(make_results(accuracy=0.9, error_ids={38, 39}), tmp_path / "flaky")
    assert run_check(baseline, flaky, "--max-error-rate", "0.01") == 1
    assert "5.00% of 40 candidate rows failed" in capsys.readouterr().out
    assert run_check(baseline, flaky, "--max-error-rate", "0.05") == 0


def test_candidate_with_only_errors_is_a_regression_not_bad_input(baseline: Path, tmp_path: Path) -> None:
    dead = write_run(make_results(error_ids=set(range(40))), tmp_path / "dead")
    assert run_check(baseline, dead, "--max-score-drop", "exact_match=0.02") == 1


def test_missing_file_exits_2_with_one_sentence(baseline: Path, tmp_path: Path, capsys) -> None:
    code = run_check(baseline, tmp_path / "nope" / "results.parquet", "--max-score-drop", "0.02")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "candidate" in err and "do not exist" in err


def test_no_paired_rows_exits_2(baseline: Path, tmp_path: Path, capsys) -> None:
    other = write_run(make_results(prompt_ids=[f"arith-{i}" for i in range(40)]), tmp_path / "other")
    assert run_check(baseline, other, "--max-score-drop", "0.02") == 2
    assert "No rows of baseline" in capsys.readouterr().err


def test_unknown_score_exits_2(baseline: Path, tmp_path: Path, capsys) -> None:
    same = write_run(make_results(accuracy=0.9), tmp_path / "same")
    assert run_check(baseline, same, "--max-score-drop", "bleu=0.02") == 2
    err = capsys.readouterr().err
    assert "Unknown score 'bleu'" in err and "exact_match, contains" in err


def test_no_threshold_exits_2(baseline: Path, capsys) -> None:
    assert run_check(baseline, baseline) == 2
    assert "No thresholds given" in capsys.readouterr().err


def test_require_significance_ignores_a_drop_whose_ci_includes_zero(baseline: Path, tmp_path: Path, capsys) -> None:
    # Baseline misses prompts 0-3; the candidate misses 0-4: a drop of 0.025 from a single discordant pair.
    cand = write_run(make_results(wrong_ids={0, 1, 2, 3, 4}), tmp_path / "cand")
    assert run_check(baseline, cand, "--max-score-drop", "exact_match=0.02") == 1
    capsys.readouterr()
    assert run_check(baseline, cand, "--max-score-drop", "exact_match=0.02", "--require-significance") == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "includes 0: not significant" in out
    # A large drop is significant and still fails with the flag.
    bad = write_run(make_results(accuracy=0.5), tmp_path / "bad")
    assert run_check(baseline, bad, "--max-score-drop", "exact_match=0.02", "--require-significance") == 1


def test_thresholds_file_and_command_line_override(baseline: Path, tmp_path: Path) -> None:
    slow = write_run(make_results(accuracy=0.9, latency_s=0.40), tmp_path / "slow")
    file = tmp_path / "thresholds.yaml"
    file.write_text(
        "max_score_drop:\n  exact_match: 0.02\n  contains: 0.02\nmax_latency_increase: 0.10\n"
        "max_error_rate: 0.01\nrequire_significance: true\n"
    )
    assert run_check(baseline, slow, "--thresholds", str(file)) == 1
    assert run_check(baseline, slow, "--thresholds", str(file), "--max-latency-increase", "2.0") == 0


def test_thresholds_file_with_unknown_key_exits_2(baseline: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "thresholds.yaml"
    file.write_text("max_score_dorp: 0.02\n")
    assert run_check(baseline, baseline, "--thresholds", str(file)) == 2
    assert "unknown key(s) max_score_dorp" in capsys.readouterr().err


def test_junit_has_one_testcase_per_threshold_and_failures_where_expected(baseline: Path, tmp_path: Path) -> None:
    cand = write_run(make_results(accuracy=0.7, latency_s=0.20), tmp_path / "cand")
    junit = tmp_path / "reports" / "check.xml"
    code = run_check(
        baseline,
        cand,
        "--max-score-drop",
        "exact_match=0.02",
        "--max-score-drop",
        "contains=0.5",
        "--max-latency-increase",
        "0.5",
        "--max-error-rate",
        "0.01",
        "--junit",
        str(junit),
    )
    assert code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {
        "score_drop[exact_match]",
        "score_drop[contains]",
        "latency_p50_increase",
        "latency_p95_increase",
        "error_rate",
    }
    failed = {name for name, c in cases.items() if c.find("failure") is not None}
    assert failed == {"score_drop[exact_match]"}
    assert suite.get("tests") == "5" and suite.get("failures") == "1"


def test_summary_file_is_appended(baseline: Path, tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("# earlier step\n")
    assert run_check(baseline, baseline, "--max-score-drop", "0.0", "--summary", str(summary)) == 0
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "sentech-eval check: ✅ PASSED" in text


def test_latency_slack_absorbs_small_absolute_increases(tmp_path: Path) -> None:
    fast = write_run(make_results(latency_s=0.002), tmp_path / "fast")
    noisy = write_run(make_results(latency_s=0.008), tmp_path / "noisy")  # x4, but only +6 ms
    assert run_check(fast, noisy, "--max-latency-increase", "1.0") == 1
    assert run_check(fast, noisy, "--max-latency-increase", "1.0", "--latency-slack-ms", "20") == 0
    slow = write_run(make_results(latency_s=0.2), tmp_path / "slow")
    assert run_check(fast, slow, "--max-latency-increase", "1.0", "--latency-slack-ms", "20") == 1


def test_require_significance_counts_prompts_not_sweep_points(tmp_path: Path, capsys) -> None:
    # Two sweeps over the same two temperatures: B loses prompts 10-13 at both. Counted as eight
    # independent pairs, the drop would look significant (row-level McNemar p = 0.008); it is four
    # prompts of evidence (p = 0.125), and the clustered CI includes 0.
    def sweep(wrong: set[int], backend: str) -> pd.DataFrame:
        return pd.concat(
            [make_results(temperature=t, wrong_ids=wrong, backend=backend, seed=i) for i, t in enumerate((0.0, 0.7))],
            ignore_index=True,
        )

    base = write_run(sweep({0, 1, 2, 3}, "remote"), tmp_path / "base")
    cand = write_run(sweep({0, 1, 2, 3, 10, 11, 12, 13}, "local"), tmp_path / "cand")
    code = run_check(base, cand, "--max-score-drop", "exact_match=0", "--require-significance")
    out = capsys.readouterr().out
    assert code == 0 and "not significant" in out
    assert "newcombe_clustered over 40 prompts; mcnemar_clustered p = 0.125" in out
