"""The async runner: the only place with concurrency.

A fixed pool of ``concurrency`` worker coroutines pulls items (prompt, repeat) from the dataset
iterator, so memory stays flat however large the dataset is. Each worker runs one per-item loop,
written once: take a slot (``Pacer.try_fast`` when nothing limits the rate, else ``Pacer.wait``),
send, ``Pacer.settle``, then retry after ``Pacer.backoff`` or finish; the ``Recorder`` turns the
final answer into a row. On the common path an item costs no coroutine besides the request.
``latency_s`` is the request itself (from when it was sent); time spent waiting inside the runner
is ``queue_s``, so there is no coordinated omission. A rejected key (401/403) stops the run;
Ctrl-C / SIGTERM stop it too (in-flight items finish and are saved; unsent ones stay unsent, so
a resume sends them).

Extension points (``engine.hooks``; ``Runner(..., hooks=[...])``, none by default):

- before a send — ``RunHook.before_send(item)`` may wait (open-loop arrivals: wait for the item's
  scheduled send time, record ``scheduled_s`` / ``send_lag_s`` from ``item.sent`` in
  ``after_final``) and may answer the item without a request (a cache hit; mark the row with a
  column such as ``cached``). ``RunHook.before_batch`` sees each dataset batch first (the cache
  reads the whole batch's answers in one query).
- after the outcome is final — ``RunHook.after_final(item, completion)`` (a cache write after an
  ok answer; a ``cost_usd`` column through ``item.set_column``).
- after the row is recorded — ``RunHook.on_row(row)`` returns a reason to stop the run cleanly
  (a cost ceiling reached, a confidence interval narrow enough); ``RunSummary.stop_reason`` says why.
Hooks' extra columns (``RunHook.columns()``) go into the results schema (see ``engine.evaluation``).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sentech_eval.backends.base import Backend
from sentech_eval.config import RunnerConfig
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.engine.pacing import Pacer
from sentech_eval.engine.recorder import Recorder, RunIdentity, RunSummary
from sentech_eval.engine.results import ResultsWriter
from sentech_eval.errors import AuthenticationError
from sentech_eval.escaping import terminal_text
from sentech_eval.scorers.base import Scorer
from sentech_eval.types import SAMPLING_PARAMS, Completion, Prompt, Sampling

__all__ = ["Runner", "RunIdentity", "RunSummary", "GC_YOUNG_THRESHOLD"]

# The young-generation GC threshold during a run (Python's default is 700): every request
# allocates and frees hundreds of short-lived containers. Unreachable cycles are still collected,
# in larger batches. Why and how much: benchmarks/README.md.
GC_YOUNG_THRESHOLD = 50_000


class Runner:
    """Runs every (prompt, repeat) of a dataset through one backend and one sampling config."""

    def __init__(
        self,
        backend: Backend,
        sampling: Sampling,
        identity: RunIdentity,
        writer: ResultsWriter,
        config: RunnerConfig,
        *,
        scorers: list[Scorer] | None = None,
        hooks: Sequence[RunHook] = (),
        done_keys: set[tuple[str, int]] | None = None,
        total: int | None = None,
    ) -> None:
        self.backend = backend
        self.sampling = sampling
        self.identity = identity
        self.config = config
        self.scorers = scorers or []
        self.hooks = list(hooks)
        self.done_keys = done_keys or set()
        self.total = total
        self.pacer = Pacer(
            config.concurrency,
            rpm=config.rpm,
            tpm=config.tpm,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
            max_retry_after_s=config.max_retry_after_s,
            seed=sampling.seed,
        )
        self.recorder = Recorder(
            writer, identity, scorers=self.scorers, flush_rows=config.flush_rows, flush_s=config.flush_s
        )
        self.summary = self.recorder.summary
        self.recorder.on_write_error = self._write_failed
        self._auth_error: AuthenticationError | None = None
        self._row_hooks = [h for h in self.hooks if type(h).on_row is not RunHook.on_row]
        self._batch_hooks = [h for h in self.hooks if type(h).before_batch is not RunHook.before_batch]
        # Per repeat: its Sampling (seed + repeat) and that Sampling's column values, built once.
        self._repeats: dict[int, tuple[Sampling, tuple[Any, ...]]] = {}
        self._start = 0.0
        self._bar: Any = None  # a tqdm bar when runner.progress is on

    # ---- items ------------------------------------------------------------------------------
    def _items(self, batches: Iterator[list[Prompt]]) -> Iterator[Item]:
        done, index, batch_hooks = self.done_keys, 0, self._batch_hooks
        for batch in batches:
            for repeat in range(self.config.repeats):
                sampling, sampled = self._for_repeat(repeat)
                if batch_hooks:
                    todo = [p for p in batch if (str(p.id), repeat) not in done] if done else batch
                    for hook in batch_hooks:
                        hook.before_batch(todo, repeat, sampling)
                for prompt in batch:
                    if done and (str(prompt.id), repeat) in done:
                        self.summary.skipped += 1
                        continue
                    yield Item(index, prompt, repeat, sampling, sampled)
                    index += 1

    def _for_repeat(self, repeat: int) -> tuple[Sampling, tuple[Any, ...]]:
        """The Sampling of one repeat (seed + repeat) and its sampling column values."""
        cached = self._repeats.get(repeat)
        if cached is None:
            seed = None if self.sampling.seed is None else self.sampling.seed + repeat
            sampling = self.sampling.with_seed(seed)
            cached = self._repeats[repeat] = (sampling, tuple(getattr(sampling, name) for name in SAMPLING_PARAMS))
        return cached

    # ---- the per-item loop ------------------------------------------------------------------
    async def _worker(self, items: Iterator[Item]) -> None:
        pacer, recorder, complete = self.pacer, self.recorder, self.backend.complete
        hooks, scorers, max_retries = self.hooks, self.scorers, self.config.max_retries
        perf_counter = time.perf_counter
        for item in items:
            if pacer.stopping:
                return
            item.queued = perf_counter()
            prompt, sampling = item.prompt, item.sampling
            completion: Completion | None = None
            if hooks:
                completion = await self._before_send(item)
                if completion is None and pacer.stopping:
                    return  # stopped while the item waited (e.g. for its arrival time): it stays unsent
            if completion is None:
                estimate = pacer.estimate(prompt.messages, sampling.max_tokens)
                attempts, waiting_since = 0, item.queued
                while True:
                    # Wait unless the fast path applies (no rate limit, no pause, a free slot).
                    if not pacer.try_fast() and not await pacer.wait(estimate):
                        break  # the run is stopping: nothing new goes out
                    now = perf_counter()
                    attempts += 1
                    if attempts == 1:
                        item.sent, item.started_at, item.queue_s = now, time.time(), now - item.queued
                        if self.summary.first_request_s is None:
                            self.summary.first_request_s = now - self._start
                    else:
                        item.queue_s += now - waiting_since
                    sent_at = pacer.now()
                    try:
                        completion = await complete(prompt.messages, sampling)
                    finally:
                        pacer.release()
                    pacer.settle(completion, sent_at, estimate)
                    if completion.status == "ok":
                        break
                    if completion.http_status == 401 or completion.http_status == 403:
                        self._reject_key(completion)
                        break
                    if not completion.retryable or attempts > max_retries or pacer.stopping:
                        break
                    self.summary.retries += 1
                    await pacer.backoff(attempts, completion)
                    waiting_since = perf_counter()
                if completion is None:
                    continue  # never sent (the run is stopping): a resume will send it
                completion.attempts = attempts
                if self._auth_error is not None and (completion.http_status == 401 or completion.http_status == 403):
                    continue  # not a result: the run stops and the key must be fixed
            if hooks:
                for hook in hooks:
                    await hook.after_final(item, completion)
            row: list[Any] | dict[str, Any]
            if scorers and completion.status == "ok":
                row = await recorder.add_scored(item, completion)
            else:
                row = recorder.add(item, completion)
            if self._row_hooks:
                self._after_row(row)

    async def _before_send(self, item: Item) -> Completion | None:
        for hook in self.hooks:
            answer = await hook.before_send(item)
            if answer is not None:
                if item.started_at is None:  # a cache hit keeps the original request's start
                    item.started_at = time.time()
                item.queue_s = time.perf_counter() - item.queued
                answer.attempts = 0  # no request was sent for it
                return answer
        return None

    def _after_row(self, row: list[Any] | dict[str, Any]) -> None:
        if isinstance(row, list):
            row = dict(zip(self.recorder.writer.column_names, row))
        for hook in self._row_hooks:
            reason = hook.on_row(row)
            if reason and not self.pacer.stopping:
                self.stop(reason)

    def _reject_key(self, completion: Completion) -> None:
        if self._auth_error is None:
            self._auth_error = AuthenticationError(
                f"The server rejected the API key ({completion.error}); every further request would fail, "
                f"so the run stopped{self.backend.auth_hint}."
            )
        self.pacer.stop()

    # ---- progress, stopping, the run --------------------------------------------------------
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
            self.recorder.flush_if_due()

    def _postfix(self) -> str:
        s = self.summary
        return f"errors={s.errors} retries={s.retries}" + self.pacer.status()

    def stop(self, reason: str) -> None:
        """Stop cleanly (a hook's decision): nothing new is sent; in-flight items finish and are saved."""
        if not self.pacer.stopping:
            self.summary.stop_reason = reason
            self.pacer.stop()

    def _write_failed(self, exc: OSError) -> None:
        """The disk refused a flush: stop sending (unsent items stay unsent; the end of the run says how to resume)."""
        print(
            f"\nsentech-eval: cannot write results ({exc.strerror or exc}); stopping — nothing new is sent.",
            file=sys.stderr,
        )
        if not self.pacer.stopping:
            self.pacer.stop()
            self.summary.interrupted = True

    def request_stop(self) -> None:
        """Stop sending new requests (Ctrl-C / SIGTERM); in-flight ones finish and are saved."""
        if not self.pacer.stopping:
            self.pacer.stop()
            self.summary.interrupted = True
            print(
                "\nsentech-eval: stopping — finishing in-flight requests and saving results "
                "(press Ctrl-C again to abandon them)...",
                file=sys.stderr,
            )

    def worker_count(self) -> int:
        """``runner.concurrency`` workers, but never more than there are items to send (when that is known)."""
        if self.total is None:
            return self.config.concurrency
        return max(1, min(self.config.concurrency, self.total))

    async def run(self, batches: Iterator[list[Prompt]]) -> RunSummary:
        """Run every item; returns the summary. Raises AuthenticationError on a rejected key."""
        self._start = time.perf_counter()
        if self.config.progress:
            from tqdm import tqdm  # third-party, imported only when a bar is shown (start-up: benchmarks/README.md)

            self._bar = tqdm(
                total=self.total,
                unit="req",
                desc=terminal_text(f"{self.identity.dataset} on {self.identity.backend}"),
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )
        items = self._items(batches)
        loop = asyncio.get_running_loop()
        workers = [asyncio.ensure_future(self._worker(items)) for _ in range(self.worker_count())]
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
            self.summary.lowest_concurrency = self.pacer.lowest_concurrency
            if self._bar is not None:
                self._update_bar(refresh=False)
                self._bar.close()
            self.summary.elapsed_s = time.perf_counter() - self._start
        if self._auth_error is not None:
            raise self._auth_error
        return self.summary

    def _install_signal_handlers(
        self, loop: asyncio.AbstractEventLoop, workers: Sequence[asyncio.Future[Any]]
    ) -> list[signal.Signals]:
        installed: list[signal.Signals] = []

        def on_signal() -> None:
            if self.pacer.stopping:
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
