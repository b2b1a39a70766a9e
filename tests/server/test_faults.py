"""Seeded fault injection: rates honoured, reproducible per seed, each fault visible to a client."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from server_helpers import SEED_BODY, post

from sentech_eval.server.app import ServerOptions
from sentech_eval.server.faults import FaultConfig, FaultInjector
from sentech_eval.server.serving import ServeConfig, worker_config
from sentech_eval.server.testing import running_config, running_server

KEY = "fault-key"


def test_injector_is_reproducible_and_honours_rates():
    config = FaultConfig(error_rate=0.3, error_status=503, drop_rate=0.1, slow_rate=0.2, slow_ms=5)
    first, second = FaultInjector(config, seed=7), FaultInjector(config, seed=7)
    seq1 = [first.next() for _ in range(5000)]
    seq2 = [second.next() for _ in range(5000)]
    assert seq1 == seq2
    other = FaultInjector(config, seed=8)
    assert [other.next() for _ in range(5000)] != seq1
    drops = sum(f.drop for f in seq1) / 5000
    errors = sum(f.error_status == 503 for f in seq1) / 5000
    slow = sum(f.delay_s == 0.005 for f in seq1) / 5000
    assert 0.08 < drops < 0.12
    assert 0.24 < errors < 0.30  # 0.3 of the requests that were not dropped: 0.27
    assert 0.17 < slow < 0.23


def test_no_faults_configured_means_inactive():
    assert not FaultConfig().active
    assert FaultConfig(error_rate=0.1).active


def statuses(url: str, n: int) -> list[int | str]:
    """n sequential requests; a dropped connection shows as 'dropped'."""

    async def go():
        out = []
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            for _ in range(n):
                try:
                    async with session.post(url + "/chat/completions", json=SEED_BODY) as resp:
                        await resp.read()
                        out.append(resp.status)
                except aiohttp.ClientError:
                    out.append("dropped")
        return out

    return asyncio.run(go())


def test_error_rate_with_503_and_retry_after_is_seeded():
    with running_server(api_key=KEY, seed=3, error_rate=0.3, error_status=503, retry_after=2) as url:
        first = statuses(url, 400)
        reply = None
        for _ in range(50):  # find an injected 503 and look at it
            reply = post(url, SEED_BODY, key=KEY)
            if reply.status == 503:
                break
        assert reply is not None and reply.status == 503
        assert reply.headers["Retry-After"] == "2"
        assert "message" in reply.json()
    assert set(first) == {200, 503}
    assert 0.22 < first.count(503) / 400 < 0.38
    with running_server(api_key=KEY, seed=3, error_rate=0.3, error_status=503, retry_after=2) as url:
        assert statuses(url, 400) == first  # same seed, same request order -> same faults
    with running_server(api_key=KEY, seed=4, error_rate=0.3, error_status=503) as url:
        assert statuses(url, 400) != first


def test_a_serve_config_built_directly_seeds_its_faults_with_its_seed():
    """``ServeConfig(seed=5)`` holds the one seed: the server's faults follow FaultInjector(…, seed=5)."""
    faults = FaultConfig(error_rate=0.5, error_status=503)
    config = ServeConfig(seed=5, options=ServerOptions(api_keys=(KEY,), faults=faults)).check()
    injector, other = FaultInjector(faults, seed=5), FaultInjector(faults, seed=0)
    expected = [503 if injector.next().error_status else 200 for _ in range(60)]
    assert expected != [503 if other.next().error_status else 200 for _ in range(60)]  # seed 0 would show
    with running_config(config) as url:
        assert statuses(url, 60) == expected
    workers = [worker_config(config, index) for index in (0, 1)]
    assert [w.seed for w in workers] == [5, 5 + 1_000_003]  # each worker's faults are seeded by its own seed


@pytest.mark.parametrize("status", [500, 429])
def test_error_status_bodies(status):
    with running_server(api_key=KEY, error_rate=1.0, error_status=status, retry_after=1.5) as url:
        reply = post(url, SEED_BODY, key=KEY)
    assert reply.status == status
    if status == 500:
        body = reply.json()
        assert body["message"] == "Internal server error" and body["error"]
        assert "Retry-After" not in reply.headers
    else:
        assert reply.headers["Retry-After"] == "1.5"
        assert reply.json()["message"]


def test_auth_comes_before_faults():
    with running_server(api_key=KEY, error_rate=1.0, error_status=503) as url:
        assert post(url, SEED_BODY, key="wrong").status == 401


def test_drop_rate_closes_connections_without_an_answer():
    with running_server(api_key=KEY, seed=5, drop_rate=0.25) as url:
        first = statuses(url, 300)
    assert set(first) == {200, "dropped"}
    assert 0.17 < first.count("dropped") / 300 < 0.33
    with running_server(api_key=KEY, seed=5, drop_rate=0.25) as url:
        assert statuses(url, 300) == first


def test_slow_rate_delays_some_requests():
    with running_server(api_key=KEY, seed=1, slow_rate=0.3, slow_ms=150) as url:
        times = []
        for _ in range(40):
            start = time.perf_counter()
            assert post(url, SEED_BODY, key=KEY).status == 200
            times.append(time.perf_counter() - start)
    slow = [t for t in times if t >= 0.15]
    fast = [t for t in times if t < 0.1]
    assert len(slow) + len(fast) == 40
    assert 4 <= len(slow) <= 22
