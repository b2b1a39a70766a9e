"""Cost per row, the cost ceiling and the precision stop, through the real CLI against the echo server."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TEST_KEY, call_cli

from sentech_eval import load_results
from sentech_eval.backends.base import create_backend
from sentech_eval.config import Price, backend_from_config
from sentech_eval.engine.budget import CostHook, PrecisionStopHook
from sentech_eval.errors import BackendError
from sentech_eval.types import Completion

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}
REPO = Path(__file__).resolve().parents[2]
PRICE = ("backend.price.input_per_mtok=1000", "backend.price.output_per_mtok=2000")  # typed as written: no +


def run(echo_server, run_dir, *extra):
    return call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "runner.progress=false",
        "runner.concurrency=4",
        f"hydra.run.dir={run_dir}",
        *extra,
        env=KEY_ENV,
    )


def test_rows_carry_their_cost_and_the_run_prints_the_total(echo_server, tmp_path):
    proc = run(echo_server, tmp_path / "r", *PRICE, "dataset.limit=20")
    assert proc.returncode == 0, proc.stderr
    df = load_results(tmp_path / "r")
    expected = (df["prompt_tokens"] * 1000 + df["completion_tokens"] * 2000) / 1e6
    np.testing.assert_allclose(df["cost_usd"], expected)
    assert f"cost ${expected.sum():.4f}" in proc.stderr


def test_cost_ceiling_stops_cleanly_and_a_resume_sends_only_the_rest(echo_server, tmp_path):
    run_dir = tmp_path / "r"
    proc = run(echo_server, run_dir, *PRICE, "runner.max_cost_usd=0.2")
    assert proc.returncode == 0, proc.stderr
    assert "stopped early: runner.max_cost_usd=0.2 reached" in proc.stderr and "hydra.run.dir=" in proc.stderr
    first = load_results(run_dir)
    assert 5 < len(first) < 150 and first["cost_usd"].sum() >= 0.2
    assert first["cost_usd"].sum() - first["cost_usd"].max() * 4 < 0.2  # at most the in-flight requests overshoot
    # the printed resume command raises the ceiling (the same ceiling would stop again at once)
    resume = proc.stderr.split("with the ceiling doubled) with:\n", 1)[1].splitlines()[0]
    assert "runner.max_cost_usd=0.4" in resume and "runner.max_cost_usd=0.2" not in resume
    proc = run(echo_server, run_dir, *PRICE, "runner.max_cost_usd=100")
    assert proc.returncode == 0, proc.stderr
    both = load_results(run_dir)
    assert len(both) == 150 and both["prompt_id"].is_unique


def test_max_cost_without_a_price_is_one_sentence(echo_server, tmp_path):
    proc = run(echo_server, tmp_path / "r", "runner.max_cost_usd=1")
    assert proc.returncode == 2
    assert "needs backend.price" in proc.stderr and "Traceback" not in proc.stderr


def test_precision_stop_ends_the_run_once_the_interval_is_narrow(echo_server, tmp_path):
    proc = run(
        echo_server,
        tmp_path / "r",
        "scorers=[contains]",
        "runner.stop_at_ci_half_width=0.1",
        "runner.stop_score=contains",
    )
    assert proc.returncode == 0, proc.stderr
    assert "stopped early: the anytime-valid 95% interval of score_contains" in proc.stderr
    df = load_results(tmp_path / "r")
    assert len(df) < 150  # the echo server is always right: the interval narrows long before the end
    resume = proc.stderr.split("without the precision stop) with:\n", 1)[1].splitlines()[0]
    assert "runner.stop_at_ci_half_width=null" in resume and "runner.stop_at_ci_half_width=0.1" not in resume
    proc = run(
        echo_server,
        tmp_path / "r",
        "scorers=[contains]",
        "runner.stop_at_ci_half_width=null",
        "runner.stop_score=contains",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(load_results(tmp_path / "r")) == 150 and "stopped early" not in proc.stderr


def test_precision_stop_needs_its_scorer(echo_server, tmp_path):
    proc = run(echo_server, tmp_path / "r", "runner.stop_at_ci_half_width=0.1", "runner.stop_score=contains")
    assert proc.returncode == 2 and "no scorer of this run writes score_contains" in proc.stderr


def test_precision_hook_takes_prompts_in_sending_order_whatever_the_completion_order():
    hook = PrecisionStopHook("s", 0.0001, order=["a", "b", "c"], repeats=2, done={"a": [1.0]})
    for pid, value in [("c", 0.0), ("b", 1.0), ("c", 0.0)]:
        hook.on_row({"prompt_id": pid, "status": "ok", "s": value})
    assert hook.sequence == []  # a still misses a repeat: nothing enters
    hook.on_row({"prompt_id": "a", "status": "error", "s": None})
    hook.on_row({"prompt_id": "b", "status": "ok", "s": 0.0})
    assert hook.sequence == [1.0, 0.5, 0.0]


def test_cost_hook_prices_machine_time_by_concurrency():
    hook = CostHook(Price(per_hour=3600.0), concurrency=4, max_cost_usd=1.0)
    completion = Completion(status="ok", latency_s=2.0, prompt_tokens=10, completion_tokens=5)
    assert hook.row_cost(completion) == pytest.approx(0.5)  # 2 s of a $1/s machine shared by 4
    assert math.isclose(Price(input_per_mtok=1.0, output_per_mtok=2.0).request_cost(10, 5), 20 / 1e6)


@pytest.mark.parametrize("name", ["remote", "local"])
def test_a_backend_node_with_a_price_still_builds_its_backend(name, monkeypatch):
    """``backend.price`` is a field of every backend's schema: judges and compare --judge build backends from
    the same node."""
    assert "backend.price." in (REPO / "conf" / "backend" / f"{name}.yaml").read_text()  # the example is shipped
    node = backend_from_config({"kind": name, "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    if name == "local":
        node = dataclasses.replace(node, model_path="/nonexistent/model.gguf")  # past the key check
        with pytest.raises(BackendError, match="model"):
            create_backend(node, concurrency=1)
    else:
        monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
        assert create_backend(node, concurrency=1).model
