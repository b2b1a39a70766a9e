"""results.py: part files flushed as the run goes, merged on close; load_results on file/run/dirs."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sentech_eval.engine.results import (
    CORE_NAMES,
    PARTS_DIR,
    ResultsWriter,
    keep_latest_per_key,
    load_results,
    read_metadata,
    results_schema,
)
from sentech_eval.errors import ResultsError


def rows(n, start=0):
    return [
        {
            "run_id": "r",
            "config_id": "c",
            "prompt_id": str(i),
            "repeat": 0,
            "status": "ok",
            "output": f"o{i}",
            "latency_s": 0.1 * i,
        }
        for i in range(start, start + n)
    ]


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


def test_a_crash_after_merging_but_before_cleanup_does_not_duplicate_rows(tmp_path):
    writer = ResultsWriter(tmp_path, results_schema(), {})
    for row in rows(6):
        writer.add(row)
    writer.flush()
    part = next((tmp_path / PARTS_DIR).glob("part-*.parquet"))
    saved = part.read_bytes()
    writer.close()
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(saved)  # as if killed between os.replace and deleting the parts
    (tmp_path / PARTS_DIR / "part-000009.tmp").write_bytes(b"half a flush")
    assert sorted(load_results(tmp_path)["prompt_id"].astype(int)) == list(range(6))
    again = ResultsWriter(tmp_path, results_schema(), {})  # a resume cleans the half-written flush
    assert not list((tmp_path / PARTS_DIR).glob("*.tmp"))
    merged = pq.read_table(again.close(keep=keep_latest_per_key))
    assert sorted(merged.column("prompt_id").to_pylist(), key=int) == [str(i) for i in range(6)]


def test_merge_writes_few_row_groups_however_often_it_flushed(tmp_path):
    writer = ResultsWriter(tmp_path, results_schema(), {})
    for i, row in enumerate(rows(300)):
        writer.add(row)
        if i % 10 == 9:
            writer.flush()
    path = writer.close()
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert pq.read_table(path).num_rows == 300


def test_started_at_may_mix_posix_seconds_and_datetimes_in_one_flush(tmp_path):
    """The runner adds error rows as POSIX seconds and scored rows as datetimes: both must land right."""
    import datetime

    when = datetime.datetime(2026, 11, 25, 12, 0, 0, 250000, tzinfo=datetime.UTC)
    writer = ResultsWriter(tmp_path, results_schema(), {})
    values = [None] * len(writer.column_names)
    values[writer.column_names.index("started_at")] = when.timestamp()
    writer.add_values(values)
    writer.add({"prompt_id": "b", "started_at": when})
    writer.close()
    assert [t.to_pydatetime() for t in load_results(tmp_path)["started_at"]] == [when, when]


@pytest.mark.parametrize(
    "column, value",
    [
        ("total_tokens", 2**64 - 1),
        ("prompt_tokens", -(2**70)),
        ("output", "fi\ud800ne"),
        ("attempts", 2**40),
        ("latency_s", "slow"),
    ],
)
def test_a_value_no_column_can_hold_makes_its_row_an_error_not_a_failed_flush(tmp_path, column, value):
    writer = ResultsWriter(tmp_path, results_schema(), {"run_id": "r"})
    batch = rows(4)
    batch[2][column] = value
    for row in batch:
        writer.add(row)
    writer.flush()  # never raises for a value: the other rows are kept
    assert writer.buffered == 0
    frame = load_results(writer.close()).set_index("prompt_id")
    assert list(frame.index) == ["0", "1", "2", "3"]
    bad = frame.loc["2"]
    assert bad["status"] == "error"
    assert bad[column] is None or bad[column] != bad[column]  # null (None, or NaN in a float column)
    assert f"{column}=" in bad["error"] and "cannot be stored" in bad["error"]
    assert (frame.drop(index="2")["status"] == "ok").all()


def test_a_disk_that_refuses_a_flush_keeps_the_rows_for_the_next_try(tmp_path, monkeypatch):
    import errno

    writer = ResultsWriter(tmp_path, results_schema(), {"run_id": "r"})
    for row in rows(3):
        writer.add(row)
    real = pq.write_table

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(OSError):
        writer.flush()
    assert writer.buffered == 3 and not list((tmp_path / PARTS_DIR).glob("part-*"))  # no half-written part
    monkeypatch.setattr(pq, "write_table", real)
    writer.flush()
    assert load_results(writer.close())["prompt_id"].tolist() == ["0", "1", "2"]


def test_keep_latest_per_key_does_not_collide_with_a_column_of_the_table(tmp_path):
    import pyarrow as pa

    table = pa.table(
        {
            "config_id": ["c", "c"],
            "prompt_id": ["1", "1"],
            "repeat": [0, 0],
            "__row": [7, 8],
            "__row_max": [1, 2],
            "status": ["error", "ok"],
        }
    )
    kept = keep_latest_per_key(table)
    assert kept.num_rows == 1 and kept.column("status").to_pylist() == ["ok"]
    assert kept.column("__row").to_pylist() == [8]
