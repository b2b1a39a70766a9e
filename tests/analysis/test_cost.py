"""analysis/cost.py through `report` and `compare`: totals, per 1,000 requests, cost per correct answer with its CI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from cli_helpers import call_cli
from synthetic_results import make_results, write_run

from sentech_eval.analysis import stats
from sentech_eval.analysis.compare import compare
from sentech_eval.analysis.cost import cost_per_correct
from sentech_eval.analysis.pairing import pair_results
from sentech_eval.analysis.summary import summarize
from sentech_eval.render.markdown import compare_markdown, report_markdown


def priced(df: pd.DataFrame, ok_cost: float, error_cost: float = 0.0) -> pd.DataFrame:
    return df.assign(cost_usd=np.where(df["status"] == "ok", ok_cost, error_cost))


def test_summary_cost_columns_use_the_accuracy_interval_of_the_report():
    df = priced(make_results(n=40, repeats=2, accuracy=0.75, error_ids={3, 9}), 0.002, 0.0005)
    row = summarize(df).iloc[0]
    total = 0.002 * (df["status"] == "ok").sum() + 0.0005 * (df["status"] != "ok").sum()
    assert row["cost_usd"] == pytest.approx(total)
    assert row["cost_per_1k_requests"] == pytest.approx(1000 * total / len(df))
    # The interval is the report's own: the score's clustered Wilson interval, independently recomputed here.
    ok = df[df["status"] == "ok"]
    acc = stats.proportion_ci(ok["score_contains"], clusters=ok["prompt_id"])
    assert acc.method == stats.WILSON_CLUSTERED
    assert (row["score_contains_ci_low"], row["score_contains_ci_high"]) == pytest.approx((acc.low, acc.high))
    correct = ok["score_contains"].sum()
    assert row["cost_per_correct_contains"] == pytest.approx(total / correct)
    assert row["cost_per_correct_contains_ci_low"] == pytest.approx(total / (acc.n * acc.high))
    assert row["cost_per_correct_contains_ci_high"] == pytest.approx(total / (acc.n * acc.low))
    assert (
        row["cost_per_correct_contains_ci_low"]
        < row["cost_per_correct_contains"]
        < row["cost_per_correct_contains_ci_high"]
    )


def test_all_correct_still_has_an_interval_the_bootstrap_would_collapse():
    df = priced(make_results(n=30, accuracy=1.0), 0.01)
    row = summarize(df).iloc[0]
    assert row["cost_per_correct_contains"] == pytest.approx(0.01)  # $0.30 for 30 correct answers
    assert row["cost_per_correct_contains_ci_low"] == pytest.approx(0.01)  # accuracy's upper bound is 1
    assert row["cost_per_correct_contains_ci_high"] > 0.0105  # Wilson's lower bound for 30/30 is ≈ 0.886


def test_no_correct_answer_has_no_upper_bound_and_says_so():
    df = priced(make_results(n=20, accuracy=0.0), 0.01)
    summary = summarize(df)
    row = summary.iloc[0]
    assert math.isinf(row["cost_per_correct_contains"]) and math.isinf(row["cost_per_correct_contains_ci_high"])
    text = report_markdown(summary, "t")
    assert "no correct answer" in text and "no upper bound: the accuracy's lower bound is 0" in text


def test_cost_per_correct_from_an_interval_with_a_zero_lower_bound():
    interval = stats.Interval(0.05, 0.0, 0.2, stats.WILSON, 20, 20)
    est, low, high = cost_per_correct(1.0, interval)
    assert est == pytest.approx(1.0) and low == pytest.approx(0.25) and math.isinf(high)


def test_scores_that_are_not_right_or_wrong_get_no_cost_per_correct():
    df = priced(make_results(n=20), 0.01).assign(score_length=lambda d: np.arange(len(d), dtype=float))
    summary = summarize(df)
    assert "cost_per_correct_contains" in summary and "cost_per_correct_length" not in summary


def test_without_a_price_there_is_no_cost_anywhere(tmp_path):
    df = make_results(n=20)
    summary = summarize(df)
    assert not any(c.startswith("cost") for c in summary.columns)
    assert "Cost" not in report_markdown(summary, "t")
    a, b = write_run(df, tmp_path / "a"), write_run(make_results(n=20, backend="local"), tmp_path / "b")
    metrics = compare(pair_results(a, b, "A", "B"))
    assert not metrics["metric"].str.startswith("cost").any()
    assert "| cost |" not in compare_markdown(metrics)


def test_report_cli_prints_writes_and_renders_the_cost(tmp_path):
    run = write_run(priced(make_results(n=40, accuracy=0.8), 0.001), tmp_path / "run")
    proc = call_cli("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "### Cost" in proc.stdout and "per correct answer: contains (95% CI)" in proc.stdout
    assert "| $0.04000 | $1.00 | $0.001250 [" in proc.stdout  # $0.04 for 40 requests, 32 of them correct
    summary = pd.read_parquet(run / "summary.parquet")
    assert {
        "cost_usd",
        "cost_per_1k_requests",
        "cost_per_correct_contains",
        "cost_per_correct_contains_ci_low",
        "cost_per_correct_contains_ci_high",
    } <= set(summary.columns)
    page = (run / "report.html").read_text()
    assert "<h2>Cost</h2>" in page and 'id="cost"' in page and "$0.001250 [" in page


def test_compare_shows_both_sides_and_the_ratio(tmp_path):
    a = write_run(priced(make_results(n=40, accuracy=0.8), 0.001), tmp_path / "a")
    b = write_run(priced(make_results(n=40, accuracy=0.5, backend="local", seed=1), 0.0002), tmp_path / "b")
    out = tmp_path / "cmp"
    proc = call_cli("compare", str(a), str(b), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = pd.read_parquet(out / "compare.parquet")
    total = m[m["metric"] == "cost_usd"].iloc[0]
    assert (total["value_a"], total["value_b"], total["ratio"]) == pytest.approx((0.04, 0.008, 0.2))
    per = m[(m["metric"] == "cost_per_correct") & (m["column"] == "score_contains")].iloc[0]
    assert per["value_a"] == pytest.approx(0.04 / 32) and per["value_b"] == pytest.approx(0.008 / 20)
    assert per["ratio"] == pytest.approx((0.008 / 20) / (0.04 / 32))
    assert per["ci_low_a"] < per["value_a"] < per["ci_high_a"] and per["ci_low_b"] < per["value_b"] < per["ci_high_b"]
    assert "| total cost | $0.04000 | $0.008000 | 0.2 |" in proc.stdout
    assert "| per correct answer: contains (95% CI) | $0.001250 [" in proc.stdout
    assert 'id="cost"' in (out / "compare.html").read_text()


def test_compare_with_one_side_unpriced_names_it(tmp_path):
    a = write_run(priced(make_results(n=20), 0.001), tmp_path / "a")
    b = write_run(make_results(n=20, backend="local"), tmp_path / "b")
    metrics = compare(pair_results(a, b, "A", "B"))
    total = metrics[metrics["metric"] == "cost_usd"].iloc[0]
    assert total["value_a"] == pytest.approx(0.02) and np.isnan(total["value_b"]) and pd.isna(total["ratio"])
    assert "B has no cost_usd" in total["note"]
    assert "| total cost | $0.02000 | – |" in compare_markdown(metrics)
