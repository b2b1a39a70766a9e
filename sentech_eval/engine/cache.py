"""One run's use of the response cache: a ``RunHook`` that answers items from the cache and writes fresh answers.

Modes: ``on`` reads and writes, ``refresh`` writes only, ``only`` reads only (a miss is an error
row, nothing is sent). Keys come from ``engine/cache_keys.py``, the file is ``engine/cache_store.py``;
``RunCache`` adds the rows' ``cached``, ``cached_from``, ``cache_key`` and ``messages_sha256`` columns,
buffers writes for a writer thread, and decides what happens when the file turns out to be damaged.
See docs/cache.md.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from sentech_eval.backends.base import Backend
from sentech_eval.engine.cache_keys import backend_context, canonical_json, is_servable, sampling_key_fields
from sentech_eval.engine.cache_store import CachedAnswer, ResponseStore, answer_record, cache_path, unusable_message
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.errors import CacheError
from sentech_eval.types import Completion, Prompt, Sampling

MODES = ("off", "on", "refresh", "only")
ON_CORRUPT = ("continue", "stop")
# Fresh answers are kept in memory and handed to the writer thread, which writes them into the file in
# one transaction, every MERGE_ROWS answers, MERGE_CHARS characters of output or MERGE_S seconds, and
# at the end of the run: a killed run (kill -9) loses at most this much from the cache, never a result.
MERGE_ROWS = 50_000
MERGE_CHARS = 64_000_000
MERGE_S = 60.0
NOT_IN_CACHE = "not in cache (runner.cache=only sends no request)"
UNSEEDED_REFUSED = (
    "not served from cache: a seedless request at temperature > 0 is a new sample each time "
    "(runner.cache=only sends no request; set runner.cache_unseeded=true to serve it anyway)"
)


@dataclass(frozen=True, slots=True)
class RepeatKeys:
    """The key fields of one repeat (everything but the messages), as a dict and as canonical JSON."""

    fields: dict[str, Any]
    fields_json: str
    prefix: bytes  # canonical JSON + newline: the key hashes this followed by the messages' digest
    servable: bool


@dataclass(slots=True)
class Lookup:
    """One item's cache key, its messages' digest, and the cached answer (None on a miss)."""

    key: str
    messages_sha256: str
    answer: CachedAnswer | None
    servable: bool


# The result columns the cache adds to a run's rows (only when the cache is on).
CACHE_COLUMNS = {
    "cached": pa.bool_(),
    "cached_from": pa.string(),
    "cache_key": pa.string(),
    "messages_sha256": pa.string(),
}


class RunCache(RunHook):
    """One run's use of the cache, plugged into the runner as a ``RunHook``: keys, reads
    (``on``/``only``), writes (``on``/``refresh``), and the rows' ``cached``, ``cached_from``,
    ``cache_key`` and ``messages_sha256`` columns.

    Reads happen in bulk, one query per batch of prompts (``before_batch``); a configuration the cache
    has never seen is not read at all during the run (only this run could have written its
    answers). Fresh answers are kept in memory (a list append on the hot path) and handed to a writer
    thread with its own connection every ``merge_rows`` answers, ``MERGE_CHARS`` characters or
    ``MERGE_S`` seconds and at the end of the run; it stages them in a private table and merges them
    into the file in key order, in one transaction. A damaged file found mid-run raises
    ``CacheError`` (``on_corrupt="stop"``) or prints one sentence and turns the cache off for the
    rest of the run (``"continue"``).
    """

    def __init__(
        self,
        store: ResponseStore,
        mode: str,
        context: dict[str, Any],
        *,
        run_id: str,
        dataset: str,
        unseeded_ok: bool = False,
        on_corrupt: str = "continue",
        merge_rows: int = MERGE_ROWS,
    ) -> None:
        if mode not in MODES or mode == "off":
            raise ValueError(f"RunCache mode must be on, refresh or only, not {mode!r}")
        self.store = store
        self.mode = mode
        self.context = context
        self.run_id = run_id
        self.dataset = dataset
        self.unseeded_ok = unseeded_ok
        self.on_corrupt = on_corrupt
        self.reads = mode in ("on", "only")
        self.writes = mode in ("on", "refresh")
        self.active = True
        self.hits = 0
        self.misses = 0
        self.written = 0
        self.refused_unseeded = 0
        self._model = str(context.get("model", ""))
        self._repeats: dict[int, RepeatKeys] = {}
        self._known: dict[int, bool] = {}  # per repeat: did the cache hold this configuration when the run began?
        self._ready: dict[tuple[Any, int], tuple[Any, ...]] = {}  # prefetched: messages + Lookup's fields
        self._pending: list[tuple[Any, ...]] = []
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer_db: sqlite3.Connection | None = None  # used on the writer thread only
        self._writes: list[concurrent.futures.Future[int]] = []
        self._last_flush = time.monotonic()
        self.merge_rows = merge_rows
        self._pending_chars = 0

    def describe(self) -> dict[str, Any]:
        """What goes in the results' metadata: mode, file, and the run's fixed key fields."""
        return {
            "mode": self.mode,
            "path": str(self.store.path),
            "context": self.context,
            "unseeded_ok": self.unseeded_ok,
        }

    def repeat_keys(self, repeat: int, sampling: Sampling) -> RepeatKeys:
        """The key fields of one repeat (built once per repeat)."""
        keys = self._repeats.get(repeat)
        if keys is None:
            fields = {**self.context, **sampling_key_fields(sampling)}
            if sampling.seed is None:
                fields["repeat"] = repeat  # no seed tells repeats apart: their number does
            text = canonical_json(fields)
            keys = self._repeats[repeat] = RepeatKeys(
                fields, text.decode(), text + b"\n", is_servable(fields, self.unseeded_ok)
            )
        return keys

    def _reads_for(self, repeat: int, keys: RepeatKeys) -> bool:
        """Whether lookups of this repeat can hit: reading, servable, and the configuration known."""
        if not (self.reads and keys.servable):
            return False
        known = self._known.get(repeat)
        if known is None:
            known = self._known[repeat] = self.store.has_config(keys.fields_json)
        return known

    # ---- the runner's extension points
    def columns(self) -> dict[str, pa.DataType]:
        """The columns a run with the cache on adds to its rows."""
        return dict(CACHE_COLUMNS)

    async def before_send(self, item: Item) -> Completion | None:
        """A hit answers the item (no request; the original's measurements and start); in mode
        ``only`` a miss is an error row; otherwise the item is sent."""
        lookup = self.lookup(item.prompt, item.repeat, item.sampling)
        if lookup is None:
            return None  # the cache turned itself off (a damaged file)
        a = lookup.answer
        columns = {
            "cached": a is not None,
            "cached_from": a.run_id if a is not None else None,
            "cache_key": lookup.key,
            "messages_sha256": lookup.messages_sha256,
        }
        if item.columns is None:
            item.columns = columns
        else:
            item.columns.update(columns)
        if a is not None:
            if a.started_at is not None:
                item.started_at = a.started_at
            return Completion(
                output=a.output,
                finish_reason=a.finish_reason,
                prompt_tokens=a.prompt_tokens,
                completion_tokens=a.completion_tokens,
                total_tokens=a.total_tokens,
                latency_s=a.latency_s,
                ttft_s=a.ttft_s,
                http_status=a.http_status,
            )
        if self.mode == "only":  # read only: a miss is an error row, and nothing is sent
            return Completion(status="error", error=NOT_IN_CACHE if lookup.servable else UNSEEDED_REFUSED)
        return None

    async def after_final(self, item: Item, completion: Completion) -> None:
        """Write a fresh ok answer (errors, and answers that came from the cache, are not written)."""
        columns = item.columns
        if completion.status != "ok" or not columns or columns.get("cached") is not False:
            return
        self.remember(
            Lookup(columns["cache_key"], columns["messages_sha256"], None, True),
            completion,
            item.started_at,
            str(item.prompt.id),
            item.repeat,
        )

    def before_batch(self, prompts: Sequence[Prompt], repeat: int, sampling: Sampling) -> None:
        """Work out the keys of a batch of prompts (one repeat) and read their answers in bulk.

        ``lookup`` then takes each item's result from memory. Call it just before the batch's items
        are sent; items not prefetched are looked up one by one.
        """
        if not self.active:
            return
        keys = self.repeat_keys(repeat, sampling)
        prefix, sha256, dumps, sort_keys = keys.prefix, hashlib.sha256, orjson.dumps, orjson.OPT_SORT_KEYS
        # the same bytes as messages_sha256() and key_of(), written out: this runs once per item
        digests = [sha256(dumps(prompt.messages, option=sort_keys)).hexdigest() for prompt in prompts]
        item_keys = [sha256(prefix + digest.encode()).hexdigest() for digest in digests]
        found: dict[str, CachedAnswer] = {}
        try:
            if self._reads_for(repeat, keys):
                found = self.store.get_many(item_keys)
        except sqlite3.Error as exc:
            self._fail(exc)
            return
        servable, get = keys.servable, found.get
        # the messages object itself is kept and compared by identity: a reused prompt id can never
        # pick up another prompt's key
        self._ready.update(
            ((prompt.id, repeat), (prompt.messages, key, digest, get(key) if found else None, servable))
            for prompt, digest, key in zip(prompts, digests, item_keys)
        )

    def lookup(self, prompt: Any, repeat: int, sampling: Sampling) -> Lookup | None:
        """The item's key and, when reading and servable, its cached answer; None if the cache is off."""
        if not self.active:
            return None
        ready = self._ready.pop((prompt.id, repeat), None)
        if ready is not None and ready[0] is prompt.messages:
            result = Lookup(*ready[1:])
        else:
            keys = self.repeat_keys(repeat, sampling)
            digest = hashlib.sha256(canonical_json(list(prompt.messages))).hexdigest()
            key = hashlib.sha256(keys.prefix + digest.encode()).hexdigest()
            try:
                answer = self.store.get(key) if self._reads_for(repeat, keys) else None
            except sqlite3.Error as exc:
                self._fail(exc)
                return None
            result = Lookup(key, digest, answer, keys.servable)
        if result.answer is not None:
            self.hits += 1
        elif self.reads:
            self.misses += 1
            if not result.servable:
                self.refused_unseeded += 1
        return result

    def remember(
        self, lookup: Lookup, completion: Completion, started_at: float | None, prompt_id: str, repeat: int
    ) -> None:
        """Buffer an ok answer for writing (errors are never written)."""
        if not self.writes or not self.active or completion.status != "ok":
            return
        self._pending.append((lookup, completion, started_at, prompt_id, self._repeats[repeat].fields_json))
        if completion.output:
            self._pending_chars += len(completion.output)
        if (
            len(self._pending) >= self.merge_rows
            or self._pending_chars >= MERGE_CHARS
            or time.monotonic() - self._last_flush >= MERGE_S
        ):
            self.flush()

    def _write(self, pending: list[tuple[Any, ...]]) -> int:
        """On the writer thread: stage the answers, then merge them into the file; returns how many."""
        if self._writer_db is None:
            self._writer_db = self.store.writer_connection()
        run_id, dataset, model = self.run_id, self.dataset, self._model
        rows = [
            (
                lookup.key,
                fields_json,
                model,
                lookup.messages_sha256,
                answer_record(completion, run_id, prompt_id, dataset, started_at),
            )
            for lookup, completion, started_at, prompt_id, fields_json in pending
        ]
        self.store.stage_many(rows, self._writer_db)
        return self.store.merge_staged(self._writer_db)

    def _collect(self, wait: bool) -> None:
        """Account for finished writes; a failed one turns the cache off (or stops the run)."""
        still = []
        for future in self._writes:
            if not wait and not future.done():
                still.append(future)
                continue
            try:
                self.written += future.result()
            except sqlite3.Error as exc:
                self._writes = []
                self._fail(exc)
                return
        self._writes = still

    def flush(self) -> None:
        """Hand the buffered answers to the writer thread (one transaction per batch)."""
        if self._writes:
            self._collect(wait=False)
        if not self._pending or not self.active:
            return
        pending, self._pending, self._pending_chars = self._pending, [], 0
        self._last_flush = time.monotonic()
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentech-eval-cache")
        self._writes.append(self._writer.submit(self._write, pending))

    def flush_wait(self) -> None:
        """Hand the buffered answers to the writer thread and wait until they are in the file."""
        self.flush()
        self._collect(wait=True)

    def close(self) -> None:
        """Write what is buffered and wait for it, add this run's hits to the counters, close the file."""
        try:
            self.flush()
            self._collect(wait=True)
            if self.active and self.hits:
                self.store.add_hits({self._model: self.hits})
        except sqlite3.Error as exc:
            self._fail(exc)
        finally:
            if self._writer is not None:
                if self._writer_db is not None:
                    self._writer.submit(self._writer_db.close).result()
                self._writer.shutdown(wait=True)
            self.store.close()

    def _fail(self, exc: sqlite3.Error) -> None:
        self.active = False
        self._pending = []
        self._ready = {}
        message = unusable_message(self.store.path, exc)
        if self.on_corrupt == "stop":
            raise CacheError(message) from None
        print(
            f"sentech-eval: {message[:-1]}; this run goes on without the cache "
            "(runner.cache_on_corrupt=stop stops instead).",
            file=sys.stderr,
        )


def open_run_cache(
    backend: Backend,
    *,
    mode: str,
    cache_dir: str | None,
    run_id: str,
    dataset: str,
    unseeded_ok: bool = False,
    on_corrupt: str = "continue",
) -> RunCache | None:
    """The run's cache, or None when the mode is ``off``, the backend cannot be keyed, or the file is
    unusable and ``on_corrupt="continue"`` (one sentence on stderr); CacheError with ``"stop"``."""
    if mode == "off":
        return None
    path = cache_path(cache_dir)
    try:
        store = ResponseStore(path)
        context = backend_context(backend, store.file_sha256)
    except (CacheError, sqlite3.Error) as exc:
        message = str(exc) if isinstance(exc, CacheError) else unusable_message(path, exc)
        if on_corrupt == "stop":
            raise CacheError(message) from None
        print(
            f"sentech-eval: {message[:-1]}; this run goes on without the cache "
            "(runner.cache_on_corrupt=stop stops instead).",
            file=sys.stderr,
        )
        return None
    if context is None:
        store.close()
        print(
            f"sentech-eval: the {backend.kind} backend does not say what identifies its answers "
            "(its cache_identity() gives none), so this run goes on without the cache.",
            file=sys.stderr,
        )
        return None
    return RunCache(
        store, mode, context, run_id=run_id, dataset=dataset, unseeded_ok=unseeded_ok, on_corrupt=on_corrupt
    )
