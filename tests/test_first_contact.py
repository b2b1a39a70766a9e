"""What a new user meets first, run as written: the README's server example, the documented regex
override, `--help | head`, the project's workflows."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from cli_helpers import REPO_ROOT, TEST_KEY, run_cli

BIN = Path(sys.executable).parent


def shell(script: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a bash script with this environment's `sentech-eval` first on PATH."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readme_server_example_runs_as_written(tmp_path):
    """`serve … &` then `curl` right away: the README waits for the server instead of racing it."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "sentech-eval serve" in b and "curl" in b)
    lines = [line for line in block.splitlines() if line.strip()]
    serve = next(i for i, line in enumerate(lines) if line.startswith("sentech-eval serve"))
    curl = next(i for i, line in enumerate(lines) if line.startswith("curl"))
    # serve, the wait, and the first request, with the port made free and the key from the test
    port = free_port()
    script = (
        "\n".join(lines[serve:curl])
        + "\n"
        + " ".join(line.rstrip("\\").strip() for line in lines[curl : curl + 3])
        + "\nstatus=$?\nkill %1\nexit $status\n"
    )
    script = script.replace("8000", str(port))
    proc = shell("set -m\n" + script, env={"SENTECH_API_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr
    assert '"chat.completion"' in proc.stdout and "Paris" in proc.stdout, proc.stdout + proc.stderr


def test_documented_regex_override_works_in_a_shell(echo_server, tmp_path):
    doc = (REPO_ROOT / "docs" / "scoring.md").read_text()
    override = re.search(r"^sentech-eval run scorers=\[regex\] (.+)$", doc, re.M).group(1)
    run_dir = tmp_path / "regex"
    proc = shell(
        f"sentech-eval run backend=remote backend.base_url={echo_server} dataset=capitals dataset.limit=2 "
        f"runner.progress=false hydra.run.dir={run_dir} scorers=[regex] {override}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    assert "mismatched input" not in proc.stderr
    meta = pq.read_schema(run_dir / "results.parquet").metadata[b"sentech_eval"].decode()
    assert r"answer:\\s*(\\w+)" in meta  # the pattern arrived intact, backslashes included


def test_help_piped_into_head_ends_quietly():
    proc = shell(
        "sentech-eval --help | head -3; sentech-eval run --help | head -1; sentech-eval serve --help | head -1"
    )
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("usage: sentech-eval")


def test_workflows_run_ci_and_examples_stay_out_of_github_workflows():
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows, "the project has a workflow"
    runs_ci = False
    for path in workflows:
        text = path.read_text()
        flow = yaml.safe_load(text)
        assert "secrets." not in text, f"{path.name} needs a secret: it would fail on every pull request"
        steps = [step for job in flow["jobs"].values() for step in job["steps"]]
        runs_ci = runs_ci or any("bash .ci/run" in str(step.get("run", "")) for step in steps)
        for referenced in re.findall(r"(?:benchmarks|tests|docs|conf)/[\w./-]+\.\w+", text):
            assert (REPO_ROOT / referenced).exists(), f"{path.name} refers to the missing {referenced}"
    assert runs_ci
    assert (REPO_ROOT / "docs" / "examples" / "regression-workflow.yml").is_file()


def test_ci_installs_chromium_so_the_browser_test_runs():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y" in script and "chromium" in script
    assert script.index("chromium") < script.index("make test")


def test_default_job_scores_contains(tmp_path):
    makefile = (REPO_ROOT / "Makefile").read_text()
    run_line = re.search(r"^run:.*\n\t(.+)$", makefile, re.M).group(1)
    assert "scorers=[contains]" in run_line and "dataset=capitals" in run_line
    proc = run_cli("run", "--cfg", "job", *shlex.split(run_line)[2:])  # the same overrides, composed
    assert proc.returncode == 0, proc.stderr
    assert "contains:" in proc.stdout.split("scorers:", 1)[1]
