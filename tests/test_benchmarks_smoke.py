"""Smoke test of benchmarks/: every script runs in --quick mode and prints well-formed JSON lines.

Not a timing assertion (speed targets live in the benchmark scripts themselves): this only checks
that `make bench` would run end to end — real servers, real `sentech-eval run` processes — and
that each measurement line carries its name, value, target and verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import REPO_ROOT

OURS = ("bench_server", "bench_runner_overhead", "bench_timing", "bench_memory", "bench_startup", "bench_cache")
EXPECTED = {
    "server.echo_vs_minimal_rps_ratio",
    "server.echo_cpu_us_per_request",
    "runner.steady_rps_ratio_vs_bare_loop",
    "runner.startup_to_first_request_s",
    "runner.steady_cpu_efficiency_vs_bare_loop",
    "timing.achieved_rps_at_100ms_c64",
    "timing.median_latency_error_ms",
    "timing.queue_s_recorded_fraction",
    "memory.peak_rss_mb_at_20000",
    "memory.peak_rss_ratio_20000_vs_2000",
    "startup.one_row_run_wall_s",
    "cache.sweep_rerun_speedup",
    "cache.miss_run_rps_ratio_vs_bare_loop",
    "cache.known_config_miss_run_rps_ratio_vs_bare_loop",
    "cache.off_run_rps_ratio_vs_bare_loop",
}


def test_run_all_quick_prints_one_well_formed_json_line_per_measurement():
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "run_all.py"), "--quick"]
    for name in OURS:
        cmd += ["--only", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every stdout line is JSON
    assert records, proc.stderr
    summary = records[-1]
    assert summary["name"] == "summary" and summary["failed_scripts"] == [], proc.stderr[-3000:]
    assert proc.returncode == (0 if summary["pass"] else 1)
    measurements = records[:-1]
    assert {r["name"] for r in measurements} == EXPECTED
    for record in measurements:
        assert {"name", "value", "target", "pass"} <= record.keys()
        assert isinstance(record["value"], (int, float)), record
        assert isinstance(record["target"], str) and record["target"], record
        assert record["pass"] in (True, False, None), record
        assert record["quick"] is True
    judged = [r for r in measurements if r["pass"] is not None]
    assert summary["value"] == sum(r["pass"] for r in judged)
    assert summary["missed"] == [r["name"] for r in judged if not r["pass"]]
