"""Runner hooks that spend wisely: a price on every row, a cost ceiling, a stop once precise enough.

- ``CostHook`` fills ``cost_usd`` on every row from ``backend.price``: tokens × price per million
  (input and output), plus ``per_hour`` × the request's share of the machine — its latency divided
  by the concurrency (requests served at once). With ``runner.max_cost_usd`` it stops the run
  cleanly once the run dir's rows (earlier runs into the same dir included) cost that much.
- ``PrecisionStopHook`` (``runner.stop_at_ci_half_width`` with ``runner.stop_score``) feeds each
  prompt's score (mean over its repeats) into an anytime-valid confidence sequence
  (``engine.race.anytime_interval``) in the order the prompts were sent — a prompt enters once it
  and every prompt before it are done, so the order of completion cannot bias it — and stops the
  run once the interval's half-width is at most the target. The interval is valid however often it
  is checked, so stopping on it keeps its coverage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from sentech_eval.config import Price
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.engine.race import anytime_interval
from sentech_eval.types import Completion

COST_COLUMN = "cost_usd"
CHECK_GROWTH = 1.02  # the interval is recomputed each time the sequence grows by 2 % (anytime-valid: any schedule)


class CostHook(RunHook):
    """``cost_usd`` per row, and the ``runner.max_cost_usd`` ceiling."""

    def __init__(
        self, price: Price, concurrency: int, *, spent_before: float = 0.0, max_cost_usd: float | None = None
    ) -> None:
        self.price = price
        self.concurrency = max(1, concurrency)
        self.spent = spent_before
        self.max_cost_usd = max_cost_usd
        self.reached = False  # the ceiling stopped the run

    def columns(self) -> dict[str, pa.DataType]:
        """The ``cost_usd`` column."""
        return {COST_COLUMN: pa.float64()}

    def row_cost(self, completion: Completion) -> float:
        """What one request cost: its tokens, and its share of the machine's hour."""
        cost = self.price.request_cost(completion.prompt_tokens, completion.completion_tokens)
        if self.price.per_hour and completion.latency_s:
            cost += self.price.per_hour * completion.latency_s / 3600.0 / self.concurrency
        return cost

    async def after_final(self, item: Item, completion: Completion) -> None:
        """Price the row."""
        cost = self.row_cost(completion)
        item.set_column(COST_COLUMN, cost)
        self.spent += cost

    def on_row(self, row: Mapping[str, Any]) -> str | None:
        """Stop once the ceiling is reached."""
        if self.max_cost_usd is not None and self.spent >= self.max_cost_usd:
            self.reached = True
            return (
                f"runner.max_cost_usd={self.max_cost_usd:g} reached (${self.spent:.4f} spent in this run dir then; "
                "the requests already in flight were finished and count too, see the cost above); re-run into "
                "the same dir with a higher runner.max_cost_usd to send the rest"
            )
        return None


class PrecisionStopHook(RunHook):
    """Stop once the anytime-valid interval of one score is narrow enough."""

    def __init__(
        self,
        score: str,
        half_width: float,
        order: Iterable[Any],
        repeats: int,
        *,
        confidence: float = 0.95,
        done: Mapping[str, list[float]] | None = None,
    ) -> None:
        self.score, self.half_width, self.repeats, self.confidence = score, half_width, repeats, confidence
        self.rank = {str(pid): k for k, pid in enumerate(order)}
        self.pending: dict[str, list[float]] = {}
        self.ready: dict[int, float] = {}
        self.sequence: list[float] = []
        self.next_check = 2
        self.interval: tuple[float, float, float] | None = None
        self.reached = False  # the interval was narrow enough: it stopped the run
        for pid, values in (done or {}).items():
            for value in values:
                self._add(pid, value)

    def _add(self, pid: str, value: float) -> None:
        values = self.pending.setdefault(pid, [])
        values.append(value)
        if len(values) < self.repeats:
            return
        del self.pending[pid]
        rank = self.rank.get(pid)
        if rank is None:
            return
        finite = [v for v in values if not math.isnan(v)]
        self.ready[rank] = sum(finite) / len(finite) if finite else math.nan
        while len(self.sequence) in self.ready:  # the next prompt in sending order is done
            self.sequence.append(self.ready.pop(len(self.sequence)))

    def on_row(self, row: Mapping[str, Any]) -> str | None:
        """Add the row's score; check the interval when the sequence has grown enough."""
        value = row.get(self.score) if row.get("status") == "ok" else None
        self._add(str(row.get("prompt_id")), math.nan if value is None else float(value))
        if len(self.sequence) < self.next_check:
            return None
        self.next_check = max(len(self.sequence) + 1, int(len(self.sequence) * CHECK_GROWTH))
        mean, low, high = anytime_interval(np.asarray(self.sequence), self.confidence)
        self.interval = (mean, low, high)
        if not math.isnan(low) and (high - low) / 2 <= self.half_width:
            self.reached = True
            return (
                f"the anytime-valid {self.confidence:.0%} interval of {self.score} is [{low:.3f}, {high:.3f}] "
                f"(mean {mean:.3f}, half-width {(high - low) / 2:.3f} <= runner.stop_at_ci_half_width="
                f"{self.half_width:g}) after {len(self.sequence)} prompts"
            )
        return None
