"""Datasets: Parquet, JSON Lines or CSV; schema checks, batched reading, limit and sharding.

Input schema: ``id`` (string or integer, unique) and either ``messages`` (list of
``{role, content}`` with roles system/user/assistant) or ``prompt`` (string) with optional
``system`` (string); optional ``reference`` (string). Any other column is carried into results.
``columns`` maps these names to the file's own (``{"prompt": "question", "reference": "answer"}``),
so a file need not be renamed. Parquet is read in batches; JSON Lines (``.jsonl``, ``.ndjson``,
``.json``) and CSV (``.csv``, ``.tsv``) are read whole by pyarrow.
Every problem raises ``DatasetError`` naming the file, the column and the row, before any request.

With ``shuffle_seed`` the rows are taken in a seeded random order (``numpy.random.default_rng(seed)
.permutation``) and ``limit`` takes the first N of that order, so a larger limit extends a smaller
one (a race's rounds, an early-stopped run). The file is then read once per window of 65,536
selected rows, so memory still does not grow with the dataset.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.config import DatasetConfig
from sentech_eval.engine.results import CORE_NAMES
from sentech_eval.errors import DatasetError
from sentech_eval.types import NO_EXTRA, Prompt

ROLES = ("system", "user", "assistant")
SHUFFLE_WINDOW = 65_536  # selected rows gathered per pass over the file when shuffling
INPUT_COLUMNS = ("id", "messages", "prompt", "system", "reference")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
TEXT_COLUMNS = ("prompt", "system", "reference")  # read as strings from CSV/JSON even when they look numeric
# Names a carried-over column may not have: the results' own columns, the sweep's, score columns
# and internal names (``__…``). Refused up front: a collision would make a run dir unreadable.
RESERVED_PREFIXES = ("__", "score_")
SWEEP_COLUMNS = ("job", "overrides")


@dataclass(frozen=True)
class DatasetInfo:
    """What the runner needs to know about a dataset before reading it."""

    path: Path
    num_rows: int  # rows selected (after limit and sharding)
    form: str  # "messages" | "prompt"
    extra_fields: tuple[pa.Field, ...]  # carried-over columns, in file order


def _fail(path: Path, column: str, row: int | None, problem: str, fix: str = "") -> DatasetError:
    where = f"row {row}" if row is not None else "the schema"
    tail = f"; {fix}" if fix else ""
    return DatasetError(f"Dataset {path}: column '{column}', {where}: {problem}{tail}.")


class _TableFile:
    """An in-memory table with the parts of ``pq.ParquetFile`` the dataset uses."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self.schema_arrow = table.schema
        self.metadata = SimpleNamespace(num_rows=table.num_rows)

    def iter_batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        table = self._table.select(columns) if columns else self._table
        return iter(table.to_batches(max_chunksize=batch_size))


class _DecodedFile:
    """A file whose dictionary-encoded columns (a pandas ``category``) are read as their plain values."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.schema_arrow = pa.schema(
            [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in file.schema_arrow]
        )
        self.metadata = file.metadata

    def iter_batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for batch in self._file.iter_batches(batch_size=batch_size, columns=columns):
            yield pa.RecordBatch.from_arrays(
                [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns],
                names=batch.schema.names,
            )


class _MappedFile:
    """A file whose columns are seen under the dataset's names (``columns``: ours -> the file's)."""

    def __init__(self, file: Any, columns: dict[str, str]) -> None:
        self._file = file
        self._theirs = columns
        ours_of = {theirs: ours for ours, theirs in columns.items()}
        shadowed = set(columns) - set(columns.values())  # a file column named like a mapped target is hidden
        fields = [
            f.with_name(ours_of.get(f.name, f.name))
            for f in file.schema_arrow
            if f.name in ours_of or f.name not in shadowed
        ]
        self.schema_arrow = pa.schema(fields)
        self.metadata = file.metadata

    def iter_batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        names = columns if columns is not None else self.schema_arrow.names
        theirs = [self._theirs.get(name, name) for name in names]
        for batch in self._file.iter_batches(batch_size=batch_size, columns=theirs):
            yield pa.RecordBatch.from_arrays(batch.columns, names=list(names))


def _read_text_table(path: Path, columns: dict[str, str]) -> pa.Table:
    """A JSON Lines or CSV file as a table, its prompt/system/reference columns as strings."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    text = {columns.get(name, name) for name in TEXT_COLUMNS}
    is_csv = path.suffix.lower() in CSV_SUFFIXES
    kind = "CSV" if is_csv else "JSON Lines (one JSON object per line)"
    try:
        if is_csv:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in text}),
            )
        else:
            table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"Dataset {path} is not valid {kind} ({' '.join(str(exc).split())}); fix the file or convert it to Parquet."
        ) from None
    for i, field in enumerate(table.schema):
        if field.name in text and (
            pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type)
        ):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.string()))
    return table


def _check_columns(path: Path, file: Any, columns: dict[str, str]) -> None:
    names = file.schema_arrow.names
    for ours, theirs in columns.items():
        if ours not in INPUT_COLUMNS:
            raise DatasetError(
                f"dataset.columns.{ours} is not a dataset column; map one of: {', '.join(INPUT_COLUMNS)} "
                f"(e.g. dataset.columns.prompt=question)."
            )
        if theirs not in names:
            raise DatasetError(
                f"Dataset {path}: dataset.columns.{ours}={theirs!r} names no column of the file; "
                f"its columns are: {', '.join(names)}."
            )


def _open(path: Path, columns: dict[str, str] | None = None) -> Any:
    """The file as a ``pq.ParquetFile`` (or a stand-in with the same parts), columns mapped."""
    columns = dict(columns or {})
    if not path.exists():
        raise DatasetError(
            f"Dataset {path} does not exist; set dataset.path to a Parquet, JSON Lines or CSV file "
            "or pick dataset=capitals."
        )
    if path.is_dir():
        raise DatasetError(f"Dataset {path} is a directory; set dataset.path to one Parquet, JSON Lines or CSV file.")
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES or suffix in CSV_SUFFIXES:
        file: Any = _TableFile(_read_text_table(path, columns))
    else:
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(
                f"Dataset {path} is not a readable Parquet file ({exc}); give a .parquet, .jsonl or .csv file "
                "(the suffix picks the reader)."
            ) from None
        if any(pa.types.is_dictionary(f.type) for f in file.schema_arrow):
            file = _DecodedFile(file)  # a pandas category column: its values are what counts
    _check_columns(path, file, columns)
    return _MappedFile(file, columns) if columns else file


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _check_schema(path: Path, schema: pa.Schema) -> str:
    names = schema.names
    if "id" not in names:
        raise _fail(
            path,
            "id",
            None,
            "missing",
            "add a unique string or integer id column, or name yours with dataset.columns.id=NAME",
        )
    id_type = schema.field("id").type
    if not (_is_string(id_type) or pa.types.is_integer(id_type)):
        raise _fail(path, "id", None, f"has type {id_type}", "ids must be strings or integers")
    if "messages" in names:
        form = "messages"
        mtype = schema.field("messages").type
        ok = (pa.types.is_list(mtype) or pa.types.is_large_list(mtype)) and pa.types.is_struct(mtype.value_type)
        if ok:
            fields = {f.name: f.type for f in mtype.value_type}
            ok = (
                "role" in fields
                and "content" in fields
                and _is_string(fields["role"])
                and _is_string(fields["content"])
            )
        if not ok:
            raise _fail(
                path, "messages", None, f"has type {mtype}", "it must be a list of {role: string, content: string}"
            )
    elif "prompt" in names:
        form = "prompt"
        for column in ("prompt", "system"):
            if column in names and not _is_string(schema.field(column).type):
                raise _fail(path, column, None, f"has type {schema.field(column).type}", "it must be a string column")
    else:
        raise _fail(
            path,
            "messages",
            None,
            "missing (and no 'prompt' column either)",
            "add a 'prompt' string column or a 'messages' list column, or name yours with dataset.columns.prompt=NAME",
        )
    if "reference" in names and not (
        _is_string(schema.field("reference").type) or pa.types.is_null(schema.field("reference").type)
    ):
        raise _fail(path, "reference", None, f"has type {schema.field('reference').type}", "cast it to string")
    return form


def _selected_mask(
    num_rows: int, start: int, limit: int | None, num_shards: int, shard_index: int
) -> list[bool] | None:
    """None = every row in the batch is selected."""
    if num_shards == 1 and (limit is None or start + num_rows <= limit):
        return None
    return [(limit is None or i < limit) and i % num_shards == shard_index for i in range(start, start + num_rows)]


def open_dataset(spec: DatasetConfig) -> Dataset:
    """The dataset a job's spec describes (file, column mapping, limit, shard, order): the one way
    ``run``, ``run --estimate`` and a race open theirs."""
    return Dataset(
        str(spec.path),
        limit=spec.limit,
        num_shards=spec.num_shards,
        shard_index=spec.shard_index,
        batch_size=spec.batch_size,
        columns={k: v for k, v in (spec.columns or {}).items() if v is not None} or None,
        shuffle_seed=spec.shuffle_seed,
    )


class Dataset:
    """A checked dataset file: Parquet (read in batches so memory does not grow with its size), JSON
    Lines or CSV (read whole); ``columns`` maps the dataset's column names to the file's."""

    def __init__(
        self,
        path: str | Path,
        *,
        limit: int | None = None,
        num_shards: int = 1,
        shard_index: int = 0,
        batch_size: int = 4096,
        columns: dict[str, str] | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.limit, self.num_shards, self.shard_index = limit, num_shards, shard_index
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self._file = _open(self.path, columns)
        schema = self._file.schema_arrow
        self.form = _check_schema(self.path, schema)
        self.extra_fields = tuple(f for f in schema if f.name not in INPUT_COLUMNS)
        for f in self.extra_fields:
            if f.name in CORE_NAMES or f.name in SWEEP_COLUMNS or f.name.startswith(RESERVED_PREFIXES):
                raise _fail(
                    self.path,
                    f.name,
                    None,
                    "the name is reserved (a results column has it)",
                    f"rename the column (e.g. to 'data_{f.name.lstrip('_')}')",
                )
        self._validate_rows()

    def info(self) -> DatasetInfo:
        """Row count after limit and sharding, the input form and the carried-over fields."""
        return DatasetInfo(self.path, self._selected_rows, self.form, self.extra_fields)

    def _guarded(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Batches of the file; corrupt pages behind an intact footer become one DatasetError sentence."""
        start = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DatasetError(
                    f"Dataset {self.path} is corrupt after row {start} ({reason}); write the file again "
                    "(e.g. pandas.DataFrame.to_parquet) or restore it from a copy."
                ) from None
            start += batch.num_rows
            yield batch

    def _batches(self, columns: list[str] | None, *, whole: bool = False) -> Iterator[tuple[int, pa.RecordBatch]]:
        start = 0
        for batch in self._guarded(self._file.iter_batches(batch_size=self.batch_size, columns=columns)):
            if not whole and self.shuffle_seed is None and self.limit is not None and start >= self.limit:
                return
            yield start, batch
            start += batch.num_rows

    def _validate_rows(self) -> None:
        """Vectorised checks over every selected row: non-empty, unique ids, roles, contents."""
        if self._file.metadata.num_rows == 0:
            raise DatasetError(f"Dataset {self.path} has no rows; add at least one prompt.")
        id_chunks = []
        pool = pa.default_memory_pool()
        # Every column is read once here (not only the checked ones), so corrupt pages anywhere stop the
        # run before its first request rather than in the middle of it.
        for number, (start, batch) in enumerate(self._batches(None)):
            if number % 16 == 15:
                pool.release_unused()  # decoded pages add up in the allocator: ~40 MB less peak at 1M rows
            mask = None if self.shuffle_seed is not None else _selected_mask(batch.num_rows, start, self.limit, 1, 0)
            if mask is not None:
                batch = batch.filter(pa.array(mask))
            ids = batch.column("id")
            if ids.null_count:
                row = start + pc.index(pc.is_null(ids), True).as_py()
                raise _fail(self.path, "id", row, "is null", "every row needs an id")
            id_chunks.append(ids)
            if self.form == "prompt":
                self._check_text(batch.column("prompt"), "prompt", start, required=True)
                if "system" in batch.schema.names:
                    self._check_text(batch.column("system"), "system", start, required=False)
            else:
                self._check_messages(batch.column("messages"), start)
        all_ids = pa.chunked_array(id_chunks).combine_chunks()
        self._check_unique(all_ids)
        n = len(all_ids) if self.limit is None else min(len(all_ids), self.limit)
        self._selected_rows = len(range(self.shard_index, n, self.num_shards))

    def _check_unique(self, ids: pa.Array) -> None:
        # Sort-based: neighbours are equal only for duplicates. Half the memory of hashing every id.
        ordered = ids.take(pc.sort_indices(ids))
        n = len(ordered)
        if n < 2 or not pc.any(pc.equal(ordered.slice(1), ordered.slice(0, n - 1))).as_py():
            return
        counts = pc.value_counts(ids)
        duplicated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        rows = pc.indices_nonzero(pc.is_in(ids, value_set=duplicated)).to_pylist()
        seen: set[Any] = set()
        for row in rows:
            value = ids[row].as_py()
            if value in seen:
                raise _fail(self.path, "id", row, f"duplicate id {value!r}", "ids must be unique")
            seen.add(value)

    def _check_text(self, column: pa.Array, name: str, start: int, *, required: bool) -> None:
        bad = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        if required:
            bad = pc.or_kleene(bad, pc.is_null(column))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            row = start + pc.index(bad, True).as_py()
            raise _fail(self.path, name, row, "is empty", "every prompt needs text")

    def _check_messages(self, column: pa.Array, start: int) -> None:
        if column.null_count:
            row = start + pc.index(pc.is_null(column), True).as_py()
            raise _fail(self.path, "messages", row, "is null", "give each row at least one message")
        lengths = pc.list_value_length(column)
        if pc.any(pc.equal(lengths, 0)).as_py():
            row = start + pc.index(pc.equal(lengths, 0), True).as_py()
            raise _fail(self.path, "messages", row, "is an empty list", "give each row at least one message")
        flat = pc.list_flatten(column)
        parents = pc.list_parent_indices(column)
        roles, contents = flat.field("role"), flat.field("content")
        bad_role = pc.invert(pc.fill_null(pc.is_in(roles, value_set=pa.array(ROLES)), False))
        if pc.any(bad_role).as_py():
            i = pc.index(bad_role, True).as_py()
            raise _fail(
                self.path,
                "messages",
                start + parents[i].as_py(),
                f"has role {roles[i].as_py()!r}",
                "roles must be system, user or assistant",
            )
        empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(contents)), 0), True)
        if pc.any(empty).as_py():
            i = pc.index(empty, True).as_py()
            raise _fail(
                self.path,
                "messages",
                start + parents[i].as_py(),
                "has a message with empty content",
                "every message needs text",
            )

    def __iter__(self) -> Iterator[Prompt]:
        """The selected rows as Prompts, in file order."""
        return self.iter_prompts()

    def iter_prompts(self) -> Iterator[Prompt]:
        """The selected rows as Prompts, read batch by batch."""
        for batch_prompts in self.iter_prompt_batches():
            yield from batch_prompts

    def shuffled_rows(self) -> np.ndarray:
        """File row numbers of the selected rows in the seeded order (limit and shard applied)."""
        total = self._file.metadata.num_rows
        order = np.random.default_rng(self.shuffle_seed).permutation(total)
        if self.limit is not None:
            order = order[: self.limit]
        return order[self.shard_index :: self.num_shards]

    def prompt_ids(self) -> list[Any]:
        """The ids of the selected rows, in the order the prompts are sent."""
        if self.shuffle_seed is None:
            return [p.id for batch in self.iter_prompt_batches() for p in batch]
        ids = pa.chunked_array([b.column("id") for _, b in self._batches(["id"], whole=True)]).combine_chunks()
        return ids.take(pa.array(self.shuffled_rows())).to_pylist()

    def iter_prompt_batches(self) -> Iterator[list[Prompt]]:
        """Lists of Prompts, one per Parquet batch (the unit the runner reads ahead); shuffled if asked."""
        if self.shuffle_seed is not None:
            yield from self._shuffled_batches()
            return
        for start, batch in self._batches(None):
            mask = _selected_mask(batch.num_rows, start, self.limit, self.num_shards, self.shard_index)
            if mask is not None:
                batch = batch.filter(pa.array(mask))
            if batch.num_rows == 0:
                continue
            yield self._prompts(batch)

    def _shuffled_batches(self) -> Iterator[list[Prompt]]:
        """The selected rows in the seeded order: one pass over the file per window of rows."""
        rows = self.shuffled_rows()
        for first in range(0, rows.size, SHUFFLE_WINDOW):
            window = rows[first : first + SHUFFLE_WINDOW]
            wanted = np.sort(window)
            pieces: list[pa.RecordBatch] = []
            for start, batch in self._batches(None, whole=True):
                lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
                if hi > lo:
                    pieces.append(batch.take(pa.array(wanted[lo:hi] - start)))
            table = pa.Table.from_batches(pieces)
            # table holds the window's rows in file order; put them in the seeded order
            ordered = table.take(pa.array(np.searchsorted(wanted, window)))
            for batch in ordered.to_batches(max_chunksize=self.batch_size):
                yield self._prompts(batch)

    def _prompts(self, batch: pa.RecordBatch) -> list[Prompt]:
        """One batch of rows as Prompts."""
        extra_names = [f.name for f in self.extra_fields]
        cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        ids = cols["id"]
        refs = cols.get("reference") or itertools.repeat(None)
        if self.form == "messages":
            message_lists = [tuple({"role": m["role"], "content": m["content"]} for m in ms) for ms in cols["messages"]]
        elif "system" in cols:
            message_lists = [
                ({"role": "system", "content": system}, {"role": "user", "content": text})
                if system
                else ({"role": "user", "content": text},)
                for system, text in zip(cols["system"], cols["prompt"])
            ]
        else:
            message_lists = [({"role": "user", "content": text},) for text in cols["prompt"]]
        extras: Iterable[Any] = itertools.repeat(NO_EXTRA)
        if extra_names:
            extras = [dict(zip(extra_names, values)) for values in zip(*(cols[name] for name in extra_names))]
        return list(map(Prompt, ids, message_lists, refs, extras))
