"""Pacing for the runner: when may the next request go out?

``Pacer`` owns everything that delays a send: the rpm/tpm token buckets, the adaptive
concurrency gate (halved on 429s, grown back on success), a server's Retry-After pause (shared
by every worker: the server asked this client, not one request, to wait), retry backoff and the
stop signal that cuts every wait short. The building blocks (``TokenBucket``,
``AdaptiveConcurrency``) are single-event-loop objects (no threads).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from sentech_eval.backends.retry import RETRY_AFTER_CEILING_S, backoff_delay
from sentech_eval.config import RunnerConfig
from sentech_eval.types import Completion

__all__ = ["RETRY_AFTER_CEILING_S", "AdaptiveConcurrency", "Pacer", "TokenBucket", "backoff_delay"]


class TokenBucket:
    """A token bucket refilled at ``rate_per_min / 60`` per second, holding at most one second's
    worth plus one request (so a fresh run does not burst a whole minute's quota at once)."""

    def __init__(self, rate_per_min: float, *, clock: Callable[[], float] = time.monotonic) -> None:
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
        """Correct an estimate after the fact (positive delta = more tokens were used).

        The bucket never owes more than one minute's quota: one absurd count cannot stop the run for longer.
        """
        self._refill()
        self._tokens = max(self._tokens - delta, -60.0 * self.rate_per_s)


class AdaptiveConcurrency:
    """A semaphore whose size halves on rate-limit answers and grows back by one after sustained success.

    Like TCP congestion control, one burst of 429s counts once: a 429 for a request sent before the
    last decrease does not halve the limit again.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_limit = limit
        self.limit = limit
        self.active = 0
        self._successes = 0
        self._clock = clock
        self._last_decrease = float("-inf")
        self._cond = asyncio.Condition()
        self._waiting = 0  # coroutines inside acquire() waiting for a slot

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
        self._waiting += 1
        try:
            async with self._cond:
                await self._cond.wait_for(lambda: self.active < self.limit)
                self.active += 1
        finally:
            self._waiting -= 1

    def release(self) -> None:
        """Give a slot back."""
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        if self._waiting:  # only then is a loop running and someone waiting
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


class Pacer:
    """Everything that decides when a request may go out, for one run.

    The runner asks ``try_fast()`` first (no rate limit, no pause, a free slot: take it without
    waiting); otherwise ``wait()`` (Retry-After pause, then the buckets, then a slot). Either way it
    ``release()``\\ s the slot after the request and reports the answer to ``settle()``. ``backoff()``
    waits before a retry. ``stop()`` cuts every wait short; nothing new is sent after it.
    """

    def __init__(
        self,
        concurrency: int,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        backoff_base_s: float = RunnerConfig.backoff_base_s,
        backoff_max_s: float = RunnerConfig.backoff_max_s,
        max_retry_after_s: float = RunnerConfig.max_retry_after_s,
        seed: int | None = None,
    ) -> None:
        self.gate = AdaptiveConcurrency(concurrency)
        self.rpm = TokenBucket(rpm) if rpm else None
        self.tpm = TokenBucket(tpm) if tpm else None
        self.unpaced = self.rpm is None and self.tpm is None  # no token bucket to wait for
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s  # a server's Retry-After is believed up to this
        self.wait_reason = ""  # why the run waits right now, for the progress bar
        self.resume_at = 0.0  # monotonic time before which nothing is sent (a server's Retry-After)
        self.backoff_now = 0.0  # the wait in progress, for the progress bar
        self.lowest_concurrency: int | None = None  # set when 429s lowered the concurrency
        self.stopping = False
        self._stop_event = asyncio.Event()
        self._rng = random.Random(0 if seed is None else seed)

    def estimate(self, messages: tuple[dict[str, str], ...], max_tokens: int | None) -> float:
        """Tokens one request is expected to use (the tpm bucket's advance); 0 without a tpm limit."""
        if self.tpm is None:
            return 0.0
        return sum(len(m["content"]) for m in messages) / 4 + (max_tokens or 256)

    def try_fast(self) -> bool:
        """Take a slot now if no rate limit applies, no pause is on and a slot is free."""
        return self.unpaced and self.resume_at <= time.monotonic() and self.gate.try_acquire()

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, waking early when the run stops."""
        if delay <= 0 or self.stopping:
            return
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def _acquire(self, estimate: float) -> None:
        if self.rpm is not None:
            await self.rpm.acquire(1)
        if self.tpm is not None:
            await self.tpm.acquire(estimate)
        await self.gate.acquire()

    async def wait(self, estimate: float) -> bool:
        """Wait for a Retry-After pause, the rpm/tpm buckets and a concurrency slot.

        True once a slot is held (the caller releases it); False if the run stopped first.
        """
        while True:
            pause = self.resume_at - time.monotonic()
            if pause <= 0 or self.stopping:
                break
            self.backoff_now, self.wait_reason = pause, "server asked (Retry-After)"
            await self.sleep(pause)
        self.backoff_now, self.wait_reason = 0.0, ""
        if self.stopping:
            return False
        if self.unpaced and self.gate.try_acquire():
            return True
        acquire = asyncio.ensure_future(self._acquire(estimate))
        stop = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not acquire.done():
                acquire.cancel()
            try:
                await acquire
                acquired = True
            except asyncio.CancelledError:
                acquired = False
        if acquired and self.stopping:
            self.gate.release()
            return False
        return acquired

    def release(self) -> None:
        """Give the slot of a finished request back."""
        self.gate.release()

    def now(self) -> float:
        """The send time to pass to ``settle`` (the gate's clock)."""
        return self.gate.now()

    def settle(self, completion: Completion, sent_at: float, estimate: float) -> None:
        """Learn from one answer: the true token count, a success or a 429, a Retry-After pause."""
        if self.tpm is not None and completion.total_tokens is not None:
            # A request cannot use more than its characters plus max_tokens (4 × the estimate covers both):
            # a larger count is not charged (a server's number is untrusted input).
            self.tpm.adjust(min(completion.total_tokens, 4 * estimate) - estimate)
        if completion.status == "ok":
            self.gate.on_success()
        elif completion.http_status == 429:
            gate = self.gate
            gate.on_rate_limited(sent_at)
            if gate.limit < gate.max_limit:
                low = self.lowest_concurrency
                self.lowest_concurrency = gate.limit if low is None else min(low, gate.limit)
        if completion.retry_after_s is not None:
            # The server asked every request of this client to wait, not just this one.
            self.resume_at = max(
                self.resume_at, time.monotonic() + min(completion.retry_after_s, self.max_retry_after_s)
            )

    async def backoff(self, attempts: int, completion: Completion) -> None:
        """Wait before retrying an item that has been tried ``attempts`` times (cut short by ``stop``)."""
        retry_after = completion.retry_after_s
        if retry_after is not None:
            retry_after = min(retry_after, self.max_retry_after_s)
        delay = backoff_delay(
            attempts, base_s=self.backoff_base_s, max_s=self.backoff_max_s, retry_after_s=retry_after, rng=self._rng
        )
        self.backoff_now = delay
        self.wait_reason = (
            "server asked (Retry-After)" if retry_after is not None and delay <= retry_after else "backoff"
        )
        await self.sleep(delay)
        self.backoff_now, self.wait_reason = 0.0, ""

    def stop(self) -> None:
        """Send nothing new; every wait returns now."""
        self.stopping = True
        self._stop_event.set()

    def status(self) -> str:
        """What slows the run down right now, for the progress bar ('' when nothing does)."""
        gate, text = self.gate, ""
        if gate.limit < gate.max_limit:
            text += f" concurrency={gate.limit}/{gate.max_limit}"
        if self.backoff_now:
            if self.wait_reason == "backoff" or not self.wait_reason:
                text += f" backoff={self.backoff_now:.1f}s"
            else:
                text += f" waiting {self.backoff_now:.1f}s: {self.wait_reason}"
        return text
