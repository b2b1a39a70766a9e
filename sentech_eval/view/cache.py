"""The viewer's cache of digests, in the user cache dir (never in a run dir).

Each entry is one JSON file named by the hash of what it was computed from: the kind of entry and
the identities (path, size, mtime) of the files read. A changed file has a new identity, so a stale
entry is never used; entries are plain JSON (never pickles), and an unreadable one counts as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

VERSION = 1  # bump when a digest's shape changes


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sentech-eval/view`` (``~/.cache/sentech-eval/view``)."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "sentech-eval" / "view"


def cache_key(kind: str, *parts: Any) -> str:
    """A stable name for an entry computed by ``kind`` from ``parts`` (file identities, settings)."""
    text = json.dumps([VERSION, kind, parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class DigestCache:
    """JSON entries in ``directory``, with the most recent ones also held in memory."""

    def __init__(self, directory: Path | None = None, memory_entries: int = 4096) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.memory: dict[str, Any] = {}
        self.memory_entries = memory_entries

    def get(self, key: str) -> Any | None:
        if key in self.memory:
            return self.memory[key]
        try:
            value = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        self._remember(key, value)
        return value

    def put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(value, handle, allow_nan=True)
            os.replace(tmp, self.directory / f"{key}.json")
        except OSError:
            pass  # a cache that cannot be written only costs time

    def _remember(self, key: str, value: Any) -> None:
        if len(self.memory) >= self.memory_entries:
            self.memory.pop(next(iter(self.memory)))
        self.memory[key] = value
