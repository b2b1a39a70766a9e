"""Paired comparison: pairing rules, paired statistics, outputs (parquet, HTML, markdown)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from synthetic_results import make_results, write_run

from sentech_eval.analysis.compare import compare, disagreements, normalise_output
from sentech_eval.analysis.pairing import pair_frames, pair_results
from sentech_eval.cli import main as cli
from sentech_eval.errors import ResultsError


def metric(df: pd.DataFrame, name: str, column: str | None = None) -> pd.Series:
    rows = df[(df["metric"] == name) & ((df["column"] == column) if column else True)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_score_statistics_are_paired_b_minus_a() -> None:
    a = make_results(wrong_ids={0, 1, 2, 3})  # 36/40 right
    b = make_results(wrong_ids={2, 3, 10, 11, 12, 13, 14, 15}, backend="local")  # 32/40, 2 fixed, 6 broken
    paired = pair_frames(a, b)
    m = compare(paired)
    s = metric(m, "score", "score_exact_match")
    assert s["value_a"] == pytest.approx(0.9) and s["value_b"] == pytest.approx(0.8)
    assert s["diff"] == pytest.approx(-0.1)
    assert (s["wins"], s["ties"], s["losses"]) == (2, 32, 6)
    assert s["ci_low"] < s["diff"] < s["ci_high"]
    assert s["p_value"] == pytest.approx(binomtest(2, 8, 0.5).pvalue)
    assert s["n_pairs"] == 40


def test_non_binary_scores_get_no_mcnemar() -> None:
    a = make_results()
    b = make_results()
    rng = np.random.default_rng(3)
    a["score_similarity"] = rng.uniform(size=len(a))
    b["score_similarity"] = a["score_similarity"] + 0.1
    s = metric(compare(pair_frames(a, b)), "score", "score_similarity")
    assert pd.isna(s["p_value"])
    assert s["diff"] == pytest.approx(0.1) and s["ci_low"] == pytest.approx(0.1) and s["ci_high"] == pytest.approx(0.1)


def test_unpaired_rows_are_counted_not_dropped() -> None:
    a = make_results(n=40)
    b = make_results(n=35, backend="local")
    b = pd.concat([b, make_results(n=3, prompt_ids=["new-1", "new-2", "new-3"])], ignore_index=True)
    paired = pair_frames(a, b)
    assert (paired.n_pairs, paired.unpaired_a, paired.unpaired_b) == (35, 5, 3)
    m = compare(paired)
    assert metric(m, "unpaired_a")["value"] == 5 and metric(m, "unpaired_b")["value"] == 3
    assert metric(m, "pairs")["n_pairs"] == 35


def test_repeats_pair_on_repeat_and_cluster_by_prompt() -> None:
    a = make_results(n=20, repeats=3, wrong_ids={0})
    b = make_results(n=20, repeats=3, wrong_ids={0, 1, 2, 3, 4, 5})
    paired = pair_frames(a, b)
    assert paired.n_pairs == 60 and paired.keys == ["prompt_id", "repeat"]
    s = metric(compare(paired), "score", "score_exact_match")
    assert s["losses"] == 15 and s["diff"] == pytest.approx(-0.25)
    # Clustered: each resample moves whole prompts, so the CI is a multiple of 1/20 wide steps.
    assert s["ci_high"] < 0


def test_sweeps_pair_on_the_sampling_columns_both_vary() -> None:
    a = pd.concat([make_results(temperature=t, seed=i) for i, t in enumerate((0.0, 0.7))], ignore_index=True)
    b = pd.concat(
        [make_results(temperature=t, seed=9 + i, backend="local") for i, t in enumerate((0.0, 0.7))], ignore_index=True
    )
    paired = pair_frames(a, b)
    assert paired.keys == ["prompt_id", "repeat", "temperature"]
    assert paired.n_pairs == 80


def test_sweep_against_single_run_is_refused_in_one_sentence() -> None:
    a = pd.concat([make_results(temperature=t) for t in (0.0, 0.7)], ignore_index=True)
    with pytest.raises(ResultsError, match="rows sharing a pairing key"):
        pair_frames(a, make_results())


def test_missing_path_names_the_side(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="The B results .* do not exist"):
        pair_results(write_run(make_results(), tmp_path / "a"), tmp_path / "missing")


def test_performance_ratios_and_error_rates() -> None:
    a = make_results(latency_s=0.1)
    b = make_results(latency_s=0.3, error_ids={0, 1, 2, 3})
    m = compare(pair_frames(a, b))
    assert metric(m, "latency_p50")["ratio"] == pytest.approx(3.0, rel=0.1)
    assert metric(m, "ttft_p95")["ratio"] == pytest.approx(3.0, rel=0.15)
    assert metric(m, "latency_p50")["n_pairs"] == 36
    err = metric(m, "error_rate")
    assert (err["value_a"], err["value_b"]) == (0.0, pytest.approx(0.1))
    assert metric(m, "completion_tokens_mean")["n_pairs"] == 36


def test_output_agreement_ignores_case_whitespace_and_punctuation() -> None:
    assert normalise_output("  The capital is PARIS!\n") == normalise_output("the capital, is paris")
    assert normalise_output(None) is None
    a = make_results(wrong_ids=set())
    b = a.copy()
    b["output"] = b["output"].str.upper().str.rstrip(".")  # same answers, other form
    b.loc[:9, "output"] = "I don't know"
    row = metric(compare(pair_frames(a, b)), "output_agreement")
    assert row["value"] == pytest.approx(0.75) and row["n_pairs"] == 40
    assert "0 byte-identical" in row["note"]


def test_disagreements_rank_score_gaps_first() -> None:
    a = make_results(wrong_ids={5})
    b = make_results(wrong_ids={7})
    b.loc[20, "output"] = "Paris!!"  # same score, different text
    ex = disagreements(pair_frames(a, b), limit=10)
    assert list(ex["prompt_id"]) == ["cap-005", "cap-007", "cap-020"]


def test_compare_cli_writes_parquet_html_and_markdown(tmp_path: Path, capsys) -> None:
    a_df = make_results(wrong_ids={0, 1})
    b_df = make_results(wrong_ids={1, 2, 3}, backend="local", model="smollm2", latency_s=0.5)
    b_df.loc[b_df["prompt_id"] == "cap-003", "output"] = "<script>alert('x')</script>"
    a = write_run(a_df, tmp_path / "remote")
    b = write_run(b_df, tmp_path / "local")
    out = tmp_path / "cmp"
    assert cli(["compare", str(a), str(b), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "## sentech-eval compare: remote/sentech-small (A) vs local/smollm2 (B)" in stdout
    assert "| score_exact_match | 0.95 | 0.925 | -0.025 |" in stdout
    m = pd.read_parquet(out / "compare.parquet")
    assert {"metric", "column", "value_a", "value_b", "diff", "ci_low", "ci_high", "p_value", "n_pairs"} <= set(
        m.columns
    )
    assert set(m["metric"]) >= {"score", "latency_p50", "latency_p95", "ttft_p50", "error_rate", "output_agreement"}
    page = (out / "compare.html").read_text()
    assert "<script>alert" not in page and html.escape("<script>alert('x')</script>") in page
    assert "data:image/png;base64," in page and "cap-003" in page


def test_compare_cli_no_paired_rows_exits_2(tmp_path: Path, capsys) -> None:
    a = write_run(make_results(), tmp_path / "a")
    b = write_run(make_results(prompt_ids=[f"x{i}" for i in range(40)]), tmp_path / "b")
    assert cli(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_differing_sampling_is_reported(tmp_path: Path, capsys) -> None:
    a = write_run(make_results(temperature=0.0), tmp_path / "a")
    b = write_run(make_results(temperature=0.7), tmp_path / "b")
    assert cli(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    assert "different sampling (temperature: 0 vs 0.7)" in capsys.readouterr().out


# ------------------------------------------------------------- the prompt is the unit of evidence
def _two_temperatures(wrong_ids: set[int], backend: str) -> pd.DataFrame:
    return pd.concat(
        [make_results(temperature=t, wrong_ids=wrong_ids, backend=backend, seed=i) for i, t in enumerate((0.0, 0.7))],
        ignore_index=True,
    )


def test_sweep_vs_sweep_clusters_by_prompt_with_the_clustered_mcnemar() -> None:
    # Six prompts lost by B at both temperatures: six prompts of evidence, not twelve pairs.
    a = _two_temperatures({0, 1, 2, 3}, "remote")
    b = _two_temperatures({0, 1, 2, 3, 10, 11, 12, 13, 14, 15}, "local")
    s = metric(compare(pair_frames(a, b)), "score", "score_exact_match")
    assert (s["n_pairs"], s["n_clusters"]) == (80, 40)
    assert (s["ci_method"], s["test"]) == ("newcombe_clustered", "mcnemar_clustered")
    assert s["p_value"] == pytest.approx(binomtest(0, 6, 0.5).pvalue)  # 0.031, the prompt-level test
    assert binomtest(0, 12, 0.5).pvalue < 0.001  # what counting rows as independent would claim
    assert s["diff"] == pytest.approx(-0.15) and s["ci_low"] < s["diff"] < s["ci_high"]


def test_one_pair_per_prompt_keeps_the_exact_mcnemar_and_newcombe() -> None:
    s = metric(
        compare(pair_frames(make_results(wrong_ids={0}), make_results(wrong_ids={0, 5, 6}))),
        "score",
        "score_exact_match",
    )
    assert (s["ci_method"], s["test"], s["n_clusters"]) == ("newcombe", "mcnemar_exact", 40)
    assert s["p_value"] == pytest.approx(binomtest(0, 2, 0.5).pvalue)


def test_all_ties_give_an_interval_not_a_point() -> None:
    s = metric(
        compare(pair_frames(make_results(n=30, accuracy=1.0), make_results(n=30, accuracy=1.0))),
        "score",
        "score_exact_match",
    )
    assert s["diff"] == 0 and s["ci_low"] < -0.1 and s["ci_high"] > 0.1 and s["p_value"] == 1.0


def test_a_p_value_and_ci_that_disagree_are_explained(tmp_path: Path, capsys) -> None:
    # 20 prompts all passed by A, 5 lost by B: Newcombe's CI excludes 0, the exact McNemar p is 0.0625.
    a, b = make_results(n=20, accuracy=1.0), make_results(n=20, wrong_ids={0, 1, 2, 3, 4})
    s = metric(compare(pair_frames(a, b)), "score", "score_exact_match")
    assert s["ci_high"] < 0 and s["p_value"] == pytest.approx(0.0625)
    assert "the CI excludes 0 but p = 0.0625" in s["note"]
    code = cli(
        ["compare", str(write_run(a, tmp_path / "a")), str(write_run(b, tmp_path / "b")), "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "⚠️ score_exact_match: the CI excludes 0 but p = 0.0625" in out
    assert "CI: Newcombe hybrid score interval" in out and "p: exact McNemar test" in out


def test_cluster_option_groups_pairs_by_a_column_and_refuses_an_unknown_one(tmp_path: Path, capsys) -> None:
    a, b = make_results(wrong_ids={0}), make_results(wrong_ids={0, 5, 6, 7, 8})
    for df in (a, b):
        df["topic"] = [f"t{i // 4}" for i in range(len(df))]  # ten topics of four prompts
    s = metric(compare(pair_frames(a, b), cluster="topic"), "score", "score_exact_match")
    assert (s["n_clusters"], s["test"], s["ci_method"]) == (10, "mcnemar_clustered", "newcombe_clustered")
    code = cli(
        [
            "compare",
            str(write_run(a, tmp_path / "a")),
            str(write_run(b, tmp_path / "b")),
            "--out",
            str(tmp_path),
            "--cluster",
            "nope",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--cluster 'nope' is not a column of the results" in err and err.count("\n") == 1


def _timed(latencies, tokens=10, start_gap_s=0.0):
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    n = len(latencies)
    return pd.DataFrame(
        {
            "prompt_id": [str(i) for i in range(n)],
            "repeat": 0,
            "status": "ok",
            "latency_s": latencies,
            "completion_tokens": tokens,
            "started_at": [t0 + dt.timedelta(seconds=i * start_gap_s) for i in range(n)],
            "backend": "remote",
            "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
            "response_model": "SmolLM2.gguf",
        }
    )


def test_compare_warns_when_one_side_measured_a_queue():
    """16 requests sent at once to a server that answers one at a time: the i-th waits i answers."""
    from sentech_eval.analysis.compare import queueing_factor

    service = 0.6
    queued = _timed([service * (i + 1) for i in range(16)])  # all sent together, answered one by one
    served_one_at_a_time = _timed([service] * 16, start_gap_s=service)
    overlap, slowdown = queueing_factor(queued)
    assert overlap > 7 and slowdown > 4
    assert queueing_factor(served_one_at_a_time) is None
    parallel = _timed([service] * 16)  # a server that really answers 16 at a time: overlap, no queue
    assert queueing_factor(parallel) is None


def test_compare_labels_use_the_model_that_answered():
    from sentech_eval.analysis.compare import default_label

    assert default_label(_timed([1.0] * 4), "A") == "remote/SmolLM2.gguf"
    assert (
        default_label(_timed([1.0] * 4).drop(columns="response_model"), "A")
        == "remote/meta-llama/Meta-Llama-3.1-8B-Instruct"
    )
