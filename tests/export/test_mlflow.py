"""export/mlflow.py: runs and sweeps replayed into a real local MLflow store (SQLite), read back with MlflowClient."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pyarrow.parquet as pq
import pytest
from cli_helpers import TEST_KEY
from mlflow import MlflowClient

from sentech_eval.analysis.summary import CONFIG_COLUMNS
from sentech_eval.cli import main as cli_main
from sentech_eval.commands.report import write_report
from sentech_eval.export.mlflow import KEY_TAG, MlflowExporter

EXPERIMENT = "capitals"  # the results' `experiment` (the dataset name): the default MLflow experiment


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite tracking URI in tmp_path; artifacts land in tmp_path/mlruns (MLflow's default, relative to cwd)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def export(store, path, *extra, capsys=None):
    code = cli_main(["export", "mlflow", str(path), "--tracking-uri", store, *extra])
    return code


def runs_of(store, experiment=EXPERIMENT):
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id], max_results=1000) if found else [])


def artifacts(client, run):
    return sorted(a.path for a in client.list_artifacts(run.info.run_id))


def assert_metrics_equal_summary(run, row: dict):
    """Every finite number of the summary row is a metric with exactly that value; config values are params."""
    for name, value in row.items():
        if name in CONFIG_COLUMNS or name == "config_id":
            continue
        if isinstance(value, str) or value is None or (isinstance(value, float) and not math.isfinite(value)):
            assert name not in run.data.metrics, name
            continue
        assert run.data.metrics[name] == pytest.approx(float(value), rel=1e-12, abs=0), name


def test_a_sweep_is_a_parent_run_with_one_child_per_configuration(results, store):
    write_report(results["sweep"])  # the sweep's summary.parquet: what the metrics must equal
    summary = pd.read_parquet(results["sweep"] / "summary.parquet")
    assert export(store, results["sweep"]) == 0

    client, runs = runs_of(store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2 == len(summary)
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["swept"] == "temperature"
    assert parent.info.run_name == "sweep capitals remote meta-llama/Meta-Llama-3.1-8B-Instruct: temperature×2"
    assert artifacts(client, parent) == ["report.html", "summary.parquet", "sweep.json", "trials.parquet"]

    by_temperature = {float(c.data.params["temperature"]): c for c in children}
    assert set(by_temperature) == {0.0, 0.7}
    for row in summary.to_dict("records"):
        child = by_temperature[row["temperature"]]
        assert child.info.run_name.endswith(f"temperature={row['temperature']:g}")
        assert child.data.params["config_id"] == row["config_id"]
        assert child.data.params["backend"] == "remote" and child.data.params["dataset"] == "capitals"
        assert child.data.params["runner.concurrency"] == "16" and child.data.params["runner.repeats"] == "1"
        assert child.data.params["scorers"] == "contains"
        assert child.data.params["version.pandas"] == pd.__version__
        assert (
            child.data.params["git_commit"]
            == json.loads(pq.read_schema(results["sweep"] / "0" / "results.parquet").metadata[b"sentech_eval"])[
                "git_commit"
            ]
        )
        assert child.data.tags["cached_share"] == "0.000"
        assert child.info.status == "FINISHED"
        assert_metrics_equal_summary(child, row)
        assert artifacts(client, child) == ["results.parquet", "rows.json", "summary.parquet"]
        rows = json.loads(open(client.download_artifacts(child.info.run_id, "rows.json")).read())
        assert len(rows["data"]) == row["n"] and "output" in rows["columns"] and "score_contains" in rows["columns"]
        exported_rows = pd.read_parquet(client.download_artifacts(child.info.run_id, "results.parquet"))
        assert set(exported_rows["config_id"]) == {row["config_id"]} and len(exported_rows) == row["n"]


def test_a_single_run_is_one_run_with_its_files(results, store):
    run_dir = results["run"]
    assert export(store, run_dir) == 0
    client, runs = runs_of(store)
    (run,) = runs
    summary = pd.read_parquet(run_dir / "summary.parquet")  # written by `run` at its end (it has scorers)
    assert_metrics_equal_summary(run, summary.to_dict("records")[0])
    assert run.info.run_name == "capitals remote meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert run.data.params["temperature"] == "0.3"
    assert artifacts(client, run) == ["report.html", "results.parquet", "rows.json", "summary.parquet"]
    sent = pd.read_parquet(client.download_artifacts(run.info.run_id, "results.parquet"))
    pd.testing.assert_frame_equal(sent, pd.read_parquet(run_dir / "results.parquet"))
    assert run.info.start_time <= run.info.end_time


def test_a_second_export_adds_nothing_and_force_new_adds_a_fresh_copy(results, store):
    assert export(store, results["sweep"]) == 0
    client, first = runs_of(store)
    assert export(store, results["sweep"]) == 0
    _, second = runs_of(store)
    assert sorted(r.info.run_id for r in second) == sorted(r.info.run_id for r in first)
    for run in second:  # nothing changed, so no metric got a second value
        for name in run.data.metrics:
            assert len(client.get_metric_history(run.info.run_id, name)) == 1, name

    assert export(store, results["sweep"], "--force-new") == 0
    _, third = runs_of(store)
    assert len(third) == 2 * len(first)
    fresh = [r for r in third if r.info.run_id not in {f.info.run_id for f in first}]
    (parent,) = [r for r in fresh if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags.get("mlflow.parentRunId") for r in fresh if r is not parent) == [parent.info.run_id] * 2


def test_an_export_cut_short_is_finished_not_duplicated(results, store):
    """A run created by an export that died (key set, nothing else) is completed by the next export."""
    write_report(results["run"])
    exporter = MlflowExporter(store, EXPERIMENT)
    from sentech_eval.export.replay import replay

    with replay(results["run"], "run") as plan:
        key = plan.children[0].key
    half = exporter.client.create_run(exporter.experiment_id, tags={KEY_TAG: key})
    assert export(store, results["run"]) == 0
    client, runs = runs_of(store)
    (run,) = runs
    assert run.info.run_id == half.info.run_id and run.info.status == "FINISHED"
    assert "score_contains_mean" in run.data.metrics


def test_rows_sends_a_seeded_sample(results, store):
    assert export(store, results["run"], "--rows", "2") == 0
    client, (run,) = runs_of(store)
    assert "results.sample.parquet" in artifacts(client, run) and "results.parquet" not in artifacts(client, run)
    sample = pd.read_parquet(client.download_artifacts(run.info.run_id, "results.sample.parquet"))
    assert len(sample) == 2
    rows = json.loads(open(client.download_artifacts(run.info.run_id, "rows.json")).read())
    assert len(rows["data"]) == 2
    assert run.data.metrics["n"] == 6  # the metrics still describe every row


def test_a_directory_of_runs_and_sweeps_exports_each_once(results, store):
    assert export(store, results["run"].parent, "--experiment", "all") == 0
    _, runs = runs_of(store, "all")
    assert len(runs) == 1 + 3


def test_the_key_never_reaches_the_store(results, store, tmp_path, monkeypatch):
    """Runs made with SENTECH_API_KEY set, plus metadata that carries the key where it never should:
    nothing the store holds (database and artifacts) contains it."""
    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
    planted = results["run"] / "results.parquet"
    table = pq.read_table(planted)
    meta = json.loads(table.schema.metadata[b"sentech_eval"])
    meta["config"]["backend"]["api_key"] = TEST_KEY
    meta["config"]["backend"]["base_url"] = f"http://user:{TEST_KEY}@127.0.0.1:1/v1"
    meta["config"]["runner"]["concurrency"] = TEST_KEY  # a value, in a field that is not a credential's
    meta["versions"]["sentech-eval"] = f"Bearer {TEST_KEY}"
    meta["git_commit"] = TEST_KEY  # not a commit: checked like any other value
    pq.write_table(table.replace_schema_metadata({b"sentech_eval": json.dumps(meta).encode()}), planted)
    assert export(store, results["run"].parent) == 0

    client, runs = runs_of(store)
    assert len(runs) == 4
    stored = [tmp_path / "mlflow.db"] + [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file()]
    assert len(stored) > 10
    for path in stored:
        assert TEST_KEY.encode() not in path.read_bytes(), path
    run = [r for r in runs if r.data.params.get("temperature") == "0.3"][0]
    assert run.data.params["runner.concurrency"] == "[redacted]"
    assert run.data.params["version.sentech-eval"] == "[redacted]"


def test_no_results_is_one_sentence_and_exit_2(tmp_path, store, capsys):
    (tmp_path / "empty").mkdir()
    assert export(store, tmp_path / "empty") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No results under" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///{tmp}/a-file/mlflow.db",  # a path through a regular file: no database can be made there
        "nosuchscheme://somewhere/x",
        "http://127.0.0.1:9",  # the discard port: nothing listens
    ],
)
def test_a_tracker_that_refuses_is_one_sentence_naming_the_uri(results, uri, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "a-file").write_text("not a directory")
    uri = uri.format(tmp=tmp_path)
    code = cli_main(["export", "mlflow", str(results["sweep"]), "--tracking-uri", uri])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("sentech-eval export: error: MLflow at ") and uri in err and err.count("\n") == 0
    assert not (tmp_path / "mlruns").exists()


def test_a_uri_with_a_password_is_named_without_it(results, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code = cli_main(["export", "mlflow", str(results["run"]), "--tracking-uri", "http://me:s3cret-pass@127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "http://127.0.0.1:9" in err and "s3cret" not in err


def test_mlflow_telemetry_is_off_unless_the_user_chose(results, store, monkeypatch):
    """MLflow 3 would look up and call its telemetry service; the export leaves it off (a user's setting wins)."""
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert export(store, results["run"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    assert export(store, results["run"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


class _Forbidden(BaseHTTPRequestHandler):
    """An MLflow server that refuses every request: 403 with MLflow's error body."""

    def _refuse(self):
        body = b'{"error_code": "PERMISSION_DENIED", "message": "User lacks permission to write."}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args):  # keep the test's output clean
        pass


def test_a_server_without_permission_is_one_sentence_naming_it(results, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code = cli_main(["export", "mlflow", str(results["sweep"]), "--tracking-uri", uri])
    finally:
        server.shutdown()
        thread.join()
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"MLflow at {uri} refused the export" in err and "PERMISSION_DENIED" in err


@pytest.mark.parametrize("tracker, module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_tracker_package_names_the_extra(results, tracker, module, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import mlflow` now fails as when it is not installed
    assert cli_main(["export", tracker, str(results["run"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'sentech-eval[track]'" in err
