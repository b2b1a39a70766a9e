"""Parquet datasets: schema checks, batched reading, limit and sharding.

Input schema: ``id`` (string or integer, unique) and either ``messages`` (list of
``{role, content}`` with roles system/user/assistant) or ``prompt`` (string) with optional
``system`` (string); optional ``reference`` (string). Any other column is carried into results.
Every problem raises ``DatasetError`` naming the file, the column and the row, before any request.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.errors import DatasetError
from sentech_eval.types import NO_EXTRA, Prompt

ROLES = ("system", "user", "assistant")
INPUT_COLUMNS = ("id", "messages", "prompt", "system", "reference")


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


def _open(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise DatasetError(f"Dataset {path} does not exist; set dataset.path to a Parquet file or pick dataset=capitals.")
    if path.is_dir():
        raise DatasetError(f"Dataset {path} is a directory; set dataset.path to one Parquet file.")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"Dataset {path} is not a readable Parquet file ({exc}); convert it with pandas.DataFrame.to_parquet."
        ) from None


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _check_schema(path: Path, schema: pa.Schema) -> str:
    names = schema.names
    if "id" not in names:
        raise _fail(path, "id", None, "missing", "add a unique string or integer id column")
    id_type = schema.field("id").type
    if not (_is_string(id_type) or pa.types.is_integer(id_type)):
        raise _fail(path, "id", None, f"has type {id_type}", "ids must be strings or integers")
    if "messages" in names:
        form = "messages"
        mtype = schema.field("messages").type
        ok = (pa.types.is_list(mtype) or pa.types.is_large_list(mtype)) and pa.types.is_struct(mtype.value_type)
        if ok:
            fields = {f.name: f.type for f in mtype.value_type}
            ok = "role" in fields and "content" in fields and _is_string(fields["role"]) and _is_string(fields["content"])
        if not ok:
            raise _fail(path, "messages", None, f"has type {mtype}", "it must be a list of {role: string, content: string}")
    elif "prompt" in names:
        form = "prompt"
        for column in ("prompt", "system"):
            if column in names and not _is_string(schema.field(column).type):
                raise _fail(path, column, None, f"has type {schema.field(column).type}", "it must be a string column")
    else:
        raise _fail(path, "messages", None, "missing (and no 'prompt' column either)",
                    "add a 'prompt' string column or a 'messages' list column")
    if "reference" in names and not (_is_string(schema.field("reference").type) or pa.types.is_null(schema.field("reference").type)):
        raise _fail(path, "reference", None, f"has type {schema.field('reference').type}", "cast it to string")
    return form


def _selected_mask(num_rows: int, start: int, limit: int | None, num_shards: int, shard_index: int) -> list[bool] | None:
    """None = every row in the batch is selected."""
    if num_shards == 1 and (limit is None or start + num_rows <= limit):
        return None
    return [
        (limit is None or i < limit) and i % num_shards == shard_index
        for i in range(start, start + num_rows)
    ]


class ParquetDataset:
    """A checked Parquet dataset, read in batches so memory does not grow with its size."""

    def __init__(self, path: str | Path, *, limit: int | None = None, num_shards: int = 1,
                 shard_index: int = 0, batch_size: int = 4096) -> None:
        self.path = Path(path)
        self.limit, self.num_shards, self.shard_index = limit, num_shards, shard_index
        self.batch_size = batch_size
        self._file = _open(self.path)
        schema = self._file.schema_arrow
        self.form = _check_schema(self.path, schema)
        self.extra_fields = tuple(f for f in schema if f.name not in INPUT_COLUMNS)
        self._validate_rows()

    def info(self) -> DatasetInfo:
        """Row count after limit and sharding, the input form and the carried-over fields."""
        return DatasetInfo(self.path, self._selected_rows, self.form, self.extra_fields)

    def _batches(self, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        start = 0
        for batch in self._file.iter_batches(batch_size=self.batch_size, columns=columns):
            if self.limit is not None and start >= self.limit:
                return
            yield start, batch
            start += batch.num_rows

    def _validate_rows(self) -> None:
        """Vectorised checks over every selected row: non-empty, unique ids, roles, contents."""
        if self._file.metadata.num_rows == 0:
            raise DatasetError(f"Dataset {self.path} has no rows; add at least one prompt.")
        id_chunks = []
        text_columns = ["messages"] if self.form == "messages" else ["prompt"] + (
            ["system"] if "system" in self._file.schema_arrow.names else [])
        pool = pa.default_memory_pool()
        for number, (start, batch) in enumerate(self._batches(["id"] + text_columns)):
            if number % 16 == 15:
                pool.release_unused()  # decoded pages add up in the allocator: ~40 MB less peak at 1M rows
            mask = _selected_mask(batch.num_rows, start, self.limit, 1, 0)
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
        n = len(all_ids)
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
        seen: set = set()
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
            raise _fail(self.path, "messages", start + parents[i].as_py(),
                        f"has role {roles[i].as_py()!r}", "roles must be system, user or assistant")
        empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(contents)), 0), True)
        if pc.any(empty).as_py():
            i = pc.index(empty, True).as_py()
            raise _fail(self.path, "messages", start + parents[i].as_py(), "has a message with empty content",
                        "every message needs text")

    def __iter__(self) -> Iterator[Prompt]:
        """The selected rows as Prompts, in file order."""
        return self.iter_prompts()

    def iter_prompts(self) -> Iterator[Prompt]:
        """The selected rows as Prompts, read batch by batch."""
        for batch_prompts in self.iter_prompt_batches():
            yield from batch_prompts

    def iter_prompt_batches(self) -> Iterator[list[Prompt]]:
        """Lists of Prompts, one per Parquet batch (the unit the runner reads ahead)."""
        extra_names = [f.name for f in self.extra_fields]
        for start, batch in self._batches(None):  # type: ignore[arg-type]
            mask = _selected_mask(batch.num_rows, start, self.limit, self.num_shards, self.shard_index)
            if mask is not None:
                batch = batch.filter(pa.array(mask))
            if batch.num_rows == 0:
                continue
            cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
            ids = cols["id"]
            refs = cols.get("reference") or itertools.repeat(None)
            if self.form == "messages":
                message_lists = [tuple({"role": m["role"], "content": m["content"]} for m in ms) for ms in cols["messages"]]
            elif "system" in cols:
                message_lists = [({"role": "system", "content": system}, {"role": "user", "content": text}) if system
                                 else ({"role": "user", "content": text},)
                                 for system, text in zip(cols["system"], cols["prompt"])]
            else:
                message_lists = [({"role": "user", "content": text},) for text in cols["prompt"]]
            extras: Iterable[Any] = itertools.repeat(NO_EXTRA)
            if extra_names:
                extras = [dict(zip(extra_names, values)) for values in zip(*(cols[name] for name in extra_names))]
            yield list(map(Prompt, ids, message_lists, refs, extras))
