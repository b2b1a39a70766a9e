"""The response cache: answers of earlier requests, keyed on everything that can change them.

One SQLite file (WAL mode, so several processes on one machine read and write it at once) holds
one entry per key. The key is the SHA-256 of a canonical JSON form of the *key fields*:

- what answers: the backend's own ``cache_identity()`` (backend kind, base URL without
  credentials, model; for a local GGUF its file's sha256, the llama-cpp-python version and the
  load settings that change an answer), plus ``stream``;
- what is asked: every sampling field (``None`` = not sent), the seed of this repeat, and the
  SHA-256 of the exact messages (``messages_sha256``); a request with no seed also carries its
  ``repeat`` number, so repeats never collapse into one answer.

Only ``status="ok"`` answers are written; a seedless request at temperature > 0 is never served
(unless ``runner.cache_unseeded=true``). Entries are JSON, never pickles. ``ResponseStore`` is the
file; ``RunCache`` is one run's use of it (mode, keys per repeat, buffered writes, what happens
when the file turns out to be damaged). See docs/cache.md.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from sentech_eval.backends.base import Backend
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.errors import CacheError
from sentech_eval.secrets import url_without_credentials
from sentech_eval.types import SAMPLING_PARAMS, Completion, Prompt, Sampling

MODES = ("off", "on", "refresh", "only")
ON_CORRUPT = ("continue", "stop")
DB_FILE = "responses.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
# Fresh answers are kept in memory and handed to the writer thread, which writes them into the file in
# one transaction, every MERGE_ROWS answers, MERGE_CHARS characters of output or MERGE_S seconds, and
# at the end of the run: a killed run (kill -9) loses at most this much from the cache, never a result.
MERGE_ROWS = 50_000
MERGE_CHARS = 64_000_000
MERGE_S = 60.0
FLOAT_FIELDS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
ANSWER_FIELDS = (
    "output",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_s",
    "ttft_s",
    "http_status",
)
NOT_IN_CACHE = "not in cache (runner.cache=only sends no request)"
UNSEEDED_REFUSED = (
    "not served from cache: a seedless request at temperature > 0 is a new sample each time "
    "(runner.cache=only sends no request; set runner.cache_unseeded=true to serve it anyway)"
)

PREFETCH_CHUNK = 500  # keys per ``SELECT … WHERE key IN (…)``
# Two tables: ``configs`` holds each distinct set of key fields (everything but the messages) once;
# ``responses`` one row per answer, indexed by its key only, so a write updates one B-tree besides
# the table. ``cache explain`` and ``cache clear`` scan instead: commands a person runs now and then.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS configs (
        id INTEGER PRIMARY KEY,
        fields TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        config INTEGER NOT NULL REFERENCES configs(id),
        messages_sha256 TEXT NOT NULL,
        answer TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS hits (model TEXT PRIMARY KEY, hits INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS file_hashes (
        path TEXT NOT NULL, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (path, mtime_ns, size)
    )""",
)


# ---------------------------------------------------------------------------------- key fields
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sentech-eval`` (``~/.cache/sentech-eval`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sentech-eval"


def cache_path(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The SQLite file inside ``cache_dir`` (the default user cache dir when None)."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / DB_FILE


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal values give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def messages_sha256(messages: Sequence[dict[str, str]]) -> str:
    """SHA-256 of the exact messages (roles and contents, in order)."""
    return hashlib.sha256(canonical_json(list(messages))).hexdigest()


def sampling_key_fields(sampling: Sampling) -> dict[str, Any]:
    """Every sampling field as it is sent (floats as floats, so 1 and 1.0 are one key; None = not sent)."""
    out = {}
    for name in SAMPLING_PARAMS:
        value = getattr(sampling, name)
        out[name] = float(value) if value is not None and name in FLOAT_FIELDS else value
    return out


def key_of(fields: dict[str, Any], messages_digest: str) -> str:
    """The cache key: SHA-256 over the canonical key fields and the messages' SHA-256."""
    return hashlib.sha256(canonical_json(fields) + b"\n" + messages_digest.encode()).hexdigest()


def is_servable(fields: dict[str, Any], unseeded_ok: bool) -> bool:
    """False for a seedless request at temperature > 0 (a new sample each time), unless allowed."""
    if unseeded_ok or fields.get("temperature") == 0.0:
        return True
    return fields.get("seed") is not None and bool(fields.get("seed_sent", True))


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the key fields whose values differ between two field dicts (sorted)."""
    return sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))


# ---------------------------------------------------------------------------------- the file
@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One cached ok answer: the original response and its measurements."""

    key: str
    output: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    latency_s: float | None
    ttft_s: float | None
    http_status: int | None
    run_id: str | None
    started_at: float | None  # POSIX seconds of the original request


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored entry as ``cache explain`` shows it."""

    key: str
    messages_sha256: str
    model: str
    fields: dict[str, Any]
    run_id: str | None
    prompt_id: str | None
    dataset: str | None
    created_at: float


def unusable_message(path: Path, exc: BaseException) -> str:
    """One sentence: which cache file is unusable, why, and the fix."""
    return (
        f"The response cache {path} is unusable ({exc}); delete it with `sentech-eval cache clear` "
        f"(or `rm {path}`), point runner.cache_dir elsewhere, or run with runner.cache=off."
    )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return db


def _answer(
    completion: Completion, run_id: str, prompt_id: str, dataset: str, started_at: float | None
) -> dict[str, Any]:
    c = completion
    return {
        "output": c.output,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.total_tokens,
        "latency_s": c.latency_s,
        "ttft_s": c.ttft_s,
        "http_status": c.http_status,
        "run_id": run_id,
        "prompt_id": prompt_id,
        "dataset": dataset,
        "started_at": started_at,
    }


def _cached_answer(key: str, raw: str) -> CachedAnswer:
    answer = orjson.loads(raw)
    get = answer.get
    return CachedAnswer(key, **{name: get(name) for name in (*ANSWER_FIELDS, "run_id", "started_at")})


class ResponseStore:
    """The SQLite file of cached answers. Safe for several processes at once (WAL, busy timeout).

    Raises ``CacheError`` (one sentence) when the file is not a sentech-eval cache or is damaged.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise CacheError(f"There is no response cache at {self.path} yet; a run with runner.cache=on creates it.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(unusable_message(self.path, exc)) from None
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CacheError(
                    f"The response cache {self.path} was written by a newer sentech-eval (format {version}, "
                    f"this one reads {SCHEMA_VERSION}); upgrade, or point runner.cache_dir elsewhere."
                )
            if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            if version < SCHEMA_VERSION:
                with _Transaction(self._db):
                    for statement in _SCHEMA:
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:  # an existing cache: check that it has our tables (a stray SQLite file would not)
                self._db.execute("SELECT c.fields, r.key, r.answer FROM configs c, responses r LIMIT 1").fetchall()
        except CacheError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise CacheError(unusable_message(self.path, exc)) from None

    # ---- reads
    def has_config(self, fields_json: str) -> bool:
        """Whether any answer was ever written for these key fields (if not, no lookup can hit)."""
        return self._db.execute("SELECT 1 FROM configs WHERE fields = ?", (fields_json,)).fetchone() is not None

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (one query per 500 keys: a few µs a key, not one WAL
        read transaction per item)."""
        found: dict[str, CachedAnswer] = {}
        for start in range(0, len(keys), PREFETCH_CHUNK):
            chunk = orjson.dumps(keys[start : start + PREFETCH_CHUNK])
            for key, raw in self._db.execute(
                "SELECT key, answer FROM responses WHERE key IN (SELECT value FROM json_each(?))", (chunk,)
            ):
                found[key] = _cached_answer(key, raw)
        return found

    def entries(
        self, *, messages_digest: str | None = None, prompt_id: str | None = None, limit: int = 200
    ) -> list[Entry]:
        """Stored entries for one messages digest or one prompt id, newest first (a scan)."""
        where, value = (
            ("r.messages_sha256 = ?", messages_digest)
            if messages_digest is not None
            else ("json_extract(r.answer, '$.prompt_id') = ?", prompt_id)
        )
        rows = self._db.execute(
            "SELECT r.key, r.messages_sha256, c.model, c.fields, r.answer, r.created_at FROM responses r "
            f"JOIN configs c ON c.id = r.config WHERE {where} ORDER BY r.created_at DESC LIMIT ?",
            (value, limit),
        )
        out = []
        for key, digest, model, fields, raw, created_at in rows.fetchall():
            answer = orjson.loads(raw)
            out.append(
                Entry(
                    key,
                    digest,
                    model,
                    orjson.loads(fields),
                    answer.get("run_id"),
                    answer.get("prompt_id"),
                    answer.get("dataset"),
                    created_at,
                )
            )
        return out

    def stats(self) -> dict[str, Any]:
        """Entries, bytes on disk, and per model: entries, hits, oldest and newest entry."""
        per_model = {
            m: {"entries": n, "hits": 0, "oldest": lo, "newest": hi}
            for m, n, lo, hi in self._db.execute(
                "SELECT c.model, COUNT(*), MIN(r.created_at), MAX(r.created_at) FROM responses r "
                "JOIN configs c ON c.id = r.config GROUP BY c.model"
            )
        }
        for model, hits in self._db.execute("SELECT model, hits FROM hits"):
            per_model.setdefault(model, {"entries": 0, "hits": 0, "oldest": None, "newest": None})["hits"] = hits
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {
            "path": str(self.path),
            "entries": sum(v["entries"] for v in per_model.values()),
            "bytes": size,
            "models": per_model,
        }

    # ---- writes
    def stage_many(self, rows: Iterable[tuple[str, str, str, str, dict[str, Any]]], db: sqlite3.Connection) -> int:
        """Append entries, each ``(key, fields_json, model, messages_sha256, answer)``, to ``db``'s private
        staging table (a TEMP table: no lock on the file, no index to update); ``merge_staged`` moves them
        into the file. Returns how many."""
        rows = list(rows)
        if not rows:
            return 0
        now, dumps = time.time(), orjson.dumps
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged (key TEXT NOT NULL, fields TEXT NOT NULL, "
            "model TEXT NOT NULL, messages_sha256 TEXT NOT NULL, answer TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO temp.staged VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key, fields, model, digest, dumps(answer).decode(), now)
                    for key, fields, model, digest, answer in rows
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

    def merge_staged(self, db: sqlite3.Connection) -> int:
        """Move ``db``'s staged entries into the file in one transaction, in key order (an index fed in
        order touches each page once); returns how many. A key written again is replaced."""
        if db.execute("SELECT 1 FROM temp.sqlite_master WHERE name = 'staged'").fetchone() is None:
            return 0
        with _Transaction(db):
            moved = db.execute("SELECT count(*) FROM temp.staged").fetchone()[0]
            db.execute("INSERT OR IGNORE INTO configs (fields, model) SELECT DISTINCT fields, model FROM temp.staged")
            db.execute(
                "INSERT OR REPLACE INTO responses (key, config, messages_sha256, answer, created_at) "
                "SELECT s.key, c.id, s.messages_sha256, s.answer, s.created_at "
                "FROM temp.staged s JOIN configs c ON c.fields = s.fields ORDER BY s.key, s.rowid"
            )
            db.execute("DELETE FROM temp.staged")
        return moved

    def add_hits(self, hits_by_model: dict[str, int]) -> None:
        """Add to the per-model hit counters (``cache stats``)."""
        if not hits_by_model:
            return
        with _Transaction(self._db):
            self._db.executemany(
                "INSERT INTO hits (model, hits) VALUES (?, ?) "
                "ON CONFLICT(model) DO UPDATE SET hits = hits + excluded.hits",
                hits_by_model.items(),
            )

    def clear(self, *, model: str | None = None, older_than_s: float | None = None) -> int:
        """Delete entries (all, one model's, and/or those older than ``older_than_s``); returns how many."""
        where: list[str] = []
        args: list[Any] = []
        if model is not None:
            where.append("config IN (SELECT id FROM configs WHERE model = ?)")
            args.append(model)
        if older_than_s is not None:
            where.append("created_at < ?")
            args.append(time.time() - older_than_s)
        sql = "DELETE FROM responses" + (" WHERE " + " AND ".join(where) if where else "")
        with _Transaction(self._db):
            removed = self._db.execute(sql, args).rowcount
            self._db.execute("DELETE FROM configs WHERE id NOT IN (SELECT DISTINCT config FROM responses)")
            if model is not None and older_than_s is None:
                self._db.execute("DELETE FROM hits WHERE model = ?", (model,))
            elif not where:
                self._db.execute("DELETE FROM hits")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if not where:
            self._db.execute("VACUUM")
        return removed

    def file_sha256(self, path: str | os.PathLike[str]) -> str:
        """SHA-256 of a file, remembered per (path, mtime, size) so a model is hashed once, not per run."""
        real = os.path.realpath(path)
        st = os.stat(real)
        row = self._db.execute(
            "SELECT sha256 FROM file_hashes WHERE path = ? AND mtime_ns = ? AND size = ?",
            (real, st.st_mtime_ns, st.st_size),
        ).fetchone()
        if row is not None:
            return row[0]
        with open(real, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        with _Transaction(self._db):
            self._db.execute("DELETE FROM file_hashes WHERE path = ?", (real,))
            self._db.execute(
                "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (real, st.st_mtime_ns, st.st_size, digest)
            )
        return digest

    def writer_connection(self) -> sqlite3.Connection:
        """A second connection to the same file, for a writer thread."""
        return _connect(self.path)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (ROLLBACK on error): takes the write lock up front, so two
    processes never both start a write and then deadlock upgrading their locks."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


# ---------------------------------------------------------------------------------- one run
def backend_context(backend: Backend, store: ResponseStore) -> dict[str, Any] | None:
    """The key fields that identify what answers: the backend's ``cache_identity()``, with a local
    model's path replaced by its file's sha256 and a base URL stripped of credentials.

    None when the backend does not describe itself (a cache would not know what answered).
    """
    described = backend.cache_identity()
    if described is None:
        return None
    fields = dict(described)
    model_path = fields.pop("model_path", None)
    if model_path is not None:
        fields["gguf_sha256"] = store.file_sha256(model_path)
    if fields.get("base_url"):
        fields["base_url"] = url_without_credentials(str(fields["base_url"]))
    return fields


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
                _answer(completion, run_id, prompt_id, dataset, started_at),
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
        context = backend_context(backend, store)
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
