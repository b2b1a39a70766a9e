"""Reports stay honest about the response cache: summaries, compare and check use cached rows for
quality, and timings from fresh rows only (or say that nothing was measured)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from synthetic_results import make_results, write_run

from sentech_eval.analysis.compare import compare
from sentech_eval.analysis.pairing import pair_results
from sentech_eval.analysis.summary import summarize
from sentech_eval.cli import main as cli
from sentech_eval.render.markdown import report_markdown


def with_cache(df: pd.DataFrame, cached_ids: set[int], original_latency_s: float = 9.0) -> pd.DataFrame:
    """Mark the rows of these prompt indices as answered from the cache, with the original's (slow) latency."""
    df = df.copy()
    mask = df["prompt_id"].isin({f"cap-{i:03d}" for i in cached_ids})
    df["cached"] = mask
    df["cached_from"] = np.where(mask, "older-run", None)
    df.loc[mask, "latency_s"] = original_latency_s
    df.loc[mask, "started_at"] = pd.Timestamp("2026-01-01T00:00:00Z")  # the original request, long ago
    return df


def test_summary_scores_every_row_but_times_only_fresh_ones():
    plain = make_results(n=40, accuracy=0.75, latency_s=0.2)
    df = with_cache(plain, cached_ids=set(range(20)))
    row = summarize(df).iloc[0]
    base = summarize(plain).iloc[0]
    assert row["n_cached"] == 20 and row["n"] == 40
    assert row["score_exact_match_mean"] == base["score_exact_match_mean"]  # cached rows count for quality
    assert 0.15 < row["latency_s_p95"] < 0.25  # the cached rows' 9 s never enter the percentiles
    assert row["wall_s"] < 60  # not stretched back to the original requests' start in January
    assert row["requests_per_s"] > 0
    text = report_markdown(summarize(df), "t")
    assert "20 of 40 rows came from the response cache" in text and "use the 20 fresh rows only" in text


def test_a_summary_of_only_cached_rows_says_it_measured_no_latency():
    df = with_cache(make_results(n=10), cached_ids=set(range(10)))
    row = summarize(df).iloc[0]
    assert np.isnan(row["latency_s_p50"]) and np.isnan(row["output_tokens_per_s"]) and np.isnan(row["latency_s_mean"])
    assert row["n_cached"] == 10 and not np.isnan(row["score_exact_match_mean"])
    assert "measured no latency" in report_markdown(summarize(df), "t")


def test_results_without_a_cached_column_are_all_fresh():
    plain = make_results(n=10)
    assert "cached" not in plain
    row = summarize(plain).iloc[0]
    assert row["n_cached"] == 0 and not np.isnan(row["latency_s_p50"])
    assert "cache" not in report_markdown(summarize(plain), "t")


def test_compare_leaves_cached_pairs_out_of_latency(tmp_path):
    a = write_run(make_results(n=40, latency_s=0.2, seed=1), tmp_path / "a")
    b_frame = with_cache(make_results(n=40, latency_s=0.4, seed=2), cached_ids=set(range(30)), original_latency_s=0.01)
    b = write_run(b_frame, tmp_path / "b")
    metrics = compare(pair_results(a, b)).set_index("metric")
    p50 = metrics.loc["latency_p50"]
    assert p50["n_pairs"] == 10 and 1.7 < p50["ratio"] < 2.3  # the 10 fresh pairs: 0.4 s vs 0.2 s
    assert "30 pairs with a row from the response cache left out" in p50["note"]
    assert metrics.loc["score"]["n_pairs"].min() == 40  # quality still uses every pair


def test_check_refuses_a_latency_gate_when_the_candidate_came_from_the_cache(tmp_path, capsys):
    a = write_run(make_results(n=20), tmp_path / "a")
    b = write_run(with_cache(make_results(n=20), cached_ids=set(range(20))), tmp_path / "b")
    code = cli(["check", "--baseline", str(a), "--candidate", str(b), "--max-latency-increase", "0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "needs latency measured on both sides; no latency measured: all 20 ok pairs have a row from the response cache"
        in err
    )
    assert cli(["check", "--baseline", str(a), "--candidate", str(b), "--max-score-drop", "exact_match=0"]) == 0
