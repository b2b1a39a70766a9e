"""Pacing primitives for the runner: retry backoff, token buckets (rpm/tpm), adaptive concurrency.

All are single-event-loop objects (no threads); the runner owns one of each per run.
"""

from __future__ import annotations

import asyncio
import random
import time

# A Retry-After longer than this is not believed (a broken header must not stall a run for hours).
RETRY_AFTER_CEILING_S = 600.0


def backoff_delay(attempt: int, *, base_s: float, max_s: float, retry_after_s: float | None,
                  rng: random.Random) -> float:
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


class TokenBucket:
    """A token bucket refilled at ``rate_per_min / 60`` per second, holding at most one second's
    worth plus one request (so a fresh run does not burst a whole minute's quota at once)."""

    def __init__(self, rate_per_min: float, *, clock=time.monotonic) -> None:
        self.rate_per_s = rate_per_min / 60.0
        self.capacity = max(1.0, self.rate_per_s)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` tokens are available and take them; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            self._refill()
            # A request bigger than the bucket may go once the bucket is full, leaving it in debt.
            need = min(amount, self.capacity)
            while self._tokens < need:
                delay = (need - self._tokens) / self.rate_per_s
                await asyncio.sleep(delay)
                waited += delay
                self._refill()
            self._tokens -= amount
        return waited

    def adjust(self, delta: float) -> None:
        """Correct an estimate after the fact (positive delta = more tokens were used)."""
        self._refill()
        self._tokens -= delta


class AdaptiveConcurrency:
    """A semaphore whose size halves on rate-limit answers and grows back by one after sustained success.

    Like TCP congestion control, one burst of 429s counts once: a 429 for a request sent before the
    last decrease does not halve the limit again.
    """

    def __init__(self, limit: int, *, clock=time.monotonic) -> None:
        self.max_limit = limit
        self.limit = limit
        self.active = 0
        self._successes = 0
        self._clock = clock
        self._last_decrease = float("-inf")
        self._cond = asyncio.Condition()

    def try_acquire(self) -> bool:
        """Take a slot if one is free right now."""
        if self.active < self.limit:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting while ``limit`` requests are in flight."""
        if self.active < self.limit:
            self.active += 1
            return
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1

    def release(self) -> None:
        """Give a slot back."""
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        if self._cond._waiters:  # type: ignore[attr-defined]  # only then is a loop running and waiting
            asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def now(self) -> float:
        """The clock used for ``sent_at`` values."""
        return self._clock()

    def on_rate_limited(self, sent_at: float | None = None) -> None:
        """A 429 for a request sent at ``sent_at`` (this object's clock): halve the concurrency (at least 1)."""
        self._successes = 0
        if sent_at is not None and sent_at < self._last_decrease:
            return  # already reacted to this burst
        self.limit = max(1, self.limit // 2)
        self._last_decrease = self._clock()

    def on_success(self) -> None:
        """After ``2 × limit`` successes in a row, allow one more request in flight."""
        if self.limit >= self.max_limit:
            return
        self._successes += 1
        if self._successes >= 2 * self.limit:
            self.limit += 1
            self._successes = 0
            self._wake()
