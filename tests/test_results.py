"""results.py: part files flushed as the run goes, merged on close; load_results on file/run/dirs."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sentech_eval.errors import ResultsError
from sentech_eval.results import CORE_NAMES, PARTS_DIR, ResultsWriter, load_results, read_metadata, results_schema


def rows(n, start=0):
    return [{"run_id": "r", "config_id": "c", "prompt_id": str(i), "repeat": 0, "status": "ok", "output": f"o{i}",
             "latency_s": 0.1 * i} for i in range(start, start + n)]


def test_flush_writes_complete_part_files_that_survive_a_crash(tmp_path):
    writer = ResultsWriter(tmp_path, results_schema(), {"run_id": "r"})
    for row in rows(5):
        writer.add(row)
    writer.flush()
    for row in rows(3, start=5):
        writer.add(row)  # never flushed: lost in a crash, re-requested on resume
    parts = sorted((tmp_path / PARTS_DIR).glob("part-*.parquet"))
    assert len(parts) == 1
    assert pq.read_table(parts[0]).num_rows == 5
    frame = load_results(tmp_path)  # a crashed run dir is still readable
    assert list(frame["prompt_id"]) == ["0", "1", "2", "3", "4"]


def test_close_merges_parts_into_one_file_with_metadata(tmp_path):
    writer = ResultsWriter(tmp_path, results_schema(), {"run_id": "r", "config": {"a": 1}})
    for i, row in enumerate(rows(10)):
        writer.add(row)
        if i % 3 == 2:
            writer.flush()
    path = writer.close()
    assert path == tmp_path / "results.parquet"
    assert not (tmp_path / PARTS_DIR).exists()
    table = pq.read_table(path)
    assert table.num_rows == 10 and tuple(table.column_names) == CORE_NAMES
    assert read_metadata(path)["config"] == {"a": 1}


def test_load_results_reads_file_run_dir_and_directory_of_runs(tmp_path):
    for name, start in (("a", 0), ("b/nested", 100)):
        writer = ResultsWriter(tmp_path / name, results_schema(), {})
        for row in rows(4, start):
            writer.add(row)
        writer.close()
    assert len(load_results(tmp_path / "a" / "results.parquet")) == 4
    assert len(load_results(tmp_path / "a")) == 4
    both = load_results(tmp_path)
    assert sorted(both["prompt_id"].astype(int)) == [0, 1, 2, 3, 100, 101, 102, 103]
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="No results.parquet found"):
        load_results(tmp_path / "empty")
