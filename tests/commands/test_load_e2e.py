"""End to end: a load sweep (`+sweep=load`) against `serve --capacity`, then `report` with SLOs.

The small, fast form of benchmarks/bench_load.py's knee: capacity 8 and 200 ms a request saturate
at 40 requests/s (queueing truth); the report must put the knee within 10 % of it, count goodput
against the SLO, and record the open-loop columns on every row.
"""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli, run_cli

from sentech_eval.analysis.slo import saturation_knee
from sentech_eval.server.testing import running_server

RATES = (20, 30, 37, 43, 50, 60)
TRUTH = 8 / 0.2
ROWS = 80


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    dataset = root / "prompts.parquet"
    pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(ROWS)],
            "prompt": [f"say {i}" for i in range(ROWS)],
            "reference": [f"say {i}" for i in range(ROWS)],
        }
    ).to_parquet(dataset)
    with running_server(api_key=TEST_KEY, capacity=8, ttft_ms=200, output_tokens=1, subprocess=True) as url:
        proc = run_cli(
            "run",
            "+sweep=load",
            "backend=remote",
            f"backend.base_url={url}",
            f"dataset.path={dataset}",
            "runner.arrival=constant",
            "runner.rate=" + ",".join(map(str, RATES)),
            "runner.progress=false",
            "scorers=[contains]",
            f"hydra.sweep.dir={root / 'S'}",
            env={"SENTECH_API_KEY": TEST_KEY},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "S"


def test_every_row_records_its_schedule(sweep):
    from sentech_eval import load_results

    df = load_results(sweep)
    assert len(df) == ROWS * len(RATES) and set(df["status"]) == {"ok"}
    assert set(df["arrival"]) == {"constant"} and sorted(df["request_rate"].unique()) == list(RATES)
    for rate, part in df.groupby("request_rate"):
        scheduled = part["scheduled_s"].sort_values().to_numpy()
        assert scheduled[0] == 0 and scheduled[-1] == pytest.approx((ROWS - 1) / rate)
    assert (df["send_lag_s"] >= 0).all()
    assert (df["e2e_from_schedule_s"] >= df["latency_s"] - 1e-6).all()  # from the schedule: never shorter
    assert df["itl_s"].notna().all() and df["usage_source"].eq("server").all()  # the sweep streams


def test_report_finds_the_knee_at_capacity_over_service_time_and_counts_goodput(sweep):
    proc = call_cli("report", str(sweep), "slo.ttft_s=0.3", "slo.latency_s=0.3", "slo.score=contains")
    assert proc.returncode == 0, proc.stderr
    assert "saturation knee" in proc.stdout and "goodput_rps" in proc.stdout
    load = pd.read_parquet(sweep / "load.parquet").sort_values("request_rate")
    assert len(load) == len(RATES)
    index = saturation_knee(load["achieved_rps"].tolist(), load["latency_s_p99"].tolist())
    assert index is not None
    knee = load["achieved_rps"].iloc[index]
    assert abs(knee - TRUTH) / TRUTH <= 0.10, load[["request_rate", "achieved_rps", "latency_s_p99"]]
    below = load[load["request_rate"] < TRUTH * 0.9]
    assert (below["slo_attainment"] > 0.95).all()  # unsaturated: (nearly) every request within 300 ms
    assert load["slo_attainment"].iloc[-1] < below["slo_attainment"].min()  # saturated: requests queue
    assert (load["quality_goodput_rps"] <= load["goodput_rps"] + 1e-9).all()
    page = (sweep / "report.html").read_text()
    assert "Saturation knee" in page and "Load (SLO:" in page


def test_bad_slo_and_bad_arrival_are_one_sentence_and_exit_2(sweep, tmp_path):
    proc = call_cli("report", str(sweep), "slo.ttft=1")
    assert proc.returncode == 2 and "not an SLO" in proc.stderr and "Traceback" not in proc.stderr
    proc = call_cli(
        "run",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        "runner.rate=5",
        f"hydra.run.dir={tmp_path / 'x'}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 2 and "runner.arrival=poisson" in proc.stderr and "Traceback" not in proc.stderr


def test_rate_auto_probes_the_closed_loop_maximum_then_sweeps_fractions_of_it(tmp_path):
    from sentech_eval import load_results
    from sentech_eval.engine.evaluation import AUTO_FRACTIONS

    dataset = tmp_path / "prompts.parquet"
    rows = 14 * (len(AUTO_FRACTIONS) + 1)
    pd.DataFrame({"id": [f"p{i}" for i in range(rows)], "prompt": [f"say {i}" for i in range(rows)]}).to_parquet(
        dataset
    )
    with running_server(api_key=TEST_KEY, capacity=4, ttft_ms=50, output_tokens=1) as url:
        proc = run_cli(
            "run",
            "backend=remote",
            f"backend.base_url={url}",
            f"dataset.path={dataset}",
            "runner.concurrency=4",
            "runner.arrival=poisson",
            "runner.rate=auto",
            "runner.progress=false",
            f"hydra.run.dir={tmp_path / 'A'}",
            env={"SENTECH_API_KEY": TEST_KEY},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "closed-loop maximum" in proc.stderr
    df = load_results(tmp_path / "A")
    assert len(df) == rows and df["prompt_id"].is_unique  # every prompt once: the levels take consecutive slices
    probe = df[df["arrival"] == "closed"]
    assert len(probe) == 14 and probe["request_rate"].isna().all()
    levels = df[df["arrival"] == "poisson"].groupby("request_rate").size()
    assert len(levels) == len(AUTO_FRACTIONS) and (levels == 14).all()
    maximum = levels.index.max() / max(AUTO_FRACTIONS)
    assert 20 <= maximum <= 90  # 4 slots of 50 ms: at most 80 req/s
    assert levels.index.tolist() == pytest.approx([round(f * maximum, 3) for f in AUTO_FRACTIONS], rel=1e-3)
