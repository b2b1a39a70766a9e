"""When each request of an open-loop run is due: seeded arrival processes.

``arrival_offsets(kind, rate, ...)`` yields, for request 0, 1, 2, …, the seconds after the start
of the run at which it is due. The first is due at 0; the gaps between them are

- ``constant``  exactly ``1 / rate``;
- ``poisson``   exponential with mean ``1 / rate`` (a Poisson process: CV of the gaps = 1);
- ``gamma``     gamma with shape ``burstiness`` and mean ``1 / rate`` (CV = 1 / sqrt(burstiness)):
                burstiness 1 is Poisson, below 1 burstier, above 1 more regular (vLLM's
                ``--burstiness``).

``closed`` is not an arrival process (the next request goes when a slot frees up) and has no
offsets. The gaps come from numpy's PCG64 generator seeded with ``seed``, in blocks, so two runs
with the same seed schedule the same instants and a long schedule costs microseconds per item.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pyarrow as pa

from sentech_eval.config import ARRIVALS, MAX_P99_SEND_LAG_S, MIN_ACHIEVED_FRACTION
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.types import Completion

OPEN_ARRIVALS = ARRIVALS[1:]
BLOCK = 4096


def arrival_gaps(
    kind: str, rate: float, count: int, *, burstiness: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``count`` gaps (seconds) between consecutive arrivals of process ``kind`` at ``rate``/s."""
    if kind not in OPEN_ARRIVALS:
        raise ValueError(f"arrival {kind!r} has no gaps; choose one of {', '.join(OPEN_ARRIVALS)}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests/s, got {rate!r}")
    if kind == "constant":
        return np.full(count, 1.0 / rate)
    rng = rng if rng is not None else np.random.default_rng(0)
    if kind == "poisson":
        return rng.exponential(1.0 / rate, count)
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a positive number, got {burstiness!r}")
    return rng.gamma(burstiness, 1.0 / (rate * burstiness), count)


def arrival_offsets(kind: str, rate: float, *, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Seconds from the run's start at which request 0, 1, 2, … is due (endless; the first is 0)."""
    rng = np.random.default_rng(seed)
    arrival_gaps(kind, rate, 0, burstiness=burstiness, rng=rng)  # check the arguments now, not at first use
    return _offsets(kind, rate, burstiness, rng)


def _offsets(kind: str, rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    now = 0.0
    while True:
        gaps = arrival_gaps(kind, rate, BLOCK, burstiness=burstiness, rng=rng)
        offsets = now + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
        now = float(offsets[-1] + gaps[-1])
        yield from offsets.tolist()


def schedule_report(
    send_offsets: list[float], send_lags: list[float], requested_rps: float
) -> tuple[float | None, float | None, str | None]:
    """(achieved send rate, p99 send lag, a warning or None) of an open-loop run's first attempts."""
    if len(send_offsets) < 2:
        return None, (float(np.percentile(send_lags, 99)) if send_lags else None), None
    offsets = np.sort(np.asarray(send_offsets))
    span = float(offsets[-1] - offsets[0])
    achieved = (len(offsets) - 1) / span if span > 0 else float("inf")
    p99 = float(np.percentile(send_lags, 99))
    problems = []
    if p99 > MAX_P99_SEND_LAG_S:
        problems.append(f"p99 send lag {1000 * p99:.1f} ms > {1000 * MAX_P99_SEND_LAG_S:.0f} ms")
    if achieved < MIN_ACHIEVED_FRACTION * requested_rps:
        problems.append(f"achieved {achieved:.1f} req/s < {MIN_ACHIEVED_FRACTION:.0%} of {requested_rps:g}")
    warning = None
    if problems:
        warning = (
            "the client could not keep its schedule (" + ", ".join(problems) + "): the latencies describe the "
            "client as much as the server; lower runner.rate, raise runner.concurrency, or run the client "
            "on a less loaded machine"
        )
    return achieved, p99, warning


class ArrivalHook(RunHook):
    """The runner's open loop (an ``engine.hooks.RunHook``): each item waits for its send time.

    Items are taken in dataset order by whichever worker is free, and this hook (first in the
    hook list, so nothing awaits before it) gives item i the i-th instant of the schedule; the
    worker then sleeps until that instant. A free worker may take an item early, but at most
    ``runner.concurrency`` requests are ever in flight: an item due while every slot is busy
    waits for one, and that wait shows in ``send_lag_s``. Per row it records ``scheduled_s``
    (seconds after the schedule's start: when the first item was taken), ``send_lag_s`` (how
    late the request went out), ``e2e_from_schedule_s`` (from the scheduled instant to the final
    answer), ``arrival`` and ``request_rate``. With ``arrival="closed"`` it only labels the rows.
    """

    def __init__(
        self,
        arrival: str,
        rate: float | None,
        *,
        burstiness: float = 1.0,
        seed: int = 0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.arrival, self.rate = arrival, rate
        self._schedule = (
            arrival_offsets(arrival, float(rate), burstiness=burstiness, seed=seed)
            if arrival != "closed" and rate is not None
            else None
        )
        self.sleep = sleep or asyncio.sleep  # the runner binds its stop-aware Pacer.sleep
        self._origin = 0.0
        self._started = False
        self._send_offsets: list[float] = []
        self._send_lags: list[float] = []

    def columns(self) -> dict[str, pa.DataType]:
        """scheduled_s, send_lag_s, e2e_from_schedule_s, arrival, request_rate."""
        return {
            "scheduled_s": pa.float64(),
            "send_lag_s": pa.float64(),
            "e2e_from_schedule_s": pa.float64(),
            "arrival": pa.string(),
            "request_rate": pa.float64(),
        }

    async def before_send(self, item: Item) -> Completion | None:
        """Label the row, and in an open loop wait until the item's scheduled instant."""
        item.set_column("arrival", self.arrival)
        item.set_column("request_rate", self.rate)
        if self._schedule is None:
            return None
        scheduled = next(self._schedule)
        if not self._started:
            self._origin, self._started = time.perf_counter(), True
        item.set_column("scheduled_s", scheduled)
        delay = self._origin + scheduled - time.perf_counter()
        if delay > 0:
            await self.sleep(delay)
            item.queued = time.perf_counter()  # queue_s counts waiting for a slot, not for the schedule
        return None

    async def after_final(self, item: Item, completion: Completion) -> None:
        """Record how late the request went out and the latency from its scheduled instant."""
        columns = item.columns
        if self._schedule is None or not columns or "scheduled_s" not in columns:
            return
        due = self._origin + columns["scheduled_s"]
        if item.sent is not None:
            lag = item.sent - due
            columns["send_lag_s"] = lag
            self._send_offsets.append(item.sent - self._origin)
            self._send_lags.append(lag)
        columns["e2e_from_schedule_s"] = time.perf_counter() - due

    def report(self) -> tuple[float | None, float | None, str | None]:
        """(achieved send rate, p99 send lag, a warning or None) of the run so far."""
        if self._schedule is None or self.rate is None:
            return None, None, None
        return schedule_report(self._send_offsets, self._send_lags, self.rate)
