"""`sentech-eval run … --estimate`: requests, tokens, cost and wall time before anything is sent."""

from __future__ import annotations

import re

from cli_helpers import TEST_KEY, run_cli

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}


def test_estimate_of_one_run_sends_nothing_and_prices_the_tokens(tmp_path):
    proc = run_cli(
        "run",
        "--estimate=noprobe",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        "dataset=capitals",
        "runner.repeats=2",
        "sampling.max_tokens=10",
        "+backend.price={input_per_mtok: 1.0, output_per_mtok: 2.0}",
        cwd=tmp_path,
        env=KEY_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "1 run(s), 300 requests" in last  # 150 capitals x 2 repeats; port 9 was never contacted
    assert "≤3,000 output tokens" in last  # no history: bounded by max_tokens
    input_tokens = float(re.search(r"~([\d,]+) input tokens", last).group(1).replace(",", ""))
    cost = float(re.search(r"\$([\d.]+)", last).group(1))
    assert abs(cost - (input_tokens * 1.0 + 3000 * 2.0) / 1e6) < 1e-4
    assert not (tmp_path / "results").exists()


def test_estimate_of_a_sweep_lists_every_job_and_uses_a_probe(echo_server, tmp_path):
    proc = run_cli(
        "run",
        "--estimate",
        "+sweep=race_temperature",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        cwd=tmp_path,
        env=KEY_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 16 and "15 run(s), 2,250 requests" in lines[-1]
    assert "for the full grid" in lines[-1] and "probe of 3 requests" in lines[-1]
    assert "probing with 3 requests" in proc.stderr
    assert "unknown" not in lines[-1]  # the probe measured latency: a wall time is given
    # each job is named by its swept settings only (not backend.base_url, dataset … shared by all)
    labels = [line.split(": ", 1)[0].strip() for line in lines[:-1]]
    assert all(re.fullmatch(r"sampling\.temperature=[\d.]+ sampling\.top_p=[\d.]+", label) for label in labels), labels
    assert len(set(labels)) == 15


def test_bad_price_is_one_sentence(tmp_path):
    proc = run_cli("run", "--estimate=noprobe", "+backend.price={input_per_mtok: -1}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "backend.price.input_per_mtok=-1" in proc.stderr and "Traceback" not in proc.stderr
