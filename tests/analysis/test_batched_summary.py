"""batched_summary: the summary from Parquet batches equals ``summarize`` of the whole frame, number for number.

The results are generated at random in many shapes (tests/varied_results.py) and read back in small
batches that cut configurations apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from varied_results import varied_results

from sentech_eval.analysis import stats
from sentech_eval.analysis.batched_summary import BatchedSummary, summarize_batches, summary_columns
from sentech_eval.analysis.summary import summarize


def arrow_string_frame(table: pa.Table) -> pd.DataFrame:
    """The frame as the viewer used to build it: strings kept Arrow-backed."""
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype("pyarrow") if pa.types.is_string(t) else None)


def batched(path, batch_rows: int, pass_at=None) -> pd.DataFrame:
    handle = pq.ParquetFile(path)
    columns = summary_columns(handle.schema_arrow.names)
    return summarize_batches(
        handle.iter_batches(batch_size=batch_rows, columns=columns), handle.schema_arrow, pass_at=pass_at
    )


@pytest.mark.parametrize("seed", range(40))
def test_batched_summary_equals_summarize_number_for_number(tmp_path, seed):
    table, opts = varied_results(seed)
    path = tmp_path / "results.parquet"
    pq.write_table(table, path, row_group_size=23)
    expected = summarize(pq.read_table(path).to_pandas(), pass_at=opts["pass_at"])  # as `report` reads it
    got = batched(path, batch_rows=int(np.random.default_rng(seed).integers(7, 60)), pass_at=opts["pass_at"])
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # and the frame the viewer read before (Arrow strings) gives the same numbers
    pd.testing.assert_frame_equal(got, summarize(arrow_string_frame(table), pass_at=opts["pass_at"]), check_exact=True)


def test_the_shapes_cover_what_the_summary_distinguishes(tmp_path):
    """The seeds above reach every branch that changes a number: clustered and unclustered 0/1 intervals,
    the bootstrap, pass@k, cost per correct answer, cached rows, throughput from start times and from busy time."""
    seen: dict[str, set] = {"methods": set(), "pass_at": set(), "cost": set(), "cached": set(), "wall": set()}
    for seed in range(40):
        table, opts = varied_results(seed)
        summary = summarize(table.to_pandas(), pass_at=opts["pass_at"])
        for col in summary.columns:
            if col.endswith("_ci_method"):
                seen["methods"] |= set(summary[col].dropna())
        seen["pass_at"].add("pass_at_1" in summary)
        seen["cost"].add("cost_per_correct_exact" in summary)
        seen["cached"].add(bool(summary["n_cached"].sum()))
        seen["wall"].add(opts["started"])
    assert {stats.MIDP, stats.WILSON_CLUSTERED, stats.BOOTSTRAP, stats.BOOTSTRAP_CLUSTERED} <= seen["methods"]
    assert seen["pass_at"] == seen["cost"] == seen["cached"] == seen["wall"] == {True, False}


def test_a_table_fed_whole_or_by_rows_gives_the_same_summary():
    table, _ = varied_results(3)
    columns = summary_columns(table.column_names)
    whole = summarize_batches([table.select(columns)], table.schema)
    summary = BatchedSummary(table.schema)
    for start in range(0, table.num_rows, 5):
        summary.add(table.select(columns).slice(start, 5))
    pd.testing.assert_frame_equal(summary.result(), whole, check_exact=True)
    pd.testing.assert_frame_equal(whole, summarize(table.to_pandas()), check_exact=True)


def test_summary_columns_leave_out_text_details_and_judge_timings():
    names = ["prompt", "output", "error", "status", "score_a", "score_a_detail", "score_judge_latency_s", "category"]
    assert summary_columns(names) == ["status", "score_a"]


def test_stats_quantiles_without_scipy_stats_are_scipys_own():
    """stats uses scipy.special's ndtri and stdtrit (scipy.stats is not imported for a summary): the very
    numbers of scipy.stats.norm.ppf and t.ppf."""
    from scipy import stats as scipy_stats

    assert stats._z(0.95) == scipy_stats.norm.ppf(0.975)
    df = np.concatenate([np.linspace(1.0, 400.0, 3000), [np.inf]])
    for q in (0.9, 0.95, 0.975, 0.995):
        assert np.array_equal(stats._t_quantile(q, df), scipy_stats.t.ppf(q, df))
