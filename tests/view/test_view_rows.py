"""view.rows: paging and filters over row groups agree with pandas on the same file; bad files are reported."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic_results import make_results

from sentech_eval.view.rows import RowFilter, RowTable

COLUMNS = ["prompt_id", "repeat", "status", "output", "score_contains"]


@pytest.fixture
def run_file(tmp_path):
    frames = []
    for t, accuracy in ((0.0, 0.9), (0.7, 0.6)):
        df = make_results(n=40, repeats=3, accuracy=accuracy, temperature=t, error_ids={5, 9}, seed=int(t * 10))
        df["config_id"] = f"cfg-{t}"
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df.loc[7, "output"] = "A very SPECIAL answer"
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=37)  # many row groups
    return path, df


@pytest.mark.parametrize(
    "flt, expected",
    [
        (RowFilter(status="error"), lambda d: d["status"] == "error"),
        (RowFilter(status="ok"), lambda d: d["status"] == "ok"),
        (RowFilter(score="score_contains", outcome="fail"), lambda d: d["score_contains"] < 1),
        (RowFilter(score="score_contains", outcome="pass"), lambda d: d["score_contains"] == 1),
        (RowFilter(score="score_contains", outcome="missing"), lambda d: d["score_contains"].isna()),
        (RowFilter(repeat=2), lambda d: d["repeat"] == 2),
        (RowFilter(config_id="cfg-0.7"), lambda d: d["config_id"] == "cfg-0.7"),
        (RowFilter(sampling=(("temperature", 0.7),)), lambda d: d["temperature"] == 0.7),
        (RowFilter(text="special"), lambda d: d["output"].fillna("").str.contains("special", case=False)),
        (RowFilter(text="overloaded"), lambda d: d["error"].fillna("").str.contains("overloaded")),
        (
            RowFilter(status="ok", score="score_contains", outcome="fail", sampling=(("temperature", 0.0),), repeat=1),
            lambda d: (
                (d["status"] == "ok") & (d["score_contains"] < 1) & (d["temperature"] == 0.0) & (d["repeat"] == 1)
            ),
        ),
    ],
)
def test_filters_agree_with_pandas(run_file, flt, expected):
    path, df = run_file
    table = RowTable([str(path)])
    want = np.flatnonzero(expected(df).to_numpy())
    total, rows = table.page(flt, 0, 1000, COLUMNS)
    assert total == len(want) and [r["_row"] for r in rows] == want.tolist()
    for r in rows:
        assert r["prompt_id"] == df.loc[r["_row"], "prompt_id"]


def test_pages_cover_every_row_once_in_order(run_file):
    path, df = run_file
    table = RowTable([str(path)])
    seen = []
    for offset in range(0, len(df), 50):
        total, rows = table.page(RowFilter(), offset, 50, COLUMNS)
        assert total == len(df)
        seen += [r["_row"] for r in rows]
    assert seen == list(range(len(df)))
    row = table.row(123)
    assert row["prompt_id"] == df.loc[123, "prompt_id"] and row["latency_s"] == pytest.approx(df.loc[123, "latency_s"])
    assert table.row(len(df)) is None


def test_rows_span_the_merged_file_and_parts_and_a_damaged_part_is_reported(run_file, tmp_path):
    path, df = run_file
    parts = tmp_path / "results.parts"
    parts.mkdir()
    shutil.copy(path, parts / "part-000000.parquet")
    (parts / "part-000001.parquet").write_bytes(b"PAR1 cut short")
    table = RowTable([str(path), str(parts / "part-000000.parquet"), str(parts / "part-000001.parquet")])
    assert table.total == 2 * len(df)
    assert any("part-000001.parquet" in p and "not readable Parquet" in p for p in table.problems)
    total, rows = table.page(RowFilter(status="error"), 0, 1000, COLUMNS)
    assert total == 2 * int((df["status"] == "error").sum())
    assert table.row(len(df) + 3)["prompt_id"] == df.loc[3, "prompt_id"]


def test_a_filter_on_a_column_the_file_lacks_matches_nothing(run_file):
    path, _ = run_file
    table = RowTable([str(path)])
    assert table.page(RowFilter(score="score_missing", outcome="pass"), 0, 10, COLUMNS)[0] == 0


def test_a_text_search_reads_only_as_far_as_the_page_needs(run_file):
    path, df = run_file
    table = RowTable([str(path)])
    flt = RowFilter(text="cap-0")  # a common match: the first page is found in the first row groups
    want = np.flatnonzero(df["prompt_id"].str.contains("cap-0", case=False).to_numpy())
    total, rows = table.page(flt, 0, 5, COLUMNS)
    assert total is None and [r["_row"] for r in rows] == want[:5].tolist()
    assert table._masks[flt].next_group < len(table.groups)  # noqa: SLF001 - it stopped early
    seen = [r["_row"] for r in rows]
    offset = 5
    while True:  # paging on reads further, in order, and ends with the exact count
        total, rows = table.page(flt, offset, 5, COLUMNS)
        seen += [r["_row"] for r in rows]
        offset += 5
        if total is not None and offset >= total:
            break
    assert total == len(want) and seen == want.tolist()


@pytest.mark.parametrize("text", ["SPECIAL", "q-1", "Overloaded", "#7", "é", "(and) q-1.*"])
def test_a_text_search_over_every_searched_column_agrees_with_pandas(run_file, tmp_path, text):
    """Dictionary-encoded columns (few distinct values) and plain ones, queries with and without cased letters."""
    _, df = run_file
    df = df.copy()
    df["prompt"] = [f"Question {i % 7} #{i % 7}" for i in range(len(df))]
    df["reference"] = np.where(np.arange(len(df)) % 5 == 0, None, "Paris é")
    df.loc[11, "output"] = "see #70 (and) Q-1.* x"
    path = tmp_path / "searched.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=29)
    searched = ["prompt_id", "prompt", "output", "reference", "error"]
    expected = np.zeros(len(df), dtype=bool)
    for column in searched:
        expected |= df[column].fillna("").astype(str).str.lower().str.contains(text.lower(), regex=False).to_numpy()
    total, rows = RowTable([str(path)]).page(RowFilter(text=text), 0, 10_000, COLUMNS)
    assert 0 < total < len(df)
    assert total == int(expected.sum()) and [r["_row"] for r in rows] == np.flatnonzero(expected).tolist()
