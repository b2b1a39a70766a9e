"""`sentech-eval run … --estimate`: requests, tokens, cost and wall time before anything is sent."""

from __future__ import annotations

import re
import socket
import time

from cli_helpers import TEST_KEY, call_cli

from sentech_eval.commands import estimate

KEY_ENV = {"SENTECH_API_KEY": TEST_KEY}


def test_estimate_of_one_run_sends_nothing_and_prices_the_tokens(tmp_path):
    proc = call_cli(
        "run",
        "--estimate",
        "backend=remote",
        "backend.base_url=http://127.0.0.1:9/v1",
        "dataset=capitals",
        "runner.repeats=2",
        "sampling.max_tokens=10",
        "backend.price.input_per_mtok=1.0",
        "backend.price.output_per_mtok=2.0",
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


def test_estimate_of_a_sweep_lists_every_job_and_probes_when_asked(echo_server, tmp_path):
    proc = call_cli(
        "run",
        "--estimate",
        "--probe",
        "3",
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
    proc = call_cli("run", "--estimate", "+backend.price={input_per_mtok: -1}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "backend.price.input_per_mtok=-1" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_estimate_against_a_port_where_nothing_listens_answers_at_once(tmp_path, monkeypatch, capsys):
    """No earlier run, a dead URL: the estimate sends nothing (no connection attempt, no retry) and answers."""
    monkeypatch.chdir(tmp_path)  # no results/ here: no history
    monkeypatch.delenv("SENTECH_API_KEY", raising=False)  # no key needed either: nothing is sent
    started = time.perf_counter()
    code = estimate.run(["--estimate", "backend=remote", f"backend.base_url=http://127.0.0.1:{_free_port()}/v1"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 run(s), 150 requests" in out.out and "--probe N" in out.out
    assert "probing" not in out.err
    assert elapsed < 5, f"{elapsed:.1f} s: something waited on the network"  # a probe with retries took 13 s


def test_estimate_opens_no_connection_to_the_backend(tmp_path, monkeypatch, capsys):
    """A listening socket that would see any request: --estimate connects to it zero times."""
    monkeypatch.chdir(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = estimate.run(["--estimate", "backend=remote", f"backend.base_url=http://127.0.0.1:{port}/v1"])
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert code == 0, capsys.readouterr().err
    assert not connected


def test_probe_without_estimate_is_one_sentence(tmp_path):
    proc = call_cli("run", "--probe", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "--probe N goes with --estimate" in proc.stderr and "Traceback" not in proc.stderr
