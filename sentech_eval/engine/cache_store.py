"""The response cache's file: one SQLite database of answers, shared by every run on the machine.

WAL mode and a busy timeout let several processes read and write it at once. Two tables:
``configs`` holds each distinct set of key fields (everything but the messages) once;
``responses`` one row per answer (JSON, never pickles), indexed by its key only. Only ``status="ok"``
answers are written. ``ResponseStore`` raises ``CacheError`` (one sentence) when the file is not a
sentech-eval cache or is damaged. Keys: ``engine/cache_keys.py``; one run's use: ``engine/cache.py``.
See docs/cache.md.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sentech_eval.errors import CacheError
from sentech_eval.types import Completion

DB_FILE = "responses.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
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


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sentech-eval`` (``~/.cache/sentech-eval`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sentech-eval"


def cache_path(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The SQLite file inside ``cache_dir`` (the default user cache dir when None)."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / DB_FILE


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


def answer_record(
    completion: Completion, run_id: str, prompt_id: str, dataset: str, started_at: float | None
) -> dict[str, Any]:
    """What the file keeps of one ok answer: the response, its measurements and where it came from."""
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
