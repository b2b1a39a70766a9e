"""A run's rows, a page at a time: filters and paging over Parquet row groups, in the server process.

``RowTable`` opens a run's files (``results.parquet`` and any ``results.parts/`` files; a damaged one
is reported and skipped) and numbers their rows 0, 1, … across files. A filter reads only the columns
it needs, one row group at a time, with ``pyarrow.compute``; its matching row numbers are kept (a few
MB for a million rows) so a page turn reads only the row groups of the rows shown, and only the
columns shown. No request reads a whole table into pandas.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.view import memory

SEARCH_COLUMNS = ("prompt_id", "prompt", "output", "reference", "error")
# Searched as Parquet's dictionary (their distinct values, then a lookup): columns that repeat a few values
# over many rows. Outputs differ row by row, so their dictionary would only cost an extra decode.
DICTIONARY_SEARCH_COLUMNS = ("prompt_id", "prompt", "reference", "error")
SAMPLING_COLUMNS = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "max_tokens")
TEXT_PREVIEW = 160
MASK_CACHE = 8
READ_BATCH_ROWS = 2048  # a page or a row view decodes the row group this many rows at a time
SCAN_THREADS = max(1, min(4, os.cpu_count() or 1))  # a filter scans row groups in parallel (Arrow releases the GIL)


@dataclass(frozen=True)
class RowFilter:
    """What the rows table is narrowed to; every field optional."""

    status: str = ""  # "ok" or "error"
    score: str = ""  # a score column, with ``outcome``
    outcome: str = ""  # "pass" (== 1), "fail" (< 1) or "missing" (null)
    repeat: int | None = None
    config_id: str = ""
    sampling: tuple[tuple[str, float], ...] = ()  # (column, value) pairs
    text: str = ""  # case-insensitive substring of prompt_id, prompt, output, reference or error

    @property
    def active(self) -> bool:
        return bool(self.status or (self.score and self.outcome) or self.repeat is not None or self.config_id) or bool(
            self.sampling or self.text
        )


@dataclass
class Scan:
    """How far a filter has got: the matching row numbers found, the next row group to read."""

    found: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    next_group: int = 0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class RowGroupRef:
    file_index: int
    group: int
    first: int  # the row number of its first row
    rows: int


@dataclass
class RowTable:
    """The rows of one run's files (see the module docstring)."""

    paths: list[str]
    files: list[pq.ParquetFile | None] = field(default_factory=list)
    groups: list[RowGroupRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    _masks: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def __post_init__(self) -> None:
        first = 0
        for index, path in enumerate(self.paths):
            try:
                handle = pq.ParquetFile(path)
                meta = handle.metadata
            except Exception as exc:  # noqa: BLE001 - a damaged file is shown as such, never raised
                self.problems.append(f"{path}: not readable Parquet ({type(exc).__name__}: {str(exc)[:200]})")
                self.files.append(None)
                continue
            self.files.append(handle)
            for name in handle.schema_arrow.names:
                if name not in self.columns:
                    self.columns.append(name)
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                self.groups.append(RowGroupRef(index, g, first, rows))
                first += rows
        self.total = first

    def close(self) -> None:
        for handle in self.files:
            if handle is not None:
                handle.close()

    # ------------------------------------------------------------------ reading
    def _handle(self, file_index: int) -> pq.ParquetFile:
        """This thread's own reader of the file (a ParquetFile is not read from two threads at once)."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if file_index not in handles:
            handles[file_index] = pq.ParquetFile(self.paths[file_index])
        return handles[file_index]

    def _read(self, ref: RowGroupRef, columns: list[str]) -> pa.Table:
        handle = self._handle(ref.file_index)
        present = [c for c in columns if c in handle.schema_arrow.names]
        table = handle.read_row_group(ref.group, columns=present)
        for c in columns:
            if c not in present:
                table = table.append_column(c, pa.nulls(table.num_rows))
        return table

    def _mask(self, table: pa.Table, flt: RowFilter) -> pa.Array | None:
        conditions = []
        if flt.status:
            status = pc.cast(table["status"], pa.string())
            conditions.append(pc.equal(status, flt.status) if flt.status == "ok" else pc.not_equal(status, "ok"))
        if flt.score and flt.outcome:
            values = pc.cast(table[flt.score], pa.float64())
            if flt.outcome == "pass":
                conditions.append(pc.equal(values, 1.0))
            elif flt.outcome == "fail":
                conditions.append(pc.less(values, 1.0))
            else:
                conditions.append(pc.is_null(values))
        if flt.repeat is not None:
            conditions.append(pc.equal(pc.cast(table["repeat"], pa.int64()), flt.repeat))
        if flt.config_id:
            conditions.append(pc.equal(pc.cast(table["config_id"], pa.string()), flt.config_id))
        for column, value in flt.sampling:
            conditions.append(pc.equal(pc.cast(table[column], pa.float64()), value))
        if not conditions:
            return None
        mask = conditions[0]
        for condition in conditions[1:]:
            mask = pc.and_(mask, condition)
        return pc.fill_null(mask, False)

    def _search(self, ref: RowGroupRef, text: str) -> pa.Array:
        """Rows of one row group whose prompt_id, prompt, output, reference or error contains ``text``
        (case-insensitive).

        The searched columns are read together; those with few distinct values (prompts, references,
        errors) stay dictionary-encoded as Parquet stores them and are searched over their distinct
        values only; a query without cased letters (``#1234``) needs no case folding at all."""
        present = [c for c in SEARCH_COLUMNS if c in self.columns]
        handle = self._search_handle(ref.file_index)
        present = [c for c in present if c in handle.schema_arrow.names]
        hits = np.zeros(ref.rows, dtype=bool)
        if not present:
            return pa.array(hits)
        table = handle.read_row_group(ref.group, columns=present)
        fold = text.lower() != text.upper()
        for name in present:
            for chunk, start in _chunks(table[name]):
                found = _contains(chunk, text, fold)
                if found is not None:
                    hits[start : start + len(chunk)] |= found
        return pa.array(hits)

    def _search_handle(self, file_index: int) -> pq.ParquetFile:
        """This thread's reader of the file that keeps the searched columns dictionary-encoded."""
        handles = getattr(self._local, "search_handles", None)
        if handles is None:
            handles = self._local.search_handles = {}
        if file_index not in handles:
            handles[file_index] = pq.ParquetFile(
                self.paths[file_index], read_dictionary=list(DICTIONARY_SEARCH_COLUMNS)
            )
        return handles[file_index]

    def _filter_columns(self, flt: RowFilter) -> list[str]:
        needed = []
        if flt.status:
            needed.append("status")
        if flt.score and flt.outcome:
            needed.append(flt.score)
        if flt.repeat is not None:
            needed.append("repeat")
        if flt.config_id:
            needed.append("config_id")
        needed += [c for c, _ in flt.sampling]
        return list(dict.fromkeys(needed))

    def matching(self, flt: RowFilter, need: int | None = None) -> tuple[np.ndarray | None, bool]:
        """(the row numbers matching ``flt`` found so far, whether that is all of them); None: every row.

        Row groups are scanned in order, several at a time, and what was found is kept for the next
        page turn. A text search stops once ``need`` matches are known (the first page of a search
        for a common word needs a few row groups, not the file); other filters always finish.
        """
        if not flt.active:
            return None, True
        with self._lock:
            scan = self._masks.get(flt)
            if scan is None:
                scan = self._masks[flt] = Scan()
                while len(self._masks) > MASK_CACHE:
                    self._masks.popitem(last=False)
            else:
                self._masks.move_to_end(flt)
        columns = self._filter_columns(flt)
        if any(c not in self.columns for c in columns):
            return np.array([], dtype=np.int64), True  # filtering on a column these results do not have
        target = need if flt.text else None
        with scan.lock:
            while not scan.done and (target is None or scan.count < target):
                batch = self.groups[scan.next_group : scan.next_group + SCAN_THREADS * (4 if target is None else 1)]
                with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="view-scan") as pool:
                    for hits in pool.map(lambda ref: self._scan_group(ref, columns, flt), batch):
                        if hits is not None:
                            scan.found.append(hits)
                            scan.count += len(hits)
                scan.next_group += len(batch)
                scan.done = scan.next_group >= len(self.groups)
            if len(scan.found) > 1:
                scan.found = [np.concatenate(scan.found)]
            memory.release()  # hand the row groups' buffers back
            return (scan.found[0] if scan.found else np.array([], dtype=np.int64)), scan.done

    def _scan_group(self, ref: RowGroupRef, columns: list[str], flt: RowFilter) -> np.ndarray | None:
        """The row numbers of one row group that match ``flt`` (None if it cannot be read)."""
        try:
            mask = self._mask(self._read(ref, columns), flt)
            if flt.text:
                matched = self._search(ref, flt.text)
                mask = matched if mask is None else pc.and_(mask, matched)
        except Exception as exc:  # noqa: BLE001 - a damaged row group is reported, the rest still shown
            self._note(f"row group {ref.group} of {self.paths[ref.file_index]} cannot be read ({exc})")
            return None
        hits = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) if mask is not None else np.arange(ref.rows)
        return hits + ref.first

    def _note(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def _group_of(self, row: int) -> RowGroupRef | None:
        lo, hi = 0, len(self.groups) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            ref = self.groups[mid]
            if row < ref.first:
                hi = mid - 1
            elif row >= ref.first + ref.rows:
                lo = mid + 1
            else:
                return ref
        return None

    def page(
        self, flt: RowFilter, offset: int, limit: int, columns: list[str]
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """(number of matching rows, or None while a text search has not read every row group yet;
        the rows ``offset`` … ``offset + limit`` with ``columns`` and ``_row``)."""
        hits, complete = self.matching(flt, need=offset + limit + 1)
        known = self.total if hits is None else len(hits)
        total = known if complete else None
        offset = max(0, min(offset, max(0, known - 1)))
        wanted = range(offset, min(known, offset + limit))
        numbers = [int(hits[i]) if hits is not None else i for i in wanted]
        by_group: dict[int, list[int]] = {}
        refs: dict[int, RowGroupRef] = {}
        for n in numbers:
            ref = self._group_of(n)
            if ref is None:
                continue
            key = id(ref)
            refs[key] = ref
            by_group.setdefault(key, []).append(n)
        rows: dict[int, dict[str, Any]] = {}
        for key, members in by_group.items():
            ref = refs[key]
            try:
                taken = self._read_rows(ref, columns, sorted(n - ref.first for n in members))
            except Exception as exc:  # noqa: BLE001
                self._note(f"row group {ref.group} of {self.paths[ref.file_index]} cannot be read ({exc})")
                continue
            for values in taken:
                n = values.pop("_at") + ref.first
                rows[n] = {"_row": n, **values}
        memory.release()
        return total, [rows[n] for n in numbers if n in rows]

    def _read_rows(self, ref: RowGroupRef, columns: list[str], positions: list[int]) -> list[dict[str, Any]]:
        """The rows at ``positions`` (sorted, within the row group) with ``columns``, each with ``_at``.

        The row group is decoded a slice of ``READ_BATCH_ROWS`` at a time and only until its last wanted row:
        a page of outputs costs a slice of them, not the row group's 64k decoded."""
        handle = self._handle(ref.file_index)
        present = [c for c in columns if c in handle.schema_arrow.names]
        out: list[dict[str, Any]] = []
        start, wanted = 0, 0
        batches = handle.iter_batches(
            batch_size=READ_BATCH_ROWS, row_groups=[ref.group], columns=present, use_threads=False
        )
        try:
            for batch in batches:
                end = start + batch.num_rows
                inside = []
                while wanted < len(positions) and positions[wanted] < end:
                    inside.append(positions[wanted])
                    wanted += 1
                if inside:
                    taken = batch.take(pa.array([p - start for p in inside], pa.int64())).to_pylist()
                    for at, values in zip(inside, taken):
                        out.append({**{c: values.get(c) for c in columns}, "_at": at})
                if wanted >= len(positions):
                    break
                start = end
        finally:
            batches.close()
        return out

    def row(self, number: int) -> dict[str, Any] | None:
        """Every column of row ``number`` (None when there is no such row or it cannot be read)."""
        ref = self._group_of(number)
        if ref is None:
            return None
        handle = self.files[ref.file_index]
        try:
            values = self._read_rows(ref, handle.schema_arrow.names, [number - ref.first])[0]
        except Exception as exc:  # noqa: BLE001
            self._note(f"row group {ref.group} of {self.paths[ref.file_index]} cannot be read ({exc})")
            return None
        finally:
            memory.release()
        values.pop("_at")
        return {"_row": number, "_file": self.paths[ref.file_index], **values}


def _chunks(column: pa.ChunkedArray):
    """(chunk, its first row) of a column."""
    start = 0
    for chunk in column.chunks:
        yield chunk, start
        start += len(chunk)


def _contains(values: pa.Array, text: str, fold: bool) -> np.ndarray | None:
    """Which of ``values`` contain ``text`` (case-insensitive when ``fold``); None: none can (all null)."""
    if pa.types.is_null(values.type):
        return None
    if pa.types.is_dictionary(values.type):
        # match the distinct values, then look each row's value up
        distinct = _contains(values.dictionary, text, fold)
        if distinct is None or not distinct.any():
            return None
        found = np.zeros(len(values), dtype=bool)
        indices = values.indices
        valid = indices.is_valid().to_numpy(zero_copy_only=False)
        found[valid] = distinct[indices.fill_null(0).to_numpy(zero_copy_only=False)[valid]]
        return found
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    # the literal as an RE2 pattern: Arrow's regex search is faster than its plain substring search
    matched = pc.match_substring_regex(values, re.escape(text), ignore_case=fold)
    return pc.fill_null(matched, False).to_numpy(zero_copy_only=False)


def preview(value: Any, limit: int = TEXT_PREVIEW) -> str:
    """A cell's text for the rows table: '' for missing, long text cut with an ellipsis."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"
