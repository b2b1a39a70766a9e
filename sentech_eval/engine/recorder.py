"""The recorder: one run's rows, scores, counters and flushing.

``add`` turns an item's final ``Completion`` into a results row (the schema's column order, see
``results.CORE_FIELDS``), scores ok rows (``scorers.score_row``, the one scoring path, also used
by ``sentech-eval score``), keeps the counts and running score means of ``RunSummary`` and
flushes the writer every ``flush_rows`` rows; ``flush_if_due`` flushes by time (called off the
per-request path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sentech_eval.engine.hooks import Item
from sentech_eval.engine.results import CORE_NAMES, ResultsWriter, is_quality_score
from sentech_eval.scorers.base import Scorer, score_row
from sentech_eval.types import Completion, last_user_text


@dataclass(frozen=True)
class RunIdentity:
    """Columns that are the same on every row of a run."""

    run_id: str
    config_id: str
    backend: str
    model: str
    dataset: str


@dataclass
class RunSummary:
    """Counts of one run, printed at the end and returned to Hydra."""

    total: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    retries: int = 0
    lowest_concurrency: int | None = None  # set when 429s made the runner lower its concurrency
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM
    stop_reason: str | None = None  # stopped cleanly by a hook (RunHook.on_row)
    elapsed_s: float = 0.0
    first_request_s: float | None = None  # start-up: from run() to the first request sent
    # open loop (engine.arrival.ArrivalHook): the rate asked for, the rate the sends achieved,
    # the p99 of how late they went out, and a warning when the client could not keep up
    requested_rps: float | None = None
    achieved_rps: float | None = None
    send_lag_p99_s: float | None = None
    schedule_warning: str | None = None
    score_sums: dict[str, float] = field(default_factory=dict)
    score_counts: dict[str, int] = field(default_factory=dict)

    def score_means(self) -> dict[str, float]:
        """Mean of each score column over ok rows."""
        return {k: self.score_sums[k] / self.score_counts[k] for k in self.score_sums if self.score_counts[k]}


class Recorder:
    """Rows, scores, counters and flushing for one run."""

    def __init__(
        self,
        writer: ResultsWriter,
        identity: RunIdentity,
        *,
        scorers: list[Scorer] | None = None,
        flush_rows: int = 2000,
        flush_s: float = 2.0,
    ) -> None:
        self.writer = writer
        self.scorers = scorers or []
        self.summary = RunSummary()
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.write_error: OSError | None = None
        self.on_write_error: Callable[[OSError], None] | None = None
        self._last_flush = time.monotonic()
        self._identity_values = (
            identity.run_id,
            identity.config_id,
            identity.backend,
            identity.model,
            identity.dataset,
        )
        # Columns after the core ones: the dataset's extra columns, score columns, hooks' columns.
        self._tail_names = writer.column_names[len(CORE_NAMES) :]

    def values(self, item: Item, c: Completion) -> list[Any]:
        """One result row as values in the results schema's column order."""
        prompt = item.prompt
        values = [
            *self._identity_values,
            str(prompt.id),
            item.repeat,
            *item.sampled,
            c.output,
            c.finish_reason,
            c.response_model,
            c.prompt_tokens,
            c.completion_tokens,
            c.total_tokens,
            c.latency_s,
            c.ttft_s,
            c.status,
            c.http_status,
            c.error,
            c.attempts,
            item.started_at,
            item.queue_s,
            c.tpot_s,
            c.itl_s,
            c.usage_source,
            last_user_text(prompt.messages),
            prompt.reference,
        ]
        if self._tail_names:
            extra, cols = prompt.extra, item.columns
            if cols:
                values.extend([cols[name] if name in cols else extra.get(name) for name in self._tail_names])
            else:
                values.extend([extra.get(name) for name in self._tail_names])
        return values

    def add(self, item: Item, completion: Completion) -> list[Any]:
        """Record an unscored row (an error, or a run without scorers); returns its values."""
        summary = self.summary
        summary.total += 1
        if completion.status == "ok":
            summary.ok += 1
        else:
            summary.errors += 1
        values = self.values(item, completion)
        writer = self.writer
        writer.add_values(values)
        if writer.buffered >= self.flush_rows:
            self.flush()
        return values

    async def add_scored(self, item: Item, completion: Completion) -> dict[str, Any]:
        """Score an ok row, record it with its score columns and running means; returns the row."""
        summary = self.summary
        summary.total += 1
        summary.ok += 1
        row = dict(zip(self.writer.column_names, self.values(item, completion)))
        row["started_at"] = datetime.fromtimestamp(row["started_at"], UTC)
        scores = await score_row(self.scorers, row)
        row.update(scores)
        for key, value in scores.items():
            if is_quality_score(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                summary.score_sums[key] = summary.score_sums.get(key, 0.0) + value
                summary.score_counts[key] = summary.score_counts.get(key, 0) + 1
        self.writer.add(row)
        if self.writer.buffered >= self.flush_rows:
            self.flush()
        return row

    def flush(self) -> None:
        """Write the buffered rows out as a part file.

        A disk that refuses (full, read-only) is reported once to ``on_write_error`` (the runner stops
        sending); the rows stay buffered for the final attempt at close, which says how to finish.
        """
        self._last_flush = time.monotonic()
        if self.write_error is not None:
            return
        try:
            self.writer.flush()
        except OSError as exc:
            self.write_error = exc
            if self.on_write_error is not None:
                self.on_write_error(exc)

    def flush_if_due(self) -> None:
        """Flush when rows have waited ``flush_s`` seconds (called off the per-request path)."""
        if self.writer.buffered and time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
