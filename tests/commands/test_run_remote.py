"""End to end: `sentech-eval run backend=remote` against the real echo server on a loopback port."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import REPO_ROOT, TEST_KEY, call_cli

from sentech_eval import load_results
from sentech_eval.engine.results import CORE_NAMES, read_metadata

COLUMNS = (
    "run_id config_id backend model dataset prompt_id repeat temperature top_p top_k frequency_penalty "
    "presence_penalty max_tokens seed output finish_reason prompt_tokens completion_tokens total_tokens "
    "latency_s ttft_s status http_status error attempts started_at"
).split()


def remote_args(base_url, run_dir, *extra):
    return ["run", "backend=remote", f"backend.base_url={base_url}", f"hydra.run.dir={run_dir}", *extra]


def test_capitals_run_writes_one_ok_row_per_dataset_row(echo_server, tmp_path):
    run_dir = tmp_path / "D"
    proc = call_cli(*remote_args(echo_server, run_dir, "dataset=capitals"), env={"SENTECH_API_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr
    frame = load_results(run_dir)
    dataset = pd.read_parquet(REPO_ROOT / "datasets" / "capitals.parquet")
    assert len(frame) == len(dataset)
    for column in COLUMNS + ["reference", "country"]:
        assert column in frame.columns, column
    assert list(frame.columns[: len(CORE_NAMES)]) == list(CORE_NAMES)
    assert set(frame["status"]) == {"ok"}
    assert sorted(frame["prompt_id"]) == sorted(dataset["id"])
    merged = frame.merge(dataset, left_on="prompt_id", right_on="id", suffixes=("", "_ds"))
    assert (merged["reference"] == merged["reference_ds"]).all()
    assert (merged["prompt"] == merged["prompt_ds"]).all()
    # The echo server answers shipped prompts from their references, with whitespace token counts.
    france = frame[frame["prompt"] == "What is the capital of France?"].iloc[0]
    assert "Paris" in france["output"]
    assert france["completion_tokens"] == len(france["output"].split())
    assert (frame["total_tokens"] == frame["prompt_tokens"] + frame["completion_tokens"]).all()
    assert (frame["latency_s"] > 0).all() and (frame["latency_s"] < 10).all()
    assert (frame["http_status"] == 200).all() and (frame["attempts"] == 1).all()
    assert frame["ttft_s"].isna().all()  # not streamed
    assert frame["backend"].unique().tolist() == ["remote"]
    assert frame["model"].unique().tolist() == ["meta-llama/Meta-Llama-3.1-8B-Instruct"]
    # the model the server says answered (the echo engine answers as the requested one)
    assert frame["response_model"].unique().tolist() == ["meta-llama/Meta-Llama-3.1-8B-Instruct"]
    assert frame["config_id"].nunique() == 1 and frame["run_id"].nunique() == 1
    assert set(frame["temperature"]) == {0.7} and set(frame["seed"]) == {0}
    meta = read_metadata(run_dir / "results.parquet")
    assert meta["config"]["backend"]["base_url"] == echo_server
    assert meta["versions"]["pyarrow"] and meta["git_commit"]
    assert TEST_KEY not in json.dumps(meta)
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_streaming_records_ttft_before_latency_and_repeats_use_seed_plus_repeat(echo_server, tmp_path):
    run_dir = tmp_path / "S"
    proc = call_cli(
        *remote_args(
            echo_server,
            run_dir,
            "dataset=arithmetic",
            "dataset.limit=10",
            "backend.stream=true",
            "runner.repeats=3",
            "sampling.seed=40",
        ),
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(run_dir)
    assert len(frame) == 30
    assert sorted(frame.groupby("repeat")["seed"].unique().map(list).sum()) == [40, 41, 42]
    assert frame.groupby(["prompt_id", "repeat"]).size().max() == 1
    assert (frame["ttft_s"] > 0).all() and (frame["ttft_s"] <= frame["latency_s"]).all()
    assert (frame["completion_tokens"] > 0).all()


def test_null_sampling_values_are_not_sent_and_limit_takes_first_rows(echo_server, tmp_path):
    run_dir = tmp_path / "N"
    proc = call_cli(
        *remote_args(
            echo_server, run_dir, "dataset=capitals", "dataset.limit=7", "sampling.top_k=null", "sampling.max_tokens=2"
        ),
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(run_dir)
    assert list(frame["prompt_id"]) == [f"capital-{i:03d}" for i in range(7)]
    assert frame["top_k"].isna().all()
    assert (frame["completion_tokens"] <= 2).all()
    truncated = frame[frame["finish_reason"] == "length"]
    assert len(truncated) > 0 and (truncated["completion_tokens"] == 2).all()
    assert set(frame["finish_reason"]) <= {"length", "stop"}


def test_missing_key_names_the_variable_and_suggests_alternatives(tmp_path):
    proc = call_cli(*remote_args("http://127.0.0.1:9/v1", tmp_path / "K", "dataset=capitals"), env={})
    assert proc.returncode == 2
    assert "SENTECH_API_KEY" in proc.stderr and "backend=local" in proc.stderr and "sentech-eval serve" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "K" / "results.parquet").exists()


def test_wrong_key_stops_the_run_with_one_sentence(echo_server, tmp_path):
    proc = call_cli(*remote_args(echo_server, tmp_path / "W", "dataset=capitals"), env={"SENTECH_API_KEY": "wrong"})
    assert proc.returncode == 2
    assert "Invalid API key." in proc.stderr and "Traceback" not in proc.stderr
    assert len(load_results(tmp_path / "W")) == 0  # no thousands of error rows


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--help"], "Powered by Hydra"),
        (["--cfg", "job", "backend=remote"], "base_url: https://api.sentech.ai/v1"),
    ],
)
def test_hydra_flags_work(args, expect):
    proc = call_cli("run", *args)
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_multirun_flag_runs_one_job_per_value(echo_server, tmp_path):
    proc = call_cli(
        "run",
        "-m",
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "dataset.limit=5",
        "sampling.temperature=0,0.5",
        f"hydra.sweep.dir={tmp_path / 'M'}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(tmp_path / "M")
    assert sorted(frame["temperature"].unique()) == [0.0, 0.5]
    assert len(frame) == 10


def test_top_level_help_lists_subcommands():
    proc = call_cli("--help")
    assert proc.returncode == 0
    for command in ("run", "serve", "score", "report", "compare", "check"):
        assert f"  {command}" in proc.stdout
    bad = call_cli("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def _capacity_lines(tmp_path, capacity: int, limits: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Runs against `serve --capacity CAPACITY`, one per name -> (rows, runner.concurrency): each run's
    stderr lines about the server's X-Sentech-Capacity header."""
    from sentech_eval.server.testing import running_server

    lines = {}
    with running_server(api_key=TEST_KEY, capacity=capacity, latency_ms=20) as url:
        for name, (rows, concurrency) in limits.items():
            overrides = (f"dataset.limit={rows}", f"runner.concurrency={concurrency}", "runner.progress=false")
            done = call_cli(*remote_args(url, tmp_path / name, *overrides), env={"SENTECH_API_KEY": TEST_KEY})
            assert done.returncode == 0, done.stderr
            lines[name] = [line for line in done.stderr.splitlines() if "X-Sentech-Capacity" in line]
    return lines


def test_a_run_above_the_servers_advertised_capacity_warns_once(tmp_path):
    """`serve --capacity 2` says so in every answer; a run sending 8 at once is told that latency includes queueing."""
    lines = _capacity_lines(tmp_path, 2, {"above": (12, 8), "within": (4, 2)})
    assert len(lines["above"]) == 1, lines
    warning = lines["above"][0]
    assert "answers 2 request(s) at a time" in warning and "runner.concurrency=8" in warning
    assert "runner.concurrency=2" in warning  # the fix
    assert lines["within"] == []


def test_a_run_below_the_servers_advertised_capacity_is_told_its_slots_stay_idle(tmp_path):
    """`serve --parallel 4` (here `--capacity 4`) answers 4 at once: a run sending 1 at a time is told how to use them."""
    lines = _capacity_lines(tmp_path, 4, {"below": (3, 1), "matched": (3, 4)})
    assert len(lines["below"]) == 1, lines
    note = lines["below"][0]
    assert "answers 4 requests at a time" in note and "left 3 of them idle" in note
    assert "runner.concurrency=4 uses them all" in note
    assert lines["matched"] == []


# What a remote run has no use for; importing any of it only delays the start (benchmarks/bench_startup.py).
NOT_ON_THE_RUN_PATH = (
    "matplotlib",
    "scipy",
    "llama_cpp",
    "jsonschema",
    "tqdm",
    "pyarrow.dataset",
    "sentech_eval.server",
    "sentech_eval.render",
    "sentech_eval.analysis",
    "sentech_eval.backends.local",
)


def test_a_remote_run_imports_nothing_it_does_not_use(echo_server, tmp_path):
    """A one-row run without a progress bar, as the CLI runs it: no plotting, stats, model or server code loaded."""
    import os
    import subprocess
    import sys

    listing = tmp_path / "modules.txt"
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sorted(sys.modules))))\n"
        f"sys.argv = ['sentech-eval', *{remote_args(echo_server, tmp_path / 'R', 'dataset.limit=1', 'runner.progress=false')!r}]\n"
        "runpy.run_module('sentech_eval.cli', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    env.update(SENTECH_API_KEY=TEST_KEY, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT
    )
    assert proc.returncode == 0 and "1 ok" in proc.stderr, proc.stderr[-2000:]
    imported = set(listing.read_text().split())
    assert {"aiohttp", "sentech_eval.backends.remote", "sentech_eval.engine.runner"} <= imported  # it sees the run
    unwanted = sorted(m for m in imported if any(m == name or m.startswith(name + ".") for name in NOT_ON_THE_RUN_PATH))
    assert not unwanted, f"a remote run imported {unwanted}"


@pytest.mark.parametrize(
    "argv, plain",
    [
        (["backend=remote", "backend.base_url=http://h/v1", "dataset=capitals", "hydra.run.dir=out"], True),
        (["scorers=[contains]", "+backend.price={input_per_mtok: 1}", "sampling.temperature=0.5"], True),
        (["-m", "sampling.temperature=0,1"], False),
        (["--multirun"], False),
        (["+sweep=temperature"], False),
        (["sweep=optimize"], False),
        (["--config-dir", "mine"], False),
        (["hydra/launcher=joblib"], False),
        (["hydra.mode=MULTIRUN"], False),
        (["hydra.searchpath=[file://mine]"], False),
        (["--cfg", "job"], False),
    ],
)
def test_a_plain_run_is_told_apart_from_what_can_set_hydra_mode(argv, plain):
    from sentech_eval.commands.run import is_plain_run

    assert is_plain_run(argv) is plain


def test_no_shipped_config_outside_the_sweep_files_sets_hydra_mode():
    """What makes a plain run's mode known without composing: every group option but the sweeps leaves it unset."""
    from sentech_eval.config import composer
    from sentech_eval.paths import conf_dir

    options = [
        f"{path.parent.name}={path.stem}"
        for path in sorted(conf_dir().glob("*/*.yaml"))
        if path.parent.name not in ("sweep", "hydra", "scorers")
    ]
    options += [f"scorers=[{path.stem}]" for path in sorted((conf_dir() / "scorers").glob("*.yaml"))]
    assert len(options) >= 15
    with composer() as compose:
        for option in options:
            assert compose([option], return_hydra_config=True).hydra.mode is None, option
        assert (
            str(compose(["+sweep=optimize"], return_hydra_config=True).hydra.mode) == "RunMode.MULTIRUN"
        )  # it can fail
