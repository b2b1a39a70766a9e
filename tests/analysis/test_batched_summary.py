"""batched_summary: the summary from Parquet batches equals ``summarize`` of the whole frame, number for number.

The results are generated at random (seeded) in many shapes: several configurations (by config_id, or by
model and temperature without one), repeats or prompts sampled twice without a repeat column, 0/1 float
scores with gaps, continuous scores (bootstrap), bool scores (a bool column with a gap is not a score in
pandas), a score column with no value, errored rows, cached rows, cost, TTFT, start times, mapped and extra
columns, unicode prompt ids; read back in small batches that cut configurations apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentech_eval.analysis import stats
from sentech_eval.analysis.batched_summary import BatchedSummary, summarize_batches, summary_columns
from sentech_eval.analysis.summary import summarize

PROMPT_NAMES = ["p-2", "p-10", "P-1", "p-é", "q", "p-1", "Z", "p-ü", "a b", "p-03"]


def varied_results(seed: int) -> tuple[pa.Table, dict]:
    """A results table of a random shape (see the module docstring) and the options drawn."""
    rng = np.random.default_rng(seed)
    opts = {
        "config_id": bool(rng.random() < 0.7),
        "configs": int(rng.integers(1, 5)),
        "repeat": bool(rng.random() < 0.8),
        "repeats": int(rng.integers(1, 4)),
        "prompts": int(rng.integers(3, 40)),
        "cost": bool(rng.random() < 0.5),
        "ttft": bool(rng.random() < 0.7),
        "started": bool(rng.random() < 0.7),
        "cached": bool(rng.random() < 0.5),
        "error_share": float(rng.choice([0.0, 0.1, 0.4, 1.0], p=[0.2, 0.5, 0.25, 0.05])),
        "pass_at": [1, 2] if rng.random() < 0.2 else None,
        "continuous": bool(rng.random() < 0.6),
    }
    prompts = [PROMPT_NAMES[i] if i < len(PROMPT_NAMES) else f"p-{i}" for i in range(opts["prompts"])]
    rows_per = [opts["prompts"] * opts["repeats"]] * opts["configs"]
    config = np.concatenate([np.full(r, c) for c, r in enumerate(rows_per)])
    prompt = np.concatenate([np.tile(np.arange(opts["prompts"]), opts["repeats"]) for _ in rows_per])
    repeat = np.concatenate([np.repeat(np.arange(opts["repeats"]), opts["prompts"]) for _ in rows_per])
    order = rng.permutation(config.size) if rng.random() < 0.5 else np.arange(config.size)  # interleaved or not
    config, prompt, repeat = config[order], prompt[order], repeat[order]
    n = config.size
    ok = rng.random(n) >= opts["error_share"]
    gaps = rng.random(n) < 0.1
    temperatures = np.array([0.0, 0.7, 0.7, 1.3])  # two configurations may share a temperature
    columns: dict[str, pa.Array] = {
        "run_id": pa.array(np.full(n, "r")),
        "backend": pa.array(np.full(n, "remote")),
        "model": pa.array(np.array(["m-b", "m-a", "m-b", "m-c"])[config]),
        "dataset": pa.array(np.full(n, "capitals")),
        "prompt_id": pa.array(np.array(prompts, dtype=object)[prompt].astype(str)),
        "temperature": pa.array(temperatures[config]),
        "top_k": pa.array(np.full(n, 40), mask=rng.random(n) < 0.05),  # an int column with gaps: float in pandas
        "seed": pa.array(rng.integers(0, 1000, n)),  # differs row by row: the configuration shows the smallest
        "status": pa.array(np.where(ok, "ok", "error")),
        "error": pa.array(np.where(ok, None, "HTTP 503")),
        "output": pa.array(np.where(ok, "Paris", None)),
        "latency_s": pa.array(rng.lognormal(-1, 0.5, n), mask=~ok),
        "completion_tokens": pa.array(rng.integers(1, 50, n), mask=~ok | gaps),
        "prompt_tokens": pa.array(rng.integers(5, 30, n), mask=~ok),
        "category": pa.array(rng.choice(["geo", "math"], n)),  # a dataset's extra column
        "difficulty": pa.array(rng.integers(1, 4, n)),
        "score_exact": pa.array(np.where(ok, (rng.random(n) < 0.6).astype(float), np.nan), mask=~ok | gaps),
        "score_exact_detail": pa.array(np.where(ok, "matched", None)),
        "score_flag": pa.array(rng.random(n) < 0.5),  # bool without gaps: a score
        "score_flaky": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.2),  # bool with gaps: not a score
        "score_unset": pa.nulls(n, pa.string()),  # no value at all: a score (all NaN)
        "score_judge_latency_s": pa.array(rng.random(n)),  # a judge's timing, not a score
    }
    if opts["continuous"]:
        columns["score_sim"] = pa.array(np.round(rng.random(n), 3), mask=~ok)
    if opts["config_id"]:
        columns["config_id"] = pa.array(np.array([f"cfg-{c}" for c in range(4)])[config])
    if opts["repeat"]:
        columns["repeat"] = pa.array(repeat.astype(np.int32))
    if opts["cost"]:
        columns["cost_usd"] = pa.array(rng.random(n) * 1e-4, mask=rng.random(n) < 0.1)
    if opts["ttft"]:
        columns["ttft_s"] = pa.array(rng.random(n) * 0.05, mask=~ok)
    if opts["started"]:
        starts = 1_764_000_000_000_000 + np.sort(rng.integers(0, 10**8, n))
        columns["started_at"] = pa.array(starts, pa.timestamp("us", tz="UTC"), mask=rng.random(n) < 0.05)
    if opts["cached"]:
        columns["cached"] = pa.array(rng.random(n) < 0.3)
    return pa.table(columns), opts


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
