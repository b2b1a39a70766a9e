"""Rate limits (rpm/tpm token buckets) against the real server, and the pacing primitives themselves.

Spacing is checked on the rows' ``started_at`` (when each request was sent), not on wall-clock
asserts: a bucket of ``capacity`` refilled at ``rate`` per second lets at most
``capacity + rate * (t_j - t_i)`` requests start in any window [t_i, t_j].
"""

from __future__ import annotations

import asyncio
import random

import pytest
from reliability_support import call_cli, new_key, remote_run_args, rows

from sentech_eval.engine.pacing import RETRY_AFTER_CEILING_S, AdaptiveConcurrency, TokenBucket, backoff_delay
from sentech_eval.server.testing import running_server


def test_rpm_is_enforced_across_concurrent_requests(tmp_path):
    key = new_key()
    rpm, n = 600, 20
    with running_server(engine="echo", api_key=key) as url:
        result = call_cli(
            *remote_run_args(url, tmp_path / "run", f"dataset.limit={n}", f"runner.rpm={rpm}", "runner.concurrency=16"),
            key=key,
        )
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == n and (df["status"] == "ok").all()
    starts = sorted(t.timestamp() for t in df["started_at"])
    rate, capacity = rpm / 60, max(1.0, rpm / 60)
    for i in range(n):
        for j in range(i + 1, n):
            needed = (j - i + 1 - capacity) / rate  # seconds the bucket needs to refill for these starts
            assert starts[j] - starts[i] >= needed - 0.02, (i, j, starts[j] - starts[i], needed)
    assert starts[-1] - starts[0] >= (n - capacity) / rate - 0.02
    print(f"rpm={rpm}: {n} requests started over {starts[-1] - starts[0]:.2f} s")


def test_tpm_is_enforced(tmp_path):
    key = new_key()
    tpm, n = 4800, 10
    with running_server(engine="echo", api_key=key) as url:
        result = call_cli(
            *remote_run_args(
                url,
                tmp_path / "run",
                f"dataset.limit={n}",
                f"runner.tpm={tpm}",
                "sampling.max_tokens=8",
                "runner.concurrency=16",
            ),
            key=key,
        )
    assert result.returncode == 0, result.stderr
    df = rows(tmp_path / "run")
    assert len(df) == n and (df["status"] == "ok").all()
    tokens = int(df["total_tokens"].sum())
    starts = sorted(t.timestamp() for t in df["started_at"])
    span = starts[-1] - starts[0]
    rate = tpm / 60
    # Every token but the first bucketful (and the last request's own) had to be refilled first.
    expected = (tokens - rate - df["total_tokens"].max()) / rate
    print(f"tpm={tpm}: {tokens} tokens in {n} requests started over {span:.2f} s (bound {expected:.2f} s)")
    assert expected > 0.5  # the test is meaningful: without the limit this takes milliseconds
    assert span >= expected * 0.8


# ---- the primitives ------------------------------------------------------------------------------
def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(1)
    for attempt in range(1, 12):
        expo = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, base_s=0.5, max_s=8.0, retry_after_s=None, rng=rng) for _ in range(200)]
        assert all(expo / 2 <= d <= expo for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed schedule


def test_retry_after_is_a_floor_even_above_backoff_max():
    rng = random.Random(1)
    assert backoff_delay(1, base_s=0.01, max_s=0.2, retry_after_s=3.0, rng=rng) == 3.0
    assert backoff_delay(1, base_s=0.01, max_s=0.2, retry_after_s=0.0, rng=rng) <= 0.01
    assert backoff_delay(1, base_s=0.01, max_s=0.2, retry_after_s=10**9, rng=rng) == RETRY_AFTER_CEILING_S


def test_token_bucket_paces_after_its_burst():
    async def main() -> float:
        bucket = TokenBucket(1200)  # 20/s, capacity 20
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(30):
            await bucket.acquire(1)
        return loop.time() - t0

    elapsed = asyncio.run(main())
    assert elapsed >= (30 - 20) / 20 * 0.95


def test_adaptive_concurrency_halves_once_per_burst_and_grows_back():
    now = [0.0]
    gate = AdaptiveConcurrency(16, clock=lambda: now[0])
    sent = gate.now()
    now[0] = 1.0
    for _ in range(16):  # a burst of 429s for requests that were all in flight together
        gate.on_rate_limited(sent)
    assert gate.limit == 8
    now[0] = 2.0
    gate.on_rate_limited(gate.now())  # a request sent after the decrease: a new burst
    assert gate.limit == 4
    for _ in range(2 * 4):
        gate.on_success()
    assert gate.limit == 5
    for _ in range(1000):
        gate.on_success()
    assert gate.limit == 16  # never above the configured concurrency


def test_adaptive_concurrency_limits_in_flight():
    async def main() -> int:
        gate = AdaptiveConcurrency(4)
        gate.on_rate_limited()
        in_flight = peak = 0

        async def one() -> None:
            nonlocal in_flight, peak
            await gate.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            gate.release()

        await asyncio.gather(*(one() for _ in range(50)))
        return peak

    assert asyncio.run(main()) == 2


@pytest.mark.parametrize("limit", [1, 3])
def test_try_acquire_respects_the_limit(limit):
    gate = AdaptiveConcurrency(limit)
    assert [gate.try_acquire() for _ in range(limit + 2)] == [True] * limit + [False, False]
