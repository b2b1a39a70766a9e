"""view.digest reads a run by row-group batches: its summary, its runs-page line and its plots' rows are what
the whole frame gives (``summarize``, and the pandas expressions the digest used before), for results of
random shapes (tests/varied_results.py), one file or several (results.parts/, retries kept latest)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from varied_results import varied_results

from sentech_eval.analysis import slo
from sentech_eval.analysis.summary import config_labels, score_columns, summarize
from sentech_eval.engine.results import keep_latest_per_key
from sentech_eval.view.digest import RunBatches, plot_frame, run_digest, run_plots


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso", default_handler=str))


def expected_line(df: pd.DataFrame) -> dict:
    """The runs-page line as the digest computed it from the whole frame."""
    status = df["status"].astype(str)
    line = {"n_rows": len(df), "n_ok": int((status == "ok").sum()), "n_error": int((status != "ok").sum())}
    for col in ("dataset", "backend", "model", "config_id"):
        line[col] = sorted({str(v) for v in df[col].dropna().unique()})[:5] if col in df else []
    if "started_at" in df and df["started_at"].notna().any():
        line["started_at"] = pd.to_datetime(df["started_at"], utc=True).min().isoformat()
    line["is_load"] = bool(slo.is_load_run(df, slo.SLO()))
    line["sampling_values"] = {
        c: sorted(float(v) for v in df[c].dropna().unique())[:50]
        for c in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "max_tokens")
        if c in df and pd.api.types.is_numeric_dtype(df[c]) and df[c].nunique() > 1
    }
    line["repeats"] = int(df["repeat"].max()) + 1 if "repeat" in df and df["repeat"].notna().any() else 1
    return line


@pytest.mark.parametrize("seed", range(12))
def test_run_digest_is_the_whole_frames_summary_and_line(tmp_path, seed):
    table, _ = varied_results(seed)
    path = tmp_path / "results.parquet"
    pq.write_table(table, path, row_group_size=29)
    df = pq.read_table(path).to_pandas()
    digest = run_digest([str(path)])
    summary = summarize(df)
    assert digest["status"] == "ok"
    assert digest["summary"] == records(summary)
    assert digest["labels"] == config_labels(summary)
    assert digest["scores"] == score_columns(df)
    for key, value in expected_line(df).items():
        assert digest[key] == value, key


def test_several_files_keep_the_latest_row_of_each_key_and_a_damaged_one_is_reported(tmp_path):
    table, _ = varied_results(4)
    table = (
        table.append_column("config_id", pa.array(["c"] * table.num_rows))
        if "config_id" not in table.column_names
        else table
    )
    if "repeat" not in table.column_names:
        table = table.append_column("repeat", pa.array(np.zeros(table.num_rows, dtype=np.int32)))
    parts = tmp_path / "results.parts"
    parts.mkdir()
    half = table.num_rows // 2
    first, second = table.slice(0, half), table.slice(half // 2)  # the second repeats rows of the first (retries)
    retried = second.set_column(second.column_names.index("status"), "status", pa.array(["ok"] * second.num_rows))
    pq.write_table(first, parts / "part-000000.parquet", row_group_size=17)
    pq.write_table(retried, parts / "part-000001.parquet", row_group_size=17)
    (parts / "part-000002.parquet").write_bytes(b"PAR1 cut short")
    files = [str(parts / f"part-00000{i}.parquet") for i in range(3)]
    digest = run_digest(files)
    whole = keep_latest_per_key(pa.concat_tables([first, retried], promote_options="permissive")).to_pandas()
    assert digest["summary"] == records(summarize(whole))
    assert digest["n_rows"] == len(whole) < first.num_rows + retried.num_rows
    assert any("part-000002.parquet" in p for p in digest["problems"])


def test_plot_rows_are_the_ok_rows_with_fresh_latency_and_their_configuration(tmp_path):
    table, _ = varied_results(7)
    path = tmp_path / "results.parquet"
    pq.write_table(table, path, row_group_size=31)
    df = pq.read_table(path).to_pandas()
    summary = summarize(df)
    run = RunBatches([str(path)])
    frame = plot_frame(run, summary)
    run.close()
    ok = df[df["status"] == "ok"]
    fresh = ~ok["cached"].fillna(False).astype(bool) if "cached" in ok else pd.Series(True, index=ok.index)
    assert len(frame) == len(ok) and set(frame["status"]) == {"ok"}
    np.testing.assert_array_equal(frame["latency_s"], ok["latency_s"].where(fresh).to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(frame["completion_tokens"], ok["completion_tokens"].to_numpy(dtype=np.float32))
    keys = ["config_id", "dataset"] if "config_id" in df else ["backend", "model", "dataset", "temperature", "top_k"]
    for position, row in summary.iterrows():  # each row's configuration is its summary row
        match = np.ones(len(ok), dtype=bool)
        for key in keys:
            match &= (ok[key] == row[key]).to_numpy() if pd.notna(row[key]) else ok[key].isna().to_numpy()
        assert (frame["_config"].to_numpy()[match] == position).all()
    extras = run_plots([str(path)], str(tmp_path), records(summary), config_labels(summary))
    assert {alt for alt, _ in extras["plots"]} >= {"latency CDF", "token histograms"}
