"""SLOs, goodput, quality goodput, percentiles and the knee, on results whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sentech_eval.analysis.slo import (
    SLO,
    check_slo,
    flat_gaps,
    load_summary,
    meets_slo,
    parse_slo,
    saturation_knee,
    schedule_kept,
)
from sentech_eval.errors import ConfigError


def _rows(n=10, start=0.0, spacing=0.1, latency=0.5, ttft=0.1, tokens=5, **extra) -> pd.DataFrame:
    started = pd.to_datetime(start + spacing * np.arange(n), unit="s", utc=True)
    frame = pd.DataFrame(
        {
            "config_id": "c1",
            "dataset": "d",
            "status": "ok",
            "started_at": started,
            "latency_s": latency,
            "ttft_s": ttft,
            "completion_tokens": tokens,
            "tpot_s": (latency - ttft) / (tokens - 1),
            "itl_s": [[(latency - ttft) / (tokens - 1)] * (tokens - 1)] * n,
            "arrival": "constant",
            "request_rate": 1 / spacing,
            "send_lag_s": 0.001,
        }
    )
    for key, value in extra.items():
        frame[key] = value
    return frame


def test_parse_slo_reads_limits_and_score_and_names_a_bad_one():
    slo = parse_slo(["slo.ttft_s=0.5", "slo.tpot_s=0.05", "slo.latency_s=2", "slo.score=score_contains"])
    assert slo == SLO(ttft_s=0.5, tpot_s=0.05, latency_s=2.0, score="contains")
    for bad, text in (
        ("slo.ttft=1", "not an SLO"),
        ("ttft_s=1", "not an SLO"),
        ("slo.latency_s=-1", "positive"),
        ("slo.latency_s=fast", "positive"),
        ("slo.score=", "needs a score name"),
    ):
        with pytest.raises(ConfigError, match=text):
            parse_slo([bad])


def test_a_row_meets_the_slo_only_if_ok_and_within_every_limit():
    df = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "error", "ok", "ok"],
            "ttft_s": [0.1, 0.6, 0.1, 0.1, None, 0.1],
            "tpot_s": [0.01, 0.01, 0.2, 0.01, 0.01, None],
            "completion_tokens": [5, 5, 5, 5, 5, 1],
        }
    )
    assert meets_slo(df, SLO(ttft_s=0.5, tpot_s=0.05)).tolist() == [True, False, False, False, False, True]


def test_goodput_attainment_and_quality_goodput_count_the_right_rows():
    df = _rows(n=10, spacing=0.1, latency=0.5)  # sends over 0.9 s, the last answer at 1.4 s
    df.loc[[0, 1, 2], "latency_s"] = 3.0  # three too slow (the run now lasts 0.2 + 3 = 3.2 s)
    df["score_contains"] = [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
    row = load_summary(df, SLO(latency_s=2.0, score="contains")).iloc[0]
    assert row["n"] == 10 and row["duration_s"] == pytest.approx(3.2)
    assert row["slo_attainment"] == pytest.approx(0.7)
    assert row["goodput_rps"] == pytest.approx(7 / 3.2)
    assert row["quality_goodput_rps"] == pytest.approx(5 / 3.2)
    assert row["achieved_rps"] == pytest.approx(10.0)
    assert row["latency_s_p50"] == pytest.approx(0.5) and row["latency_s_p99"] == pytest.approx(3.0)


def test_itl_percentiles_pool_every_gap_of_every_row():
    assert flat_gaps(pd.Series([[0.1, 0.2], None, [], np.array([0.3])])).tolist() == [0.1, 0.2, 0.3]
    df = _rows(n=4)
    df["itl_s"] = [[0.01] * 99, [0.01] * 99, [0.01] * 99, [1.0] * 3]  # 300 gaps, 1 % of them slow
    row = load_summary(df).iloc[0]
    assert row["itl_s_p50"] == pytest.approx(0.01) and row["itl_s_p95"] == pytest.approx(0.01)
    assert row["itl_s_p99"] > 0.01


def test_each_load_level_is_its_own_row_and_a_late_client_is_flagged():
    fast = _rows(n=20, spacing=0.05)
    slow = _rows(n=20, spacing=0.1, request_rate=20.0)  # asked for 20/s, sent 10/s
    summary = load_summary(pd.concat([fast, slow], ignore_index=True))
    assert summary["request_rate"].tolist() == [20.0, 20.0] or len(summary) == 1  # same rate: one level
    slow["request_rate"] = 40.0
    summary = load_summary(pd.concat([fast, slow], ignore_index=True))
    assert len(summary) == 2
    kept = dict(zip(summary["request_rate"], summary["schedule_kept"]))
    assert kept == {20.0: True, 40.0: False}
    assert schedule_kept(200.0, 200.0, 0.011) is False and schedule_kept(197.0, 200.0, 0.001) is True
    assert schedule_kept(float("nan"), None, float("nan")) is None


def test_check_slo_refuses_a_metric_the_run_never_recorded():
    df = _rows().assign(ttft_s=None)
    with pytest.raises(ConfigError, match="backend.stream=true"):
        check_slo(df, SLO(ttft_s=0.5))
    with pytest.raises(ConfigError, match="scores present: none"):
        check_slo(_rows(), SLO(score="contains"))


def _mdc_p99_latency(rate: float, servers: int, service_s: float, duration_s: float = 20.0) -> float:
    """p99 latency of constant arrivals at ``rate`` through ``servers`` FIFO servers of fixed
    service time: the queueing truth, simulated exactly."""
    arrivals = np.arange(0, duration_s, 1 / rate)
    free = np.zeros(servers)
    latency = np.empty(arrivals.size)
    for i, t in enumerate(arrivals):
        k = int(np.argmin(free))
        begin = max(t, free[k])
        free[k] = begin + service_s
        latency[i] = free[k] - t
    return float(np.percentile(latency, 99))


def test_the_knee_of_a_queueing_curve_is_at_capacity_over_service_time():
    # capacity 32, 100 ms a request: saturation at 320 requests/s
    rates = [80, 160, 240, 280, 300, 310, 330, 350, 400, 480]
    p99 = [_mdc_p99_latency(r, 32, 0.1) for r in rates]
    knee = saturation_knee(rates, p99)
    assert knee is not None and abs(rates[knee] - 320) / 320 <= 0.10
    assert saturation_knee([1, 2, 4, 8], [0.1, 0.1, 0.105, 0.1]) is None  # flat: never saturated
    assert saturation_knee([10, 20, 30], [0.1, math.nan, 5.0]) == 0  # NaN points are skipped
