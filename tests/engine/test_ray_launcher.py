"""Sweeps on a real multi-node Ray cluster on loopback (hydra/launcher=ray_cluster), and Ray's local mode.

The module starts one cluster for all its cluster tests: a head node and a second node, each
`ray start --num-cpus 1 --block` in a process of its own, both WITHOUT the API key in their environment,
with Ray's token authentication on (RAY_AUTH_MODE=token on the nodes, as Ray documents for a cluster;
the token in a file of the test's, RAY_AUTH_TOKEN_PATH). The sweeps run as a user runs them: the CLI with
`hydra/launcher=ray_cluster hydra.launcher.ray.init.address=127.0.0.1:PORT`, the key in the driver's
environment only, no RAY_AUTH_MODE. The nodes are stopped by their process ids, never by `ray stop`.

Loopback only: `ray start` replaces a literal 127.0.0.1 by the machine's routable address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's single-machine mode, which binds the head to 127.0.0.1 and which
the driver gets too); a second node refuses that mode, so it joins through the same loopback address
written IPv4-mapped ([::ffff:127.0.0.1]), which Ray does not rewrite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, TEST_KEY, cli_command

from sentech_eval import load_results

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT_S = 240  # Ray's start-up takes tens of seconds on a loaded machine
SWEEP_TIMEOUT_S = 900


@dataclass
class Cluster:
    address: str
    root: Path  # the nodes' --temp-dir (session dirs, logs, spill files) and the token file
    token: Path
    heads: list[subprocess.Popen]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ray_env(token: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the API key or any RAY_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY" and not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), PYTHONUNBUFFERED="1", **extra)
    return env


def wait_for_start(proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"{what} did not start within {START_TIMEOUT_S}s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(procs: list[subprocess.Popen], root: Path) -> None:
    """SIGTERM each `ray start --block` we started (it stops its node's processes), then anything of ours left."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in ours_still_running(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ours_still_running(root: Path) -> list[int]:
    """Processes whose command line names our cluster's temp dir (a node's raylet, GCS, workers …)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="se-ray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    token = root / "token"
    token.write_text(uuid.uuid4().hex)
    ray = str(Path(sys.executable).parent / "ray")
    port, *agent = free_ports(9)
    common = ["--num-cpus", "1", "--block", "--temp-dir", str(root / "ray"), "--disable-usage-stats"]
    common += ["--object-store-memory", "80000000"]
    procs: list[subprocess.Popen] = []
    try:
        head_log = root / "head.log"
        head = subprocess.Popen(
            [ray, "start", "--head", "--node-ip-address=127.0.0.1", "--port", str(port), "--include-dashboard=false"]
            + [f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}"]
            + [f"--runtime-env-agent-port={agent[2]}", f"--metrics-export-port={agent[3]}", *common],
            env=ray_env(token, RAY_AUTH_MODE="token", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
            stdout=head_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(head)
        wait_for_start(head, head_log, "the head node")
        node_log = root / "node.log"
        node = subprocess.Popen(
            [ray, "start", f"--address=[::ffff:127.0.0.1]:{port}"]
            + [f"--dashboard-agent-listen-port={agent[4]}", f"--dashboard-agent-grpc-port={agent[5]}"]
            + [f"--runtime-env-agent-port={agent[6]}", f"--metrics-export-port={agent[7]}", *common],
            env=ray_env(token, RAY_AUTH_MODE="token"),
            stdout=node_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(node)
        wait_for_start(node, node_log, "the second node")
        yield Cluster(f"127.0.0.1:{port}", root, token, procs)
    finally:
        stop(procs, root)
        shutil.rmtree(root, ignore_errors=True)


def sweep_on(cluster: Cluster, sweep_dir: Path, *args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    """`sentech-eval run -m …` on the cluster, as a user runs it: key (if any) and the Ray token, no RAY_AUTH_MODE."""
    env = ray_env(cluster.token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    if key is not None:
        env["SENTECH_API_KEY"] = key
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    command = cli_command(
        "run",
        *flags,
        "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={cluster.address}",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    )
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=SWEEP_TIMEOUT_S, cwd=REPO_ROOT)


def nodes_of(sweep_dir: Path) -> set[str]:
    return {job["node"] for job in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]}


def assert_nowhere(secret: str, *roots: Path) -> None:
    """No file under ``roots`` (logs, session files, spill files, results, saved configs) holds ``secret``."""
    needle = secret.encode()
    checked = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                checked += 1
                assert needle not in data, f"the key is in {path}"
    assert checked > 0


def test_a_remote_backend_sweep_runs_on_both_nodes_and_the_key_stays_in_memory(ray_cluster, echo_server, tmp_path):
    sweep_dir = tmp_path / "remote"
    proc = sweep_on(
        ray_cluster,
        sweep_dir,
        "-m",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "sampling.temperature=0,0.3,0.6,0.9",
        "dataset.limit=5",
        key=TEST_KEY,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    frame = load_results(sweep_dir)
    assert len(frame) == 20 and set(frame["status"]) == {"ok"}
    assert sorted(frame["temperature"].unique()) == [0.0, 0.3, 0.6, 0.9]
    nodes = nodes_of(sweep_dir)
    assert len(nodes) == 2, nodes  # the jobs ran on the head and on the second node
    # the nodes never had the key; it reached the jobs in memory and was written nowhere
    sessions = ray_cluster.root / "ray"
    assert any(sessions.glob("session_*/logs/*"))
    assert_nowhere(TEST_KEY, sessions, sweep_dir)
    assert TEST_KEY not in proc.stdout + proc.stderr
    assert "RAY_AUTH_MODE" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_local_backend_sweep_runs_the_embedded_model_on_both_nodes(ray_cluster, tmp_path):
    sweep_dir = tmp_path / "local"
    proc = sweep_on(
        ray_cluster,
        sweep_dir,
        "-m",
        "backend=local",
        "backend.n_threads=1",
        "sampling.max_tokens=4",
        "sampling.temperature=0,0.5,1.0,1.5",
        "dataset.limit=2",
        key=None,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    frame = load_results(sweep_dir)
    assert len(frame) == 8 and set(frame["status"]) == {"ok"}
    assert (frame["completion_tokens"] > 0).all() and (frame["output"].str.len() > 0).all()
    assert len(nodes_of(sweep_dir)) == 2


def test_jobs_whose_node_lacks_the_key_fail_naming_the_node_and_the_sweep_exits_1(ray_cluster, echo_server, tmp_path):
    sweep_dir = tmp_path / "no-key"
    proc = sweep_on(
        ray_cluster,
        sweep_dir,
        "-m",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "sampling.temperature=0,0.5",
        "dataset.limit=2",
        key=None,  # neither the driver nor the nodes have it
    )
    assert proc.returncode == 1, proc.stderr[-5000:]
    assert "every job failed (2 of 2" in proc.stderr and "Traceback" not in proc.stderr
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    for job in jobs:
        assert job["status"] == "failed"
        assert "has no API key: the environment variable SENTECH_API_KEY is not set" in job["error"]
        assert "node " in job["error"] and "(Ray node " in job["error"]


def test_a_job_whose_node_lacks_the_model_file_fails_naming_node_and_path(ray_cluster, tmp_path):
    missing = tmp_path / "models" / "absent.gguf"
    sweep_dir = tmp_path / "no-model"
    proc = sweep_on(
        ray_cluster, sweep_dir, "-m", "backend=local", f"backend.model_path={missing}", "dataset.limit=1", key=None
    )
    assert proc.returncode == 1, proc.stderr[-5000:]
    (job,) = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert f"has no model file {missing}" in job["error"] and "(Ray node " in job["error"]
    assert f"has no model file {missing}" in proc.stderr and "Traceback" not in proc.stderr


def test_local_mode_starts_its_own_instance_whatever_a_stale_cluster_file_says(echo_server, tmp_path):
    """`ray start` killed: /tmp/ray/ray_current_cluster (here: in Ray's temp dir of the test) and RAY_ADDRESS
    name a dead cluster. hydra/launcher=ray (address: local) starts a Ray of its own anyway."""
    temp_dir = Path(tempfile.mkdtemp(prefix="se-rl-", dir="/tmp"))
    try:
        (dead_port,) = free_ports(1)
        (temp_dir / "ray_current_cluster").write_text(f"127.0.0.1:{dead_port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "SENTECH_API_KEY"}
        env.update(SENTECH_API_KEY=TEST_KEY, RAY_ADDRESS=f"127.0.0.1:{dead_port}", PYTHONUNBUFFERED="1")
        command = cli_command(
            "run",
            "-m",
            "hydra/launcher=ray",
            "+hydra.launcher.ray.init.num_cpus=1",
            "+hydra.launcher.ray.init.include_dashboard=false",
            f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
            "backend=remote",
            f"backend.base_url={echo_server}",
            "sampling.temperature=0,0.7",
            "dataset.limit=3",
            "runner.progress=false",
            f"hydra.sweep.dir={tmp_path / 'local-mode'}",
        )
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SWEEP_TIMEOUT_S, cwd=REPO_ROOT)
        assert proc.returncode == 0, proc.stderr[-5000:]
        assert len(load_results(tmp_path / "local-mode")) == 6
        assert "object_store_memory" not in proc.stderr
    finally:
        for pid in ours_still_running(temp_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_local_mode_settings_are_refused_for_a_cluster_in_one_sentence(tmp_path):
    command = cli_command(
        "run",
        "-m",
        "hydra/launcher=ray_cluster",
        "hydra.launcher.ray.init.address=127.0.0.1:1",
        "+hydra.launcher.ray.init.object_store_memory=80000000",
        "dataset.limit=1",
        f"hydra.sweep.dir={tmp_path / 'refused'}",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SWEEP_TIMEOUT_S, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "hydra.launcher.ray.init.object_store_memory is a setting for a Ray instance of its own" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("token", ["wrong", "none"])
def test_a_driver_without_the_clusters_token_is_told_where_to_put_it(ray_cluster, tmp_path, token):
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    env = ray_env(ray_cluster.token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", HOME=str(home))
    if token == "wrong":
        (tmp_path / "other-token").write_text(uuid.uuid4().hex)
        env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "other-token")
    else:
        del env["RAY_AUTH_TOKEN_PATH"]
    command = cli_command(
        "run",
        "-m",
        "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={ray_cluster.address}",
        "dataset.limit=1",
        f"hydra.sweep.dir={tmp_path / 'refused'}",
    )
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=SWEEP_TIMEOUT_S, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ray get-auth-token" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
