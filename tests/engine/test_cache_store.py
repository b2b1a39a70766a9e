"""engine/cache_store.py: the SQLite file of answers (file hashes remembered, a damaged or stray file refused
with one sentence). What a run reads and writes through it: tests/engine/test_cache.py."""

from __future__ import annotations

import os
import sqlite3

import pytest

from sentech_eval.engine.cache_store import ResponseStore, cache_path
from sentech_eval.errors import CacheError


def test_a_file_hash_is_remembered_per_path_mtime_and_size(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 1000)
    store = ResponseStore(cache_path(tmp_path / "c"))
    digest = store.file_sha256(model)
    stat = model.stat()
    with open(model, "r+b") as handle:  # change the bytes but keep size and mtime: the remembered hash is used
        handle.write(b"y")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.file_sha256(model) == digest
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert store.file_sha256(model) != digest
    store.close()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database" * 100, b"SQLite format 3\0" + os.urandom(4000)],
    ids=["text", "damaged header"],
)
def test_a_damaged_cache_file_is_one_sentence(tmp_path, content):
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(CacheError) as info:
        ResponseStore(path)
    message = str(info.value)
    assert str(path) in message and "sentech-eval cache clear" in message and "\n" not in message


def test_a_stray_sqlite_file_is_refused(tmp_path):
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other (x)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="unusable"):
        ResponseStore(path)
