"""The runner's extension points: the ``Item`` every hook sees, and ``RunHook`` with no-op defaults.

A hook is passed to ``Runner(..., hooks=[...])``; the runner calls, per item, in this order:

0. ``before_batch(prompts, repeat, sampling)`` — once per dataset batch and repeat, before its
   items are handed out (synchronous): work out something for the whole batch at once (the
   cache reads the batch's answers in one query instead of one per item).
1. ``before_send(item)`` — before any pacing or request. May wait (an open-loop arrival waits for
   its scheduled send time) and may answer the item itself by returning a ``Completion`` (a cache
   hit): then no request is sent. The first hook that returns a completion wins. A hook that
   answers may set ``item.started_at`` (a cache hit keeps the original request's start).
2. the send loop (pacing, send, settle, retry) — not hookable.
3. ``after_final(item, completion)`` — once the item's outcome is final, before its row is
   recorded (a cache write; computing a column such as ``cost_usd``). Not called for an item
   that was never sent, nor for a rejected key (401/403: the run stops).
4. ``on_row(row)`` — after the row (with its scores) is recorded. Return a reason (a sentence) to
   stop the run cleanly: nothing new is sent, in-flight items finish and are saved.

Columns: ``columns()`` names the extra result columns the hook fills (Arrow types); the
evaluation adds them to the schema, and a hook fills them through ``item.columns[name] = value``
(a column left unset is null). With no hooks the runner skips all of this (the fast path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from sentech_eval.types import Completion, Prompt, Sampling


@dataclass(slots=True, eq=False)
class Item:
    """One (prompt, repeat) on its way through the runner.

    ``index`` counts items in dataset order from 0 (skipped resume rows excluded). Times:
    ``queued`` is ``time.perf_counter()`` when a worker took the item, ``sent`` when its first
    request went out (None if none did), ``started_at`` the same moment as POSIX seconds;
    ``queue_s`` is the time spent waiting inside the runner (pacing, pauses; not backoff).
    """

    index: int
    prompt: Prompt
    repeat: int
    sampling: Sampling
    sampled: tuple[Any, ...]  # the sampling column values of this repeat, in SAMPLING_PARAMS order
    queued: float = 0.0
    sent: float | None = None
    started_at: float | None = None
    queue_s: float = 0.0
    columns: dict[str, Any] | None = None  # extra result columns set by hooks

    def set_column(self, name: str, value: Any) -> None:
        """Fill one of a hook's extra result columns for this item's row."""
        if self.columns is None:
            self.columns = {}
        self.columns[name] = value


class RunHook:
    """A runner extension: override what you need; every default does nothing."""

    def columns(self) -> dict[str, pa.DataType]:
        """Extra result columns this hook fills, with their Arrow types."""
        return {}

    def before_batch(self, prompts: Sequence[Prompt], repeat: int, sampling: Sampling) -> None:
        """Called once per dataset batch and repeat (resumed rows left out), before its items are sent."""
        return None

    async def before_send(self, item: Item) -> Completion | None:
        """Called before pacing; may wait; return a Completion to answer the item without a request."""
        return None

    async def after_final(self, item: Item, completion: Completion) -> None:
        """Called once the item's outcome is final, before its row is recorded."""
        return None

    def on_row(self, row: Mapping[str, Any]) -> str | None:
        """Called after a row is recorded (scores included); return a reason to stop the run cleanly."""
        return None
