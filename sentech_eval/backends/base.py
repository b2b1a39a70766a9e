"""The Backend protocol and the registry of backends keyed by their config ``kind``.

A backend turns one list of chat messages plus sampling parameters into a ``Completion``.
It never raises for a failed request (that is a ``Completion`` with ``status="error"``);
it raises ``BackendError`` only when it cannot be set up. Concurrency lives in the runner:
backends never spawn tasks of their own.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sentech_eval.config import BackendConfig
from sentech_eval.errors import ConfigError
from sentech_eval.types import Completion, Sampling


@runtime_checkable
class Backend(Protocol):
    """What the runner needs from a backend; subclass it to inherit the defaults of the optional parts.

    Required: ``kind``, ``model``, ``from_config``, ``complete``, ``aclose``. Optional, with
    defaults here: ``max_concurrency`` (None: no limit of its own), ``auth_hint`` (appended to the
    sentence that stops a run on a rejected key), ``advertised_capacity`` (what the server said it
    serves at once, None: nothing), ``set_timeout`` (a per-attempt timeout; ignored
    by default), ``metadata`` (``kind`` and ``model``), ``cache_identity`` (None: answers are not
    cached).
    """

    kind: str  # "remote" | "local" | ...: goes into the ``backend`` column
    model: str  # goes into the ``model`` column
    # Most requests the backend serves at once; the runner lowers its concurrency to it (more would
    # only queue inside the backend, unseen by ``queue_s``). None: no limit of its own.
    max_concurrency: int | None = None
    # Appended to "The server rejected the API key (...); ... so the run stopped" — where to fix it.
    auth_hint: str = ""
    # Requests the server says it answers at once (learnt from its answers; None: it did not say).
    advertised_capacity: int | None = None

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int) -> Backend:
        """Build from the ``backend`` config node for a run of ``concurrency`` requests in flight."""
        raise NotImplementedError

    async def complete(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> Completion:
        """Run one chat completion; failures come back as ``status="error"``."""
        ...

    async def aclose(self) -> None:
        """Release sessions, processes and models."""
        ...

    def set_timeout(self, timeout_s: float) -> None:
        """Per-attempt timeout in seconds (``runner.timeout_s``); backends without one ignore it."""
        return None

    def metadata(self) -> dict[str, Any]:
        """Facts about the backend for the results' Parquet metadata (never secrets)."""
        return {"kind": self.kind, "model": self.model}

    def cache_identity(self) -> dict[str, Any] | None:
        """What identifies this backend's answers for the response cache: every setting that can
        change an answer, never a secret (``model_path`` is replaced by the file's sha256). None:
        the backend cannot say, and its answers are not cached (docs/cache.md)."""
        return None


# kind -> "module:ClassName"; imported lazily so optional dependencies load only when chosen.
BACKENDS: dict[str, str] = {
    "remote": "sentech_eval.backends.remote:RemoteBackend",
    "local": "sentech_eval.backends.local:LocalBackend",
}


def backend_class(kind: str) -> type:
    """The class registered for ``kind``; ConfigError naming the known kinds otherwise."""
    try:
        target = BACKENDS[kind]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"Unknown backend kind {kind!r}; choose one of: {known}.") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(settings: BackendConfig, concurrency: int) -> Backend:
    """Build the backend a job spec's ``backend`` describes (``JobSpec.backend``), for ``concurrency``
    requests in flight: the one way a run, a judge and ``compare --judge`` build theirs."""
    cls = backend_class(str(settings.kind))
    return cls.from_config(settings, concurrency=concurrency)
