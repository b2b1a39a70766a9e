"""Sweeps end to end: `sentech-eval run` multiruns against the real echo server, combined into one table.

The CLI runs in the test's process (``call_cli``), but where the sweep's end is the test (the exit
fallback that combines an aborted sweep) or its launcher starts worker processes (joblib, ray).
"""

from __future__ import annotations

import json
import shutil

import duckdb
import pandas as pd
import pytest
import yaml
from cli_helpers import REPO_ROOT, TEST_KEY, call_cli, run_cli

from sentech_eval import load_results
from sentech_eval.cli import main as cli_main
from sentech_eval.engine.results import PARTS_DIR, read_metadata
from sentech_eval.engine.sweep import combine

ROW_KEY = ["config_id", "prompt_id", "repeat", "temperature"]


def sweep_args(echo_server, sweep_dir, *extra) -> list[str]:
    """`run` multirun arguments against the echo server into ``sweep_dir``, plus ``extra``."""
    flags = [a for a in extra if a.startswith("-")]  # Hydra's argparse wants flags before overrides
    extra = tuple(a for a in extra if not a.startswith("-"))
    return [
        "run",
        *flags,
        "backend=remote",
        f"backend.base_url={echo_server}",
        "dataset=capitals",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def sweep(echo_server, sweep_dir, *extra):
    """Run the multirun in this process; returns its exit code and output."""
    return call_cli(*sweep_args(echo_server, sweep_dir, *extra), key=TEST_KEY)


def sweep_in_a_process(echo_server, sweep_dir, *extra):
    """Run the multirun in a process of its own (its exit, or its launcher's worker processes, are tested)."""
    return run_cli(*sweep_args(echo_server, sweep_dir, *extra), key=TEST_KEY)


def row_keys(frame: pd.DataFrame) -> set[tuple]:
    return set(frame[ROW_KEY].itertuples(index=False, name=None))


@pytest.fixture(scope="module")
def temperature_sweep(echo_server, tmp_path_factory):
    """`+sweep=temperature` (no -m) over the first 20 capitals, basic launcher."""
    sweep_dir = tmp_path_factory.mktemp("sweeps") / "temperature"
    proc = sweep(echo_server, sweep_dir, "+sweep=temperature", "dataset.limit=20")
    assert proc.returncode == 0, proc.stderr
    return sweep_dir


def test_sweep_file_runs_without_m_into_one_table(temperature_sweep):
    frame = load_results(temperature_sweep)
    per_temperature = frame.groupby("temperature")["prompt_id"].agg(["size", "nunique"])
    assert len(per_temperature) >= 5
    assert per_temperature.index.min() == 0.0 and per_temperature.index.max() == 1.2
    assert (per_temperature["size"] == 20).all() and (per_temperature["nunique"] == 20).all()
    assert set(frame["status"]) == {"ok"}
    # One file, read in one call by pandas and DuckDB, with the job and its overrides as columns.
    combined = temperature_sweep / "results.parquet"
    assert len(pd.read_parquet(combined)) == len(frame)
    counts = duckdb.sql(f"SELECT temperature, count(*) AS n FROM '{combined}' GROUP BY 1 ORDER BY 1").fetchall()
    assert [n for _, n in counts] == [20] * len(per_temperature)
    for _job, group in frame.groupby("job"):
        (overrides,) = group["overrides"].unique()
        (temperature,) = group["temperature"].unique()
        assert f"sampling.temperature={temperature}" in overrides.split()
    # The combined rows are each job's rows, and a parent dir does not count them twice.
    job_rows = sum(len(pd.read_parquet(p)) for p in temperature_sweep.glob("*/results.parquet"))
    assert job_rows == len(frame)
    assert len(load_results(temperature_sweep.parent)) == len(frame)
    meta = read_metadata(combined)["sweep"]
    assert [j["status"] for j in meta["jobs"]] == ["ok"] * len(per_temperature)


def test_sweep_json_and_trials_table_describe_every_job(temperature_sweep):
    record = json.loads((temperature_sweep / "sweep.json").read_text())
    assert record["status"] == "complete" and record["rows"] == 100
    assert record["job_counts"] == {"ok": 5}
    assert [j["job"] for j in record["jobs"]] == [0, 1, 2, 3, 4]
    assert all(any(o.startswith("sampling.temperature=") for o in j["overrides"]) for j in record["jobs"])
    assert TEST_KEY not in (temperature_sweep / "sweep.json").read_text()
    trials = pd.read_parquet(temperature_sweep / "trials.parquet")
    assert sorted(trials["sampling.temperature"]) == [0.0, 0.3, 0.6, 0.9, 1.2]
    assert (trials["rows"] == 20).all() and (trials["status"] == "ok").all()


def test_command_line_axes_multiply_with_the_sweep_file(echo_server, tmp_path):
    sweep_dir = tmp_path / "grid"
    proc = sweep(
        echo_server,
        sweep_dir,
        "+sweep=temperature",
        "sampling.temperature=0,1.2",
        "sampling.top_p=0.9,1.0",
        "runner.repeats=2",
        "dataset.limit=3",
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(sweep_dir)
    grid = frame.groupby(["temperature", "top_p"]).size()
    assert grid.to_dict() == {(t, p): 6 for t in (0.0, 1.2) for p in (0.9, 1.0)}
    # runner.repeats: every prompt twice per point, seeds seed + repeat.
    assert sorted(frame["repeat"].unique()) == [0, 1]
    assert (frame["seed"] == frame["repeat"]).all()


def test_a_failed_job_is_recorded_and_the_others_are_combined(echo_server, tmp_path):
    sweep_dir = tmp_path / "failing"
    proc = sweep(echo_server, sweep_dir, "-m", "sampling.temperature=0,5,0.7", "dataset.limit=4")
    assert proc.returncode == 1, proc.stderr  # some jobs failed: the table of the others, a line each, exit 1
    failed_lines = [line for line in proc.stderr.splitlines() if line.startswith("sentech-eval sweep: job ")]
    assert len(failed_lines) == 1 and "sampling.temperature=5" in failed_lines[0] and "failed" in failed_lines[0]
    assert "1 of 3 jobs failed" in proc.stderr and "allow_failed_jobs=true" in proc.stderr
    assert "Traceback" not in proc.stderr
    frame = load_results(sweep_dir)
    assert sorted(frame["temperature"].unique()) == [0.0, 0.7] and len(frame) == 8
    jobs = {j["job"]: j for j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]}
    assert [jobs[n]["status"] for n in (0, 1, 2)] == ["ok", "failed", "ok"]
    assert "sampling.temperature" in jobs[1]["error"] and "sampling.temperature=5" in jobs[1]["overrides"]
    assert jobs[1]["rows"] == 0
    # the user may allow some failed jobs: the same sweep, resumed, exits 0 and still names the failed job
    proc = sweep(
        echo_server,
        sweep_dir,
        "-m",
        "sampling.temperature=0,5,0.7",
        "dataset.limit=4",
        "hydra.callbacks.combine_sweep.allow_failed_jobs=true",
    )
    assert proc.returncode == 0, proc.stderr
    failed_lines = [line for line in proc.stderr.splitlines() if line.startswith("sentech-eval sweep: job 1 (")]
    assert len(failed_lines) == 1 and "sampling.temperature=5" in failed_lines[0]
    assert "warning: 1 of 3 jobs failed" in proc.stderr


def test_a_sweep_whose_every_job_failed_exits_1_with_their_errors(echo_server, tmp_path):
    sweep_dir = tmp_path / "all-failed"
    proc = sweep(
        echo_server,
        sweep_dir,
        "-m",
        "sampling.temperature=5,6",
        "dataset.limit=2",
        "hydra.callbacks.combine_sweep.allow_failed_jobs=true",  # allows some failed jobs, never all
    )
    assert proc.returncode == 1, proc.stderr
    assert "every job failed (2 of 2" in proc.stderr and "Traceback" not in proc.stderr
    for n, value in ((0, 5), (1, 6)):
        assert any(
            line.startswith(f"sentech-eval sweep: job {n} (") and f"sampling.temperature={value} " in line
            for line in proc.stderr.splitlines()
        ), proc.stderr


def test_a_job_whose_every_request_failed_is_a_failed_job(tmp_path):
    """A job whose every row is an error fails as a single run does (exit 1): the sweep says so per job."""
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sweep_dir = tmp_path / "dead"
    proc = call_cli(
        "run",
        "-m",
        "backend=remote",
        f"backend.base_url=http://127.0.0.1:{port}/v1",
        "dataset=capitals",
        "dataset.limit=2",
        "runner.max_retries=0",
        "runner.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        "sampling.temperature=0,0.5",
        key=TEST_KEY,
    )
    assert proc.returncode == 1, proc.stderr
    assert "every job failed (2 of 2" in proc.stderr and "Traceback" not in proc.stderr
    job_lines = [line for line in proc.stderr.splitlines() if line.startswith("sentech-eval sweep: job ")]
    assert len(job_lines) == 2, proc.stderr
    for line in job_lines:
        assert "every request failed (2 of 2 rows are errors)" in line and "no HTTP answer" in line, line
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["failed", "failed"]
    assert len(load_results(sweep_dir)) == 4  # the error rows are kept


def test_a_sweep_that_aborts_midway_still_combines_the_finished_jobs(echo_server, tmp_path):
    # Batches of one job: the second batch names a dataset that does not exist, so Hydra raises
    # between jobs and skips on_multirun_end; the exit fallback combines what was done.
    sweep_dir = tmp_path / "aborted"
    proc = sweep_in_a_process(  # the fallback that combines runs as the process exits
        echo_server,
        sweep_dir,
        "-m",
        "dataset=capitals,no_such_dataset",
        "hydra.sweeper.max_batch_size=1",
        "dataset.limit=4",
    )
    assert proc.returncode != 0
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["status"] == "incomplete" and record["rows"] == 4
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == 4


def test_combine_takes_the_flushed_rows_of_a_killed_job(temperature_sweep, tmp_path):
    # Make job 3 look like it was killed mid-run: rows only in results.parts/, no job_status.json.
    sweep_dir = tmp_path / "copy"
    shutil.copytree(temperature_sweep, sweep_dir)
    job = sweep_dir / "3"
    (job / "job_status.json").unlink()
    (job / PARTS_DIR).mkdir()
    (job / "results.parquet").rename(job / PARTS_DIR / "part-000000.parquet")
    assert cli_main(["combine", str(sweep_dir)]) == 0  # the command a user runs after a kill -9
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["status"] == "incomplete" and record["rows"] == 100
    assert [j["status"] for j in record["jobs"]] == ["ok", "ok", "ok", "incomplete", "ok"]
    frame = load_results(sweep_dir)
    assert len(frame) == 100 and frame.loc[frame["job"] == 3, "temperature"].unique().tolist() == [0.9]
    assert cli_main(["combine", str(tmp_path / "nowhere")]) == 2


def test_the_callback_combines_once_when_the_sweeper_already_did(temperature_sweep, tmp_path, capsys):
    """A race combines its sweep for its report before Hydra's multirun ends: the callback then only says so."""
    from omegaconf import OmegaConf

    from sentech_eval.engine.sweep import CombineSweepResults

    sweep_dir = tmp_path / "copy"
    shutil.copytree(temperature_sweep, sweep_dir)
    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": []}, "sweeper": {}, "launcher": {}}}
    )
    callback = CombineSweepResults()
    callback.on_multirun_start(config)
    combined_by_sweeper = combine(sweep_dir)
    callback.on_multirun_end(config)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["combined_at"] == combined_by_sweeper["combined_at"]  # not combined again
    assert f"{record['rows']} rows from 5 jobs" in capsys.readouterr().err

    callback.on_multirun_start(config)  # a multirun nobody combined: the callback does
    (sweep_dir / "trials.parquet").unlink()
    callback.on_multirun_end(config)
    assert (sweep_dir / "trials.parquet").is_file()
    assert json.loads((sweep_dir / "sweep.json").read_text())["combined_at"] != combined_by_sweeper["combined_at"]


def test_shards_recombine_to_the_dataset_exactly_once(echo_server, tmp_path):
    sweep_dir = tmp_path / "shards"
    proc = sweep(
        echo_server, sweep_dir, "-m", "dataset.num_shards=4", "dataset.shard_index=0,1,2,3", "sampling.temperature=0"
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(sweep_dir)
    dataset = pd.read_parquet(REPO_ROOT / "datasets" / "capitals.parquet")
    assert len(frame) == len(dataset)
    assert sorted(frame["prompt_id"]) == sorted(dataset["id"].astype(str))
    assert frame.groupby("job").size().between(len(dataset) // 4, len(dataset) // 4 + 1).all()
    assert frame["job"].nunique() == 4


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        [
            "hydra/launcher=ray",
            "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false",
            "+hydra.launcher.ray.init.object_store_memory=80000000",
        ],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],  # the SLURM path, on this machine
    ],
    ids=["joblib", "ray", "submitit_local"],
)
def test_parallel_launchers_give_the_basic_launchers_rows(echo_server, tmp_path, launcher):
    args = ["-m", "sampling.temperature=0,0.7", "dataset.limit=10"]
    basic, parallel = tmp_path / "basic", tmp_path / "parallel"
    proc = sweep(echo_server, basic, *args)
    assert proc.returncode == 0, proc.stderr
    proc = sweep_in_a_process(echo_server, parallel, *args, *launcher)  # its workers are processes
    assert proc.returncode == 0, proc.stderr
    expected, got = load_results(basic), load_results(parallel)
    assert len(got) == len(expected) == 20
    assert row_keys(got) == row_keys(expected)
    # Temperature 0 is deterministic: same outputs, whichever process ran the job.
    zero = lambda f: f[f["temperature"] == 0].set_index("prompt_id")["output"].sort_index()  # noqa: E731
    pd.testing.assert_series_equal(zero(got), zero(expected))
    assert json.loads((parallel / "sweep.json").read_text())["job_counts"] == {"ok": 2}


def test_optuna_search_reports_the_best_trial_of_the_table(echo_server, tmp_path):
    sweep_dir = tmp_path / "optimize"
    # exact_match moves with temperature on the echo engine (contains, the default objective, is 1 there)
    proc = sweep(
        echo_server,
        sweep_dir,
        "+sweep=optimize",
        "hydra.sweeper.n_trials=4",
        "dataset.limit=10",
        "sampling.temperature=choice(0.0,1.2)",
        "scorers=[exact_match]",
        "objective=score_exact_match",
    )
    assert proc.returncode == 0, proc.stderr
    frame = load_results(sweep_dir)
    trials = pd.read_parquet(sweep_dir / "trials.parquet").set_index("job")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
    # Each trial's objective is the mean of its exact-match column in the combined table.
    means = frame.groupby("job")["score_exact_match"].mean()
    pd.testing.assert_series_equal(trials["objective"], means, check_names=False, check_index_type=False)
    # The echo engine answers the bare reference at temperature 0 only.
    assert (trials.loc[trials["sampling.temperature"] == 0.0, "objective"] == 1.0).all()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == trials["objective"].max()
    winner = trials.loc[trials["objective"].idxmax()]
    for key, value in best["best_params"].items():
        assert winner[key] == pytest.approx(value), key
    assert json.loads((sweep_dir / "sweep.json").read_text())["optimization"]["best_value"] == best["best_value"]


def test_combine_rejects_a_missing_dir(tmp_path):
    from sentech_eval.errors import ResultsError

    with pytest.raises(ResultsError, match="does not exist"):
        combine(tmp_path / "missing")


def test_optimize_defaults_to_a_score_that_moves():
    """exact_match is 0 for every answer of a chatty small model: the default objective is contains."""
    from sentech_eval.config import compose_config

    cfg = compose_config(["+sweep=optimize"])
    assert cfg.objective == "score_contains"
    assert list(cfg.scorers) == ["contains"]
