"""The response cache's keys: everything that can change an answer, in one canonical form.

The key is the SHA-256 of a canonical JSON form of the *key fields* and the messages' digest:

- what answers: the backend's own ``cache_identity()`` (backend kind, base URL without
  credentials, model; for a local GGUF its file's sha256, the llama-cpp-python version and the
  load settings that change an answer), plus ``stream`` (``backend_context``);
- what is asked: every sampling field (``None`` = not sent), the seed of this repeat, and the
  SHA-256 of the exact messages (``messages_sha256``); a request with no seed also carries its
  ``repeat`` number, so repeats never collapse into one answer.

A seedless request at temperature > 0 is never served (``is_servable``) unless allowed. The file
that holds the answers is ``engine/cache_store.py``; one run's use of it is ``engine/cache.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from sentech_eval.backends.base import Backend
from sentech_eval.secrets import url_without_credentials
from sentech_eval.types import SAMPLING_PARAMS, Sampling

FLOAT_FIELDS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})


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


def backend_context(backend: Backend, file_sha256: Callable[[str], str]) -> dict[str, Any] | None:
    """The key fields that identify what answers: the backend's ``cache_identity()``, with a local
    model's path replaced by its file's sha256 (``file_sha256(path)``, e.g. ``ResponseStore.file_sha256``,
    which hashes a file once) and a base URL stripped of credentials.

    None when the backend does not describe itself (a cache would not know what answered).
    """
    described = backend.cache_identity()
    if described is None:
        return None
    fields = dict(described)
    model_path = fields.pop("model_path", None)
    if model_path is not None:
        fields["gguf_sha256"] = file_sha256(model_path)
    if fields.get("base_url"):
        fields["base_url"] = url_without_credentials(str(fields["base_url"]))
    return fields
