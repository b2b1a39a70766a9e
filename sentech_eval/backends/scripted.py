"""A scripted backend for tests: answers from a plan, records every call (like httpx's ``MockTransport``).

``ScriptedBackend(plan)`` calls ``plan(call)`` for every request and returns its ``Completion``
(``plan`` may be a coroutine function, e.g. to sleep). ``call`` says which request this is: the
n-th overall, the n-th for this prompt (so a plan can fail the first attempts and answer the
next), the prompt's last user message. ``calls`` keeps every ``Call`` with its monotonic start
and end times. ``answer`` and ``failure`` build the two kinds of ``Completion``.
Not registered as a config ``kind``: it is built in code, for the runner and its hooks.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sentech_eval.backends.base import Backend
from sentech_eval.types import Completion, Sampling


@dataclass
class Call:
    """One request the scripted backend received."""

    index: int  # 0-based, over all calls
    attempt: int  # 1-based, per prompt text
    prompt: str  # the last user message
    sampling: Sampling
    started: float  # time.monotonic()
    ended: float | None = None


def answer(
    output: str = "ok", *, latency_s: float = 0.001, prompt_tokens: int = 3, completion_tokens: int = 1
) -> Completion:
    """An ok completion."""
    return Completion(
        output=output,
        finish_reason="stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        latency_s=latency_s,
        status="ok",
        http_status=200,
    )


def failure(
    http_status: int | None,
    *,
    retryable: bool | None = None,
    retry_after_s: float | None = None,
    error: str | None = None,
) -> Completion:
    """A failed completion; retryable by default for 429, 5xx and connection errors (``http_status=None``)."""
    if retryable is None:
        retryable = http_status is None or http_status == 429 or http_status >= 500
    return Completion(
        status="error",
        http_status=http_status,
        error=error or f"HTTP {http_status}",
        retryable=retryable,
        retry_after_s=retry_after_s,
        latency_s=0.001,
    )


Plan = Callable[[Call], "Completion | Awaitable[Completion]"]


class ScriptedBackend(Backend):
    """Answers every request with ``plan(call)``; see the module docstring."""

    kind = "scripted"

    def __init__(
        self, plan: Plan, *, model: str = "scripted", max_concurrency: int | None = None, auth_hint: str = ""
    ) -> None:
        self.plan = plan
        self.model = model
        self.max_concurrency = max_concurrency
        self.auth_hint = auth_hint
        self.calls: list[Call] = []
        self._attempts: Counter[str] = Counter()
        self.closed = False

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int) -> ScriptedBackend:
        """Not configurable: a scripted backend is built in code."""
        raise NotImplementedError("ScriptedBackend is built in code: ScriptedBackend(plan)")

    async def complete(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> Completion:
        """The planned completion for this call (a fresh copy, as a real backend returns a new one)."""
        prompt = messages[-1]["content"]
        self._attempts[prompt] += 1
        call = Call(len(self.calls), self._attempts[prompt], prompt, sampling, time.monotonic())
        self.calls.append(call)
        result = self.plan(call)
        if inspect.isawaitable(result):
            result = await result
        call.ended = time.monotonic()
        return dataclasses.replace(result)

    async def aclose(self) -> None:
        self.closed = True
