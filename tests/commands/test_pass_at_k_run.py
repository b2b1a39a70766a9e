"""pass@k end to end: a temperature sweep on HumanEval against the oracle server, whose code answers are
right with a known probability, then `report`: every pass@k interval covers the known truth."""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli

from sentech_eval import sandbox
from sentech_eval.server.engines import oracle_accuracy, oracle_pass_at_k
from sentech_eval.server.testing import running_server

pytestmark = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap (bwrap) is not installed")

PEAK = 0.5
TEMPERATURES = (0.1, 1.0)


def test_pass_at_k_of_a_known_probability_server_covers_the_truth(tmp_path):
    sweep_dir = tmp_path / "sweep"
    with running_server("oracle", api_key=TEST_KEY, accuracy_peak=PEAK) as base_url:
        done = call_cli(
            "run",
            "-m",
            "backend=remote",
            f"backend.base_url={base_url}",
            "backend.send_seed=true",  # repeats differ only through their seeds
            "dataset=humaneval",
            "dataset.limit=20",
            "runner.repeats=10",
            f"sampling.temperature={','.join(str(t) for t in TEMPERATURES)}",
            "scorers=[code_exec]",
            "report.pass_at=[1,5,10,20]",
            f"hydra.sweep.dir={sweep_dir}",
            key=TEST_KEY,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    report = call_cli("report", str(sweep_dir), "--pass-at", "1,5,10,20")
    assert report.returncode == 0, report.stderr
    summary = pd.read_parquet(sweep_dir / "summary.parquet").sort_values("temperature")
    assert list(summary["temperature"]) == list(TEMPERATURES)
    for _, row in summary.iterrows():
        t = row["temperature"]
        assert row["pass_at_problems"] == 20 and row["pass_at_min_n"] == 10
        # pass@1 is the accuracy; pass@k follows from the oracle's shared and fresh draws
        assert row["pass_at_1_ci_low"] <= oracle_accuracy(t, 0.9, peak=PEAK) <= row["pass_at_1_ci_high"]
        for k in (5, 10):
            truth = oracle_pass_at_k(k, t, 0.9, peak=PEAK)
            assert row[f"pass_at_{k}_ci_low"] <= truth <= row[f"pass_at_{k}_ci_high"], (
                t,
                k,
                truth,
                row[f"pass_at_{k}"],
            )
        assert pd.isna(row["pass_at_20"])  # 10 samples cannot say anything about 20
    assert "pass@20 is not reported for temperature=0.1: 20 of 20 prompts have fewer than 20" in report.stdout
    counts = pd.read_parquet(sweep_dir / "pass_at_k.parquet")
    assert len(counts) == 2 * 20 and set(counts["n"]) == {10}
    assert {"config_id", "prompt_id", "n", "c"} <= set(counts.columns)
    page = (sweep_dir / "report.html").read_text(encoding="utf-8")
    assert "pass@k vs temperature" in page and "Best temperature per k" in page
