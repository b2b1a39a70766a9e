"""Retrying one request: the one backoff formula, and ``complete_with_retries`` for callers outside the runner.

The runner (``engine.runner``) retries inside its per-item loop, because it also paces and counts;
the two judges (``scorers.judge``, ``analysis.judge``) call ``complete_with_retries``. Both use
``backoff_delay``, so a retry waits the same way wherever it happens.
"""

from __future__ import annotations

import asyncio
import random

from sentech_eval.backends.base import Backend
from sentech_eval.config import RunnerConfig
from sentech_eval.types import Completion, Sampling

# A Retry-After longer than this is not believed (a broken header must not stall a run for hours).
RETRY_AFTER_CEILING_S = 600.0


def backoff_delay(
    attempt: int, *, base_s: float, max_s: float, retry_after_s: float | None, rng: random.Random
) -> float:
    """Seconds to wait before attempt ``attempt + 1``.

    Exponential backoff ``base_s * 2**(attempt-1)`` capped at ``max_s``, with jitter (a uniform draw
    from the upper half, so retries of concurrent requests spread out). A server's ``Retry-After``
    is a floor: the delay is never shorter than it (up to ``RETRY_AFTER_CEILING_S``).
    """
    exponential = min(max_s, base_s * (2 ** (attempt - 1)))
    delay = rng.uniform(exponential / 2, exponential)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CEILING_S))
    return delay


async def complete_with_retries(
    backend: Backend,
    messages: list[dict[str, str]],
    sampling: Sampling,
    *,
    max_attempts: int = 3,
    base_s: float = RunnerConfig.backoff_base_s,
    max_s: float = RunnerConfig.backoff_max_s,
    rng: random.Random | None = None,
) -> Completion:
    """``backend.complete`` tried up to ``max_attempts`` times while the answer is retryable.

    Waits ``backoff_delay`` between attempts; the returned completion's ``attempts`` counts them.
    """
    rng = rng or random.Random(0)
    attempt = 0
    while True:
        attempt += 1
        completion = await backend.complete(messages, sampling)
        if completion.status == "ok" or not completion.retryable or attempt >= max_attempts:
            completion.attempts = attempt
            return completion
        await asyncio.sleep(
            backoff_delay(attempt, base_s=base_s, max_s=max_s, retry_after_s=completion.retry_after_s, rng=rng)
        )
