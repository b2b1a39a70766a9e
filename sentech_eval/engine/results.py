"""The results table: its Parquet schema, the incremental writer, and ``load_results``.

A run dir holds ``results.parquet``. While a run is going, rows are flushed as small complete
Parquet files under ``results.parts/`` (so a crash, even ``kill -9``, loses at most the rows not
yet flushed); when the run ends they are merged, batch by batch, into ``results.parquet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.errors import ResultsError

if TYPE_CHECKING:
    import pandas as pd

RESULTS_FILE = "results.parquet"
PARTS_DIR = "results.parts"
ROW_GROUP_ROWS = 65536
METADATA_KEY = b"sentech_eval"
Keep = Callable[[pa.Table], pa.Table]  # a filter of the merged table (resume keeps one row per key)

CORE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string()),
    pa.field("config_id", pa.string()),
    pa.field("backend", pa.string()),
    pa.field("model", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("prompt_id", pa.string()),
    pa.field("repeat", pa.int32()),
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("top_k", pa.int64()),
    pa.field("frequency_penalty", pa.float64()),
    pa.field("presence_penalty", pa.float64()),
    pa.field("max_tokens", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("output", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("response_model", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("latency_s", pa.float64()),
    pa.field("ttft_s", pa.float64()),
    pa.field("status", pa.string()),
    pa.field("http_status", pa.int32()),
    pa.field("error", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("queue_s", pa.float64()),
    pa.field("tpot_s", pa.float64()),
    pa.field("itl_s", pa.list_(pa.float64())),
    pa.field("usage_source", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("reference", pa.string()),
)
CORE_NAMES = tuple(f.name for f in CORE_FIELDS)
KEY_COLUMNS = ("config_id", "prompt_id", "repeat")
# score_* columns that are facts about a scorer (details, the judge's cost, code_exec's sandbox and
# times), not a quality score.
SCORE_AUX_SUFFIXES = (
    "_detail",
    "_latency_s",
    "_prompt_tokens",
    "_completion_tokens",
    "_sandbox",
    "_cpu_s",
    "_wall_s",
    "_cpu_limit_s",
)


def is_quality_score(column: str) -> bool:
    """True for ``score_<name>`` columns that hold a score (not a detail or a judge's latency/tokens)."""
    return column.startswith("score_") and not column.endswith(SCORE_AUX_SUFFIXES)


def results_schema(extra_fields: Iterable[pa.Field] = (), score_fields: Iterable[pa.Field] = ()) -> pa.Schema:
    """Core columns, then the dataset's carried-over columns, then scorer columns."""
    fields = list(CORE_FIELDS)
    taken = set(CORE_NAMES)
    for field in list(extra_fields) + list(score_fields):
        if field.name not in taken:
            fields.append(field)
            taken.add(field.name)
    return pa.schema(fields)


def _to_micros(value: Any) -> int | None:
    """A timestamp as UTC microseconds: POSIX seconds (float) or an aware datetime."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return round(value * 1_000_000)
    return round(value.timestamp() * 1_000_000)


def _timestamp_column(values: tuple[Any, ...], type_: pa.DataType) -> pa.Array:
    """A timestamp column from POSIX seconds (the runner's rows: converted in one vectorised step)
    or, when a flush mixes in datetimes (scored rows), value by value."""
    try:
        seconds = pa.array(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_to_micros(v) for v in values], pa.int64()).cast(type_)
    return pc.round(pc.multiply(seconds, 1_000_000)).cast(pa.int64()).cast(type_)


class ResultsWriter:
    """Buffers rows and flushes them as Parquet part files; ``close()`` merges into results.parquet."""

    def __init__(self, run_dir: str | Path, schema: pa.Schema, metadata: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.parts_dir = self.run_dir / PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})
        self._rows: list[list[Any]] = []
        self._names = tuple(self.schema.names)
        self._status_index = self._names.index("status") if "status" in self._names else None
        self._error_index = self._names.index("error") if "error" in self._names else None
        # pyarrow imports pandas on its first Python-to-Arrow conversion (~0.2 s): pay that here,
        # before the first request, instead of as a stall at the first flush in the middle of a run.
        pa.array([""], pa.string())
        self.rows_written = 0
        for leftover in self.parts_dir.glob("part-*.tmp"):  # a flush cut short by a crash
            leftover.unlink(missing_ok=True)
        existing = sorted(self.parts_dir.glob("part-*.parquet"))
        self._next_part = (int(existing[-1].stem.split("-")[1]) + 1) if existing else 0

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns, in the order ``add_values`` expects them."""
        return self._names

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row given as a dict (missing columns become null)."""
        get = row.get
        self._rows.append([get(name) for name in self._names])

    def add_values(self, values: list[Any]) -> None:
        """Buffer one row given as values in ``column_names`` order (the runner's fast path).

        ``started_at`` may be a POSIX timestamp (float seconds); it is converted at flush time.
        """
        self._rows.append(values)

    @property
    def buffered(self) -> int:
        """Rows waiting to be flushed."""
        return len(self._rows)

    def _column(self, field: pa.Field, values: tuple[Any, ...]) -> pa.Array:
        if pa.types.is_timestamp(field.type):
            return _timestamp_column(values, field.type)
        return pa.array(values, field.type)

    def _batch(self, rows: list[list[Any]]) -> pa.RecordBatch:
        columns = list(zip(*rows))  # one pass: rows -> columns
        arrays = [self._column(field, column) for field, column in zip(self.schema, columns)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _storable(self, row: list[Any]) -> list[Any]:
        """``row`` with every value its column cannot hold (an int beyond int64, a bad string) set to null;
        the row becomes an error saying which value and why, so the rest of the flush is kept."""
        row = list(row)
        problems = []
        for index, field in enumerate(self.schema):
            value = row[index]
            if value is None:
                continue
            try:
                self._column(field, (value,))
            except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError) as exc:
                shown = repr(value)
                shown = shown if len(shown) <= 60 else shown[:60] + "…"
                problems.append(f"{field.name}={shown} cannot be stored as {field.type} ({type(exc).__name__})")
                row[index] = None
        if problems and self._status_index is not None:
            row[self._status_index] = "error"
            if self._error_index is not None:
                previous = row[self._error_index]
                row[self._error_index] = "; ".join(([previous] if previous else []) + problems)
        return row

    def flush(self) -> None:
        """Write the buffered rows as one complete part file (atomic rename).

        A value no column can hold makes its row an error (never a failed flush). If the disk refuses
        the write (full, read-only), the rows stay buffered for one more try at ``close`` and OSError is raised.
        """
        rows = self._rows
        if not rows:
            return
        self._rows = []
        try:
            batch = self._batch(rows)
        except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError):
            batch = self._batch([self._storable(row) for row in rows])
        final = self.parts_dir / f"part-{self._next_part:06d}.parquet"
        tmp = final.with_suffix(".tmp")
        try:
            # Parts are short-lived (merged at close): no dictionary pages or statistics to compute.
            pq.write_table(pa.Table.from_batches([batch]), tmp, use_dictionary=False, write_statistics=False)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._rows = rows + self._rows
            raise
        self._next_part += 1
        self.rows_written += len(rows)

    def close(self, keep: Keep | None = None) -> Path:
        """Flush, then merge results.parquet and every part into a new results.parquet.

        ``keep`` optionally filters the merged table (resume uses it to keep one row per key).
        """
        self.flush()
        return merge_parts(self.run_dir, self.schema, keep=keep)


def _readable_parts(run_dir: Path) -> list[Path]:
    files = []
    if (run_dir / RESULTS_FILE).exists():
        files.append(run_dir / RESULTS_FILE)
    files.extend(sorted((run_dir / PARTS_DIR).glob("part-*.parquet")))
    return files


def merge_parts(run_dir: Path, schema: pa.Schema, keep: Keep | None = None) -> Path:
    """Combine results.parquet and results.parts/* into results.parquet, then remove the parts."""
    files = _readable_parts(run_dir)
    target = run_dir / RESULTS_FILE
    tmp = run_dir / (RESULTS_FILE + ".tmp")
    try:
        _write_merged(files, tmp, schema, keep)
        os.replace(tmp, target)
    except BaseException:  # a full disk, Ctrl-C: the parts are untouched; a later merge starts over
        tmp.unlink(missing_ok=True)
        raise
    parts = run_dir / PARTS_DIR
    for f in parts.glob("part-*.parquet"):
        f.unlink()
    if parts.exists():
        try:
            parts.rmdir()
        except OSError:
            pass
    return target


def _write_merged(files: list[Path], tmp: Path, schema: pa.Schema, keep: Keep | None) -> None:
    if keep is not None:
        table = pa.concat_tables([_conform(read_parquet(f), schema) for f in files]) if files else schema.empty_table()
        table = keep(table)
        pq.write_table(table.replace_schema_metadata(schema.metadata), tmp)
    else:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending: list[pa.Table] = []
            pending_rows = 0
            for f in files:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP_ROWS):
                    pending.append(_conform(pa.Table.from_batches([batch]), schema))
                    pending_rows += batch.num_rows
                    if pending_rows >= ROW_GROUP_ROWS:  # one row group per ~64k rows, not per flush
                        writer.write_table(pa.concat_tables(pending))
                        pending, pending_rows = [], 0
            if pending or not files:
                writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to ``schema`` (adding null columns it lacks), keeping only schema columns."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table (``pq.ParquetFile``: unlike ``pq.read_table`` it does not import
    pyarrow.dataset, which a run does not otherwise need). A file that is not Parquet, or is cut short,
    is a ResultsError naming it (the file is left as it is)."""
    try:
        with pq.ParquetFile(path) as file:
            return file.read(columns=columns)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ResultsError(unreadable_message(Path(path), exc)) from None


def unreadable_message(path: Path, exc: BaseException) -> str:
    """One sentence for a results file that cannot be read: what it is, that it is kept, what to do."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return (
        f"{path} is not a readable Parquet file ({reason[:200]}); it is left untouched — move it away (or restore "
        "it from a copy), or write into another directory."
    )


def concat_results(tables: list[pa.Table], paths: list[Path]) -> pa.Table:
    """Rows of several results files as one table. A column whose type differs between them is read as text
    in every file when it is one of the data's own (a dataset column, a scorer's detail); a core column that
    differs is a ResultsError naming it and the files."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    types: dict[str, dict[str, list[Path]]] = {}
    for table, path in zip(tables, paths, strict=True):
        for field in table.schema:
            types.setdefault(field.name, {}).setdefault(str(field.type), []).append(path)
    disagree = {name: by_type for name, by_type in types.items() if len(by_type) > 1}
    core = [name for name in disagree if name in CORE_NAMES]
    if core:
        (type_a, files_a), (type_b, files_b) = list(disagree[core[0]].items())[:2]
        raise ResultsError(
            f"Column {core[0]!r} is {type_a} in {files_a[0]} but {type_b} in {files_b[0]}; these results were "
            "written by different versions and cannot be read as one table — report them one at a time."
        )
    as_text = []
    for table in tables:
        for name in disagree:
            index = table.schema.get_field_index(name)
            if index >= 0:
                table = table.set_column(index, pa.field(name, pa.large_string()), _as_text(table.column(name)))
        as_text.append(table)
    return pa.concat_tables(as_text, promote_options="permissive")


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return column.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array(
            [pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.large_string())]
        )


def read_run_table(run_dir: str | Path) -> pa.Table | None:
    """Every row of one run dir (merged file plus unmerged parts), or None if it has none."""
    files = _readable_parts(Path(run_dir))
    if not files:
        return None
    table = concat_results([read_parquet(f) for f in files], files)
    if len(files) > 1 and files[0].name == RESULTS_FILE:
        # A crash between writing the merged file and deleting the parts leaves rows twice.
        table = keep_latest_per_key(table)
    return table


RESUME_COLUMNS = ("config_id", "prompt_id", "repeat", "status")


def check_resumable(table: pa.Table, run_dir: Path) -> None:
    """A run dir's earlier rows must be sentech-eval's own to be resumed (a foreign file is left untouched)."""
    missing = [name for name in RESUME_COLUMNS if name not in table.column_names]
    if missing:
        raise ResultsError(
            f"{run_dir / RESULTS_FILE} was not written by sentech-eval (it has no {', '.join(map(repr, missing))} "
            "column); it is left untouched — move it away, or choose another hydra.run.dir."
        )


def resume_schema(schema: pa.Schema, previous: pa.Table | None, run_dir: Path) -> pa.Schema:
    """The schema of a resumed run: this run's columns, plus every column of the earlier rows it lacks (score
    columns of other scorers, extra dataset columns: kept, null in the new rows). A column whose earlier values
    cannot be stored as this run's type (a dataset column that changed type) is a ResultsError naming it."""
    if previous is None:
        return schema
    for field in schema:
        index = previous.schema.get_field_index(field.name)
        if index < 0 or previous.schema.field(index).type == field.type:
            continue
        try:
            previous.column(index).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ResultsError(
                f"Column {field.name!r} of the earlier rows in {run_dir / RESULTS_FILE} is "
                f"{previous.schema.field(index).type}, and this run makes it {field.type} (the dataset or a scorer "
                "changed); the earlier rows cannot be merged with the new ones — resume with the same dataset, or "
                "choose another hydra.run.dir."
            ) from None
    for field in previous.schema:
        if field.name not in schema.names:
            schema = schema.append(field.remove_metadata() if field.metadata else field)
    return schema


def keep_latest_per_key(table: pa.Table) -> pa.Table:
    """One row per (config_id, prompt_id, repeat): the last one written wins (a retry beats its error)."""
    if table.num_rows == 0:
        return table
    position = "__row"
    while position in table.column_names or f"{position}_max" in table.column_names:
        position += "_"  # never collide with a column of the table
    indexed = table.select(list(KEY_COLUMNS)).append_column(position, pa.array(range(table.num_rows), pa.int64()))
    latest = indexed.group_by(list(KEY_COLUMNS)).aggregate([(position, "max")])
    order = pc.sort_indices(latest.column(f"{position}_max"))
    return table.take(pc.take(latest.column(f"{position}_max"), order))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``sentech_eval`` key-value metadata of a results file ({} for a file without it, or whose metadata
    is not JSON); a file that is not Parquet is a ResultsError naming it."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ResultsError(unreadable_message(Path(path), exc)) from None
    raw = meta.get(METADATA_KEY)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _find_result_files(root: Path) -> list[Path]:
    found = sorted(p for p in root.rglob(RESULTS_FILE) if PARTS_DIR not in p.parts)
    # A sweep dir's combined results.parquet already holds its jobs' rows: skip the nested ones.
    dirs = {p.parent for p in found}
    return [p for p in found if not any(a in dirs for a in p.parent.parents)]


def load_results(path: str | Path) -> pd.DataFrame:
    """One DataFrame from a results file, a run dir (with results.parquet) or a directory of runs."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"Results path {path} does not exist; pass a results.parquet file or a run/sweep dir.")
    if path.is_file():
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ResultsError(f"Results file {path} is not readable Parquet ({exc}).") from None
    if (path / RESULTS_FILE).exists() or (path / PARTS_DIR).exists():
        table = read_run_table(path)
        if table is None:
            import pandas as pd  # imported here: `sentech-eval run` starts faster without pandas

            return pd.DataFrame(columns=list(CORE_NAMES))
        return table.to_pandas()
    files = _find_result_files(path)
    if not files:
        raise ResultsError(f"No {RESULTS_FILE} found under {path}; point at a run dir or a results file.")
    return concat_results([read_parquet(f) for f in files], files).to_pandas()
