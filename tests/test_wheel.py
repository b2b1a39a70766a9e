"""The installed package works: build the wheel, install it into a fresh venv, run from elsewhere.

The heavy dependencies (pandas, pyarrow, Hydra, …, llama-cpp-python) are not reinstalled: the
temporary venv sees this environment's site-packages through a path file, behind its own, so the
test takes seconds, not the minutes of a llama-cpp-python build. sentech-eval itself comes only
from the wheel: this environment's editable install is a finder that a path file does not load,
and the test checks where the package was imported from.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_helpers import REPO_ROOT, TEST_KEY

from sentech_eval.server.testing import listening_process

pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs to run inside a venv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("sentech_eval-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    purelib = Path(
        subprocess.run(
            [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # this environment's dependencies, after the venv's own site-packages
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (purelib / "zz_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(root / "bin" / "python"),
            "install",
            "--no-deps",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_the_wheel_ships_configs_and_datasets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf in (REPO_ROOT / "conf").rglob("*.yaml"):
        assert f"sentech_eval/conf/{conf.relative_to(REPO_ROOT / 'conf')}" in names, conf
    for data in (REPO_ROOT / "datasets").glob("*.parquet"):
        assert f"sentech_eval/datasets_shipped/{data.name}" in names, data
    for plugin in (REPO_ROOT / "hydra_plugins").rglob("*.py"):  # the sweepers (grid, the default; race)
        assert plugin.relative_to(REPO_ROOT).as_posix() in names, plugin
    for static in ("view.css", "view.js"):  # `sentech-eval view` needs no network: its front end ships here
        assert f"sentech_eval/view/static/{static}" in names, static


def test_installed_run_and_serve_work_from_another_directory(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SENTECH_API_KEY")}
    env.update(SENTECH_API_KEY=TEST_KEY, PYTHONUNBUFFERED="1")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sentech_eval; print(sentech_eval.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    serve = [str(venv / "bin" / "sentech-eval"), "serve", "--engine", "echo", "--port", "0", "--host", "127.0.0.1"]
    with listening_process(serve, env=env, timeout_s=120, cwd=work) as (url, _):
        proc = subprocess.run(
            [
                str(venv / "bin" / "sentech-eval"),
                "run",
                "backend=remote",
                f"backend.base_url={url}",
                "dataset=capitals",
                "dataset.limit=5",
                "scorers=[contains]",
                "runner.progress=false",
                "hydra.run.dir=out",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pq.read_table(work / "out" / "results.parquet").to_pydict()
    assert table["status"] == ["ok"] * 5
    # the installed echo server answers the installed capitals dataset from its references
    assert table["score_contains"] == [1.0] * 5
    assert "95% CI" in proc.stderr and (work / "out" / "report.html").is_file()
    # a sweep goes through the shipped default sweeper (hydra_plugins/sentech_eval_grid)
    with listening_process(serve, env=env, timeout_s=120, cwd=work) as (url, _):
        sweep = subprocess.run(
            [
                str(venv / "bin" / "sentech-eval"),
                "run",
                "-m",
                "sampling.temperature=0,0.5",
                "backend=remote",
                f"backend.base_url={url}",
                "dataset=capitals",
                "dataset.limit=2",
                "runner.progress=false",
                "hydra.sweep.dir=sweep",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=300,
        )
        # hydra/sweeper=race from the installed package (2 cells x 5 prompts: one round, a tie, a winner)
        race = subprocess.run(
            [
                str(venv / "bin" / "sentech-eval"),
                "run",
                "+sweep=race_temperature",
                "backend=remote",
                f"backend.base_url={url}",
                "dataset=capitals",
                "dataset.limit=5",
                "race.start=5",
                "sampling.temperature=0.0,0.3",
                "sampling.top_p=0.9",
                "runner.progress=false",
                "hydra.sweep.dir=race",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=300,
        )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert len(pq.read_table(work / "sweep" / "results.parquet")) == 4
    assert race.returncode == 0, race.stderr[-3000:]
    assert race.stderr.strip().splitlines()[-1].startswith("sentech-eval race: winner")
    assert (work / "race" / "race.parquet").is_file()
