"""The async runner: the only place with concurrency.

A fixed pool of ``concurrency`` worker coroutines pulls (prompt, repeat) items from the dataset
iterator, so memory stays flat however large the dataset is. Each item is paced (rpm/tpm token
buckets, adaptive concurrency on 429s), sent, retried with backoff when that can help, scored,
and buffered into the ``ResultsWriter``, which flushes part files as the run goes.
``latency_s`` is the request itself (from when it was sent); time spent waiting inside the runner
is ``queue_s``, so there is no coordinated omission.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tqdm import tqdm

from sentech_eval.config import RunnerConfig
from sentech_eval.errors import AuthenticationError
from sentech_eval.engine.pacing import RETRY_AFTER_CEILING_S, AdaptiveConcurrency, TokenBucket, backoff_delay
from sentech_eval.engine.results import CORE_NAMES, ResultsWriter, is_quality_score
from sentech_eval.types import SAMPLING_PARAMS, Completion, Prompt, Sampling


# During a run the young-generation GC threshold is raised from Python's 700 to this many objects:
# every request allocates and frees hundreds of short-lived containers, and with the default the
# collector walks the in-flight requests' objects every few requests (and promotes them, feeding
# full collections of the whole heap). Measured: +5 % steady requests/s against the echo server
# (benchmarks/README.md). Unreachable cycles are still collected, just in larger batches.
GC_YOUNG_THRESHOLD = 50_000


@dataclass
class RunSummary:
    """Counts of one run, printed at the end and returned to Hydra."""

    total: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    retries: int = 0
    lowest_concurrency: int | None = None  # set when 429s made the runner lower its concurrency
    interrupted: bool = False
    elapsed_s: float = 0.0
    first_request_s: float | None = None  # start-up: from run() to the first request sent
    score_sums: dict[str, float] = field(default_factory=dict)
    score_counts: dict[str, int] = field(default_factory=dict)

    def score_means(self) -> dict[str, float]:
        """Mean of each score column over ok rows."""
        return {k: self.score_sums[k] / self.score_counts[k] for k in self.score_sums if self.score_counts[k]}


@dataclass(frozen=True)
class RunIdentity:
    """Columns that are the same on every row of a run."""

    run_id: str
    config_id: str
    backend: str
    model: str
    dataset: str


def _last_user_text(messages: tuple[dict[str, str], ...]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"]


def _estimate_tokens(messages: tuple[dict[str, str], ...], max_tokens: int | None) -> float:
    return sum(len(m["content"]) for m in messages) / 4 + (max_tokens or 256)


class Runner:
    """Runs every (prompt, repeat) of a dataset through one backend and one sampling config."""

    def __init__(self, backend: Any, sampling: Sampling, identity: RunIdentity, writer: ResultsWriter,
                 config: RunnerConfig, *, scorers: list[Any] | None = None,
                 done_keys: set[tuple[str, int]] | None = None, total: int | None = None,
                 auth_hint: str = "") -> None:
        self.backend = backend
        self.sampling = sampling
        self.identity = identity
        self.writer = writer
        self.config = config
        self.scorers = scorers or []
        self.done_keys = done_keys or set()
        self.total = total
        self.auth_hint = auth_hint
        self.summary = RunSummary()
        self._stopping = False
        self._rng = random.Random(0 if sampling.seed is None else sampling.seed)
        self._gate = AdaptiveConcurrency(config.concurrency)
        self._rpm = TokenBucket(config.rpm) if config.rpm else None
        self._tpm = TokenBucket(config.tpm) if config.tpm else None
        self._last_flush = time.monotonic()
        self._backoff_now = 0.0
        self._resume_at = 0.0  # monotonic time before which nothing is sent (a server's Retry-After)
        self._unpaced = self._rpm is None and self._tpm is None  # no token bucket to wait for
        self._stop_event = asyncio.Event()
        self._auth_error: AuthenticationError | None = None
        # Per repeat: its Sampling (seed + repeat) and that Sampling's column values, built once.
        self._repeats: dict[int, tuple[Sampling, tuple[Any, ...]]] = {}
        # The identity columns, the same on every row.
        self._identity_values = (identity.run_id, identity.config_id, identity.backend, identity.model, identity.dataset)
        # Columns after the core ones: the dataset's extra columns, then score columns.
        self._tail_names = writer.column_names[len(CORE_NAMES):]
        self._start = 0.0
        self._bar: tqdm | None = None

    # ---- items ------------------------------------------------------------------------------
    def _items(self, batches: Iterator[list[Prompt]]) -> Iterator[tuple[Prompt, int]]:
        done = self.done_keys
        for batch in batches:
            for repeat in range(self.config.repeats):
                for prompt in batch:
                    if done and (str(prompt.id), repeat) in done:
                        self.summary.skipped += 1
                        continue
                    yield prompt, repeat

    def _for_repeat(self, repeat: int) -> tuple[Sampling, tuple[Any, ...]]:
        """The Sampling of one repeat (seed + repeat) and its sampling column values."""
        cached = self._repeats.get(repeat)
        if cached is None:
            seed = None if self.sampling.seed is None else self.sampling.seed + repeat
            sampling = self.sampling.with_seed(seed)
            cached = self._repeats[repeat] = (sampling, tuple(getattr(sampling, name) for name in SAMPLING_PARAMS))
        return cached

    # ---- one item ---------------------------------------------------------------------------
    async def _sleep_unless_stopping(self, delay: float) -> None:
        """Sleep ``delay`` seconds, waking early when the run is asked to stop."""
        if delay <= 0 or self._stopping:
            return
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    async def _acquire_pacing(self, estimate: float) -> None:
        if self._rpm is not None:
            await self._rpm.acquire(1)
        if self._tpm is not None:
            await self._tpm.acquire(estimate)
        await self._gate.acquire()

    async def _wait_for_pacing(self, estimate: float) -> bool:
        """Wait for a server-imposed pause (Retry-After), the rpm/tpm buckets and a concurrency slot.

        True once a slot is held (the caller releases it); False if the run stopped first.
        """
        while True:
            pause = self._resume_at - time.monotonic()
            if pause <= 0 or self._stopping:
                break
            self._backoff_now = pause
            await self._sleep_unless_stopping(pause)
        self._backoff_now = 0.0
        if self._stopping:
            return False
        if self._rpm is None and self._tpm is None and self._gate.try_acquire():
            return True  # fast path: a free slot and no rate limit
        acquire = asyncio.ensure_future(self._acquire_pacing(estimate))
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
        if acquired and self._stopping:
            self._gate.release()
            return False
        return acquired

    def _settle(self, completion: Completion, sent_at: float, estimate: float) -> None:
        """Bookkeeping after one attempt: the token budget, a rejected key, 429s, Retry-After."""
        if self._tpm is not None and completion.total_tokens is not None:
            self._tpm.adjust(completion.total_tokens - estimate)
        status = completion.http_status
        if completion.status == "ok":
            self._gate.on_success()
        elif status == 401 or status == 403:
            if self._auth_error is None:
                self._auth_error = AuthenticationError(
                    f"The server rejected the API key ({completion.error}); every further request would fail, "
                    f"so the run stopped{self.auth_hint}."
                )
            self._stop()
        elif status == 429:
            self._gate.on_rate_limited(sent_at)
            if self._gate.limit < self._gate.max_limit:
                low = self.summary.lowest_concurrency
                self.summary.lowest_concurrency = self._gate.limit if low is None else min(low, self._gate.limit)
        if completion.retry_after_s is not None:
            # The server asked every request of this client to wait, not just this one.
            self._resume_at = max(self._resume_at, time.monotonic() + min(completion.retry_after_s, RETRY_AFTER_CEILING_S))

    def _is_final(self, completion: Completion, attempts: int) -> bool:
        """True when this attempt's outcome is the item's result (no retry can or may follow)."""
        return (completion.status == "ok" or not completion.retryable or attempts > self.config.max_retries
                or self._stopping)

    async def _send_with_retries(self, prompt: Prompt, sampling: Sampling, queued: float,
                                 first: tuple[Completion, float, float] | None = None,
                                 ) -> tuple[Completion, float, float] | None:
        """Send one item (taken at ``queued``), retrying what can be retried.

        ``first`` is an attempt the worker already made (completion, queue_s, started_at); returns
        the same triple for the final attempt, or None if the run stopped before anything was sent.
        """
        estimate = _estimate_tokens(prompt.messages, sampling.max_tokens) if self._tpm else 0.0
        completion, queue_s, started_at = first if first is not None else (None, 0.0, 0.0)
        attempts = 0 if first is None else 1
        while True:
            if completion is not None:  # a retry: back off first
                delay = backoff_delay(attempts, base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s,
                                      retry_after_s=completion.retry_after_s, rng=self._rng)
                self.summary.retries += 1
                self._backoff_now = delay
                await self._sleep_unless_stopping(delay)
                self._backoff_now = 0.0
            wait_start = time.perf_counter() if attempts else queued
            if not await self._wait_for_pacing(estimate):  # the run is stopping: nothing new goes out
                if completion is None:
                    return None
                completion.attempts = attempts
                return completion, queue_s, started_at
            attempts += 1
            if attempts == 1:
                queue_s = time.perf_counter() - queued
                started_at = time.time()  # POSIX seconds; the writer stores it as a UTC timestamp
                self._note_first_request()
            else:
                queue_s += time.perf_counter() - wait_start
            sent_at = self._gate.now()
            try:
                completion = await self.backend.complete(prompt.messages, sampling)
            finally:
                self._gate.release()
            self._settle(completion, sent_at, estimate)
            if self._is_final(completion, attempts):
                completion.attempts = attempts
                return completion, queue_s, started_at

    def _note_first_request(self) -> None:
        if self.summary.first_request_s is None:
            self.summary.first_request_s = time.perf_counter() - self._start

    def _row_values(self, prompt: Prompt, repeat: int, sampled: tuple[Any, ...], completion: Completion,
                    queue_s: float, started_at: float) -> list[Any]:
        """One result row as values in the results schema's column order (see results.CORE_FIELDS)."""
        c = completion
        values = [
            *self._identity_values, str(prompt.id), repeat, *sampled,
            c.output, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.total_tokens, c.latency_s, c.ttft_s,
            c.status, c.http_status, c.error, c.attempts, started_at, queue_s,
            _last_user_text(prompt.messages), prompt.reference,
        ]
        if self._tail_names:
            extra = prompt.extra
            values.extend([extra.get(name) for name in self._tail_names])
        return values

    async def _score_and_add(self, values: list[Any]) -> None:
        """Run the scorers over one ok row, add their columns and running means, buffer the row."""
        summary = self.summary
        row = dict(zip(self.writer.column_names, values))
        row["started_at"] = datetime.fromtimestamp(row["started_at"], timezone.utc)
        for scorer in self.scorers:
            scores = await scorer.score(row)
            row.update(scores)
            for key, value in scores.items():
                if is_quality_score(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    summary.score_sums[key] = summary.score_sums.get(key, 0.0) + value
                    summary.score_counts[key] = summary.score_counts.get(key, 0) + 1
        self.writer.add(row)

    # ---- the loop ---------------------------------------------------------------------------
    async def _worker(self, items: Iterator[tuple[Prompt, int]]) -> None:
        summary, writer, gate, complete = self.summary, self.writer, self._gate, self.backend.complete
        for prompt, repeat in items:
            if self._stopping:
                return
            sampling, sampled = self._for_repeat(repeat)
            queued = time.perf_counter()
            if self._unpaced and self._resume_at <= time.monotonic() and gate.try_acquire():
                # The common case, without a coroutine per item: no rate limit, no pause, a free slot.
                started_at = time.time()  # POSIX seconds; the writer stores it as a UTC timestamp
                queue_s = time.perf_counter() - queued
                self._note_first_request()
                sent_at = gate.now()
                try:
                    completion = await complete(prompt.messages, sampling)
                finally:
                    gate.release()
                self._settle(completion, sent_at, 0.0)
                sent = (completion, queue_s, started_at)
                if not self._is_final(completion, 1):
                    sent = await self._send_with_retries(prompt, sampling, queued, first=sent)
            else:
                sent = await self._send_with_retries(prompt, sampling, queued)
            if sent is None:
                continue  # never sent (the run is stopping): a resume will send it
            completion = sent[0]
            if self._auth_error is not None and completion.http_status in (401, 403):
                continue  # not a result: the run stops and the key must be fixed
            values = self._row_values(prompt, repeat, sampled, *sent)
            summary.total += 1
            if completion.status != "ok":
                summary.errors += 1
                writer.add_values(values)
            elif not self.scorers:
                summary.ok += 1
                writer.add_values(values)
            else:
                summary.ok += 1
                await self._score_and_add(values)
            if writer.buffered >= self.config.flush_rows:  # time-based flushes happen in _tick
                writer.flush()
                self._last_flush = time.monotonic()

    def _update_bar(self, *, refresh: bool) -> None:
        bar = self._bar
        if bar is None:
            return
        done = self.summary.total + self.summary.skipped
        bar.set_postfix_str(self._postfix(), refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)  # tqdm decides when to redraw (mininterval)
        elif refresh:
            bar.refresh()

    async def _tick(self) -> None:
        """Progress and time-based flushing, off the per-request path: every quarter second."""
        while True:
            await asyncio.sleep(0.25)
            self._update_bar(refresh=True)
            if self.writer.buffered and time.monotonic() - self._last_flush >= self.config.flush_s:
                self.writer.flush()
                self._last_flush = time.monotonic()

    def _postfix(self) -> str:
        s = self.summary
        text = f"errors={s.errors} retries={s.retries}"
        if self._gate.limit < self._gate.max_limit:
            text += f" concurrency={self._gate.limit}/{self._gate.max_limit}"
        if self._backoff_now:
            text += f" backoff={self._backoff_now:.1f}s"
        return text

    def _stop(self) -> None:
        self._stopping = True
        self._stop_event.set()

    def request_stop(self) -> None:
        """Stop sending new requests (Ctrl-C / SIGTERM); in-flight ones finish and are saved."""
        if not self._stopping:
            self._stop()
            self.summary.interrupted = True
            print("\nsentech-eval: stopping — finishing in-flight requests and saving results "
                  "(press Ctrl-C again to abandon them)...", file=sys.stderr)

    async def run(self, batches: Iterator[list[Prompt]]) -> RunSummary:
        """Run every item; returns the summary. Raises AuthenticationError on a rejected key."""
        self._start = time.perf_counter()
        self._bar = tqdm(total=self.total, unit="req", desc=f"{self.identity.dataset} on {self.identity.backend}", dynamic_ncols=True,
                         mininterval=0.5, disable=not self.config.progress, file=sys.stderr)
        items = self._items(batches)
        loop = asyncio.get_running_loop()
        workers = [asyncio.ensure_future(self._worker(items)) for _ in range(self.config.concurrency)]
        installed = self._install_signal_handlers(loop, workers)
        ticker = asyncio.ensure_future(self._tick())
        gc_thresholds = gc.get_threshold()
        gc.set_threshold(max(GC_YOUNG_THRESHOLD, gc_thresholds[0]), *gc_thresholds[1:])
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            self.summary.interrupted = True
        finally:
            gc.set_threshold(*gc_thresholds)
            ticker.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._update_bar(refresh=False)
            self._bar.close()
            self.summary.elapsed_s = time.perf_counter() - self._start
        if self._auth_error is not None:
            raise self._auth_error
        return self.summary

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop, workers: list[asyncio.Future]) -> list[int]:
        installed = []

        def on_signal() -> None:
            if self._stopping:
                for task in workers:
                    task.cancel()
            else:
                self.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return installed
