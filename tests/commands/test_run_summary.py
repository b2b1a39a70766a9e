"""The end of `sentech-eval run`: the result (scores with CI, latency, tokens, errors, report) and an
exit code that tells a run whose requests failed from one that worked."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
from cli_helpers import TEST_KEY, call_cli

from sentech_eval.server.testing import running_server


def test_a_scored_run_ends_with_score_ci_latency_tokens_and_report(echo_server, tmp_path):
    run_dir = tmp_path / "scored"
    proc = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=12",
        "scorers=[contains]",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(run_dir / "results.parquet").to_pydict()
    mean = sum(table["score_contains"]) / len(table["score_contains"])
    line = re.search(r"score_contains\s+([\d.]+)\s+95% CI \[([\d.]+), ([\d.]+)\]\s+\(n=(\d+)\)", proc.stderr)
    assert line, proc.stderr
    assert float(line[1]) == round(mean, 3) and int(line[4]) == 12
    assert float(line[2]) <= float(line[1]) <= float(line[3])
    assert re.search(r"latency p50 [\d.]+ m?s, p95 [\d.]+ m?s; tokens \d+ prompt \+ \d+ completion", proc.stderr)
    report = re.search(r"report: (\S+report\.html)", proc.stderr)
    assert report and (run_dir / "report.html").is_file(), proc.stderr


def test_every_request_failing_lists_the_errors_and_exits_1(echo_server, tmp_path):
    """base_url without /v1: every request is a 404. The run says why and does not exit 0."""
    base = echo_server.removesuffix("/v1")
    run_dir = tmp_path / "no-v1"
    proc = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={base}",
        "dataset=capitals",
        "dataset.limit=3",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"errors: HTTP 404 × 3: ", proc.stderr), proc.stderr
    assert "every request failed (3 of 3 rows are errors" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert pq.read_table(run_dir / "results.parquet").num_rows == 3  # nothing lost


def test_max_error_rate_fails_a_partly_failed_run(tmp_path):
    with running_server(engine="echo", api_key=TEST_KEY, error_rate=0.5, error_status=500, seed=3) as url:
        common = [
            "run",
            "backend=remote",
            f"backend.base_url={url}",
            "dataset=capitals",
            "dataset.limit=20",
            "runner.max_retries=0",
            "runner.progress=false",
        ]
        lenient = call_cli(*common, f"hydra.run.dir={tmp_path / 'a'}", env={"SENTECH_API_KEY": TEST_KEY})
        strict = call_cli(
            *common, "runner.max_error_rate=0.1", f"hydra.run.dir={tmp_path / 'b'}", env={"SENTECH_API_KEY": TEST_KEY}
        )
    assert lenient.returncode == 0, lenient.stderr  # some rows ok, no limit set
    assert "errors: HTTP 500 ×" in lenient.stderr
    assert strict.returncode == 1, strict.stderr
    assert "above runner.max_error_rate=0.1" in strict.stderr


def test_max_error_rate_out_of_range_is_a_config_error(tmp_path):
    proc = call_cli("run", "runner.max_error_rate=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "runner.max_error_rate=2 must be between 0 and 1" in proc.stderr


def test_a_repeated_run_ends_with_pass_at_k_and_says_why_a_k_is_missing(echo_server, tmp_path):
    run_dir = tmp_path / "repeated"
    proc = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=6",
        "runner.repeats=3",
        "scorers=[exact_match]",
        "report.pass_at=[1,3,5]",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    line = re.search(
        r"pass@1 ([\d.]+) \[([\d.]+), ([\d.]+)\] · pass@3 ([\d.]+) \[[\d.]+, [\d.]+\] · pass@5 -", proc.stderr
    )
    assert line, proc.stderr
    assert float(line[2]) <= float(line[1]) <= float(line[3]) and float(line[4]) >= float(line[1])
    assert "pass@5 is not reported: 6 of 6 prompts have fewer than 5 scored samples" in proc.stderr
    assert (run_dir / "pass_at_k.parquet").is_file()
