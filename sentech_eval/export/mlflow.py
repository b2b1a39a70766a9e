"""Replay runs and sweeps into MLflow: a sweep is a parent run with one child run per configuration.

MLflow picks its own run ids, so each run carries the tag ``sentech_eval.key`` (``replay.TrackedRun.key``:
the results' own identity); an export first looks that key up and updates the run it finds. A second
export therefore adds no run, and logs a metric only when its value changed (MLflow keeps every logged
value as history). ``force_new`` makes a fresh copy instead. Params are set once (MLflow refuses to
change a param's value): an update adds the params a run lacks.

The tracking URI is ``--tracking-uri``, else MLflow's own setting (``MLFLOW_TRACKING_URI``). Before
anything is written the store is asked for the experiment; a store that refuses or cannot be reached
raises ``TrackerError`` naming the URI. A run is created with its key already set, so an export cut
short is finished, not duplicated, by the next one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sentech_eval.errors import ConfigError, TrackerError
from sentech_eval.export.replay import Replay, TrackedRun, clean_reason, exported_at

KEY_TAG = "sentech_eval.key"
KIND_TAG = "sentech_eval.kind"
SOURCE_TAG = "sentech_eval.source"
EXPORTED_TAG = "sentech_eval.exported_at"
TABLE_FILE = "rows.json"
INSTALL_HINT = "MLflow is not installed; install the tracker extra: pip install 'sentech-eval[track]'"
# MLflow retries an unreachable server for minutes by default; an export says so after a few seconds
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


@dataclass
class Outcome:
    """What one replay did to the store."""

    parent_id: str | None
    run_ids: list[str]
    created: int
    updated: int


def shown_uri(uri: str) -> str:
    """The URI for a message: without ``user:password@`` and without a query string."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password or parts.query):
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextmanager
def _short_http_retries() -> Iterator[None]:
    """MLflow's HTTP retries cut to a few seconds (unless the user set them), its INFO lines (table
    migrations of a new SQLite store) kept off the terminal."""
    saved = {name: os.environ.get(name) for name in HTTP_DEFAULTS}
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _mlflow():
    # MLflow 3 sends usage telemetry (a DNS lookup and a request to its telemetry service) unless told not
    # to; an export sends the results where the user points and nowhere else (unless the user set it)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(INSTALL_HINT + ".") from None
    return MlflowClient


class MlflowExporter:
    """One connection to one MLflow store and experiment."""

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        client_class = _mlflow()
        import mlflow

        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.shown = shown_uri(str(self.uri))
        self.experiment = experiment
        with _short_http_retries():
            try:
                self.client = client_class(tracking_uri=self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is not None and found.lifecycle_stage == "deleted":
                    raise TrackerError(
                        f"MLflow at {self.shown}: the experiment {experiment!r} is deleted; restore it or pass "
                        "another --experiment."
                    )
                self.experiment_id = (
                    found.experiment_id if found is not None else self.client.create_experiment(experiment)
                )
            except TrackerError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the store is one sentence naming the URI
                raise TrackerError(refusal(self.shown, exc)) from None

    def export(self, replay: Replay, force_new: bool = False) -> Outcome:
        """Create or update the runs of one replay; TrackerError (naming the URI) when the store refuses."""
        with _short_http_retries():
            try:
                return self._export(replay, force_new)
            except TrackerError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise TrackerError(refusal(self.shown, exc)) from None

    def _export(self, replay: Replay, force_new: bool) -> Outcome:
        created = updated = 0
        parent_id = None
        run_ids = []
        if replay.parent is not None:
            parent_id, new = self._upsert(replay.parent, replay, None, force_new)
            created, updated = created + new, updated + (not new)
        for child in replay.children:
            run_id, new = self._upsert(child, replay, parent_id, force_new)
            run_ids.append(run_id)
            created, updated = created + new, updated + (not new)
        return Outcome(parent_id, run_ids, created, updated)

    def find(self, key: str) -> Any | None:
        """The most recently exported run carrying ``key``, or None."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{KEY_TAG}` = '{key}'",
            order_by=[f"tags.`{EXPORTED_TAG}` DESC"],
            max_results=1,
        )
        return found[0] if found else None

    def _upsert(self, run: TrackedRun, replay: Replay, parent_id: str | None, force_new: bool) -> tuple[str, bool]:
        from mlflow.entities import Metric, Param, RunTag

        existing = None if force_new else self.find(run.key)
        tags = {
            KEY_TAG: run.key,
            KIND_TAG: run.kind,
            SOURCE_TAG: str(replay.source.resolve()),
            EXPORTED_TAG: exported_at(),
            "mlflow.runName": run.name,
            **run.tags,
        }
        if parent_id is not None:
            tags["mlflow.parentRunId"] = parent_id
        if run.table is not None:
            tags["mlflow.loggedArtifacts"] = json.dumps([{"path": TABLE_FILE, "type": "table"}])
        if existing is None:
            made = self.client.create_run(
                self.experiment_id, start_time=run.start_ms, tags={KEY_TAG: run.key}, run_name=run.name
            )
            run_id, old_params, old_metrics = made.info.run_id, {}, {}
        else:
            run_id, old_params, old_metrics = existing.info.run_id, existing.data.params, existing.data.metrics
        timestamp = run.end_ms or run.start_ms or 0
        metrics = [
            Metric(metric_name(name), value, timestamp, 0)
            for name, value in run.metrics.items()
            if old_metrics.get(metric_name(name)) != value
        ]
        for name, values in run.steps.items():
            if old_metrics.get(metric_name(name)) is None or existing is None:
                metrics += [Metric(metric_name(name), v, timestamp, step) for step, v in enumerate(values) if v == v]
        params = [Param(name, value) for name, value in run.params.items() if name not in old_params]
        tag_list = [RunTag(name, value) for name, value in tags.items()]
        for start in range(0, max(len(metrics), len(params), len(tag_list)), BATCH["params"]):
            self.client.log_batch(
                run_id,
                metrics=metrics[start : start + BATCH["params"]],
                params=params[start : start + BATCH["params"]],
                tags=tag_list[start : start + BATCH["tags"]],
            )
        for path in run.files.values():
            self.client.log_artifact(run_id, str(path))
        if run.table is not None:
            self.client.log_dict(run_id, table_json(run.table), TABLE_FILE)
        self.client.set_terminated(run_id, "FINISHED", end_time=run.end_ms)
        return run_id, existing is None


def metric_name(name: str) -> str:
    """A summary column as an MLflow metric name (letters, digits, ``_ - . /`` and spaces; ``pass@1`` -> ``pass_at_1``)."""
    return re.sub(r"[^\w\-. /]", "_", name.replace("@", "_at_"))


def table_json(table) -> dict[str, Any]:
    """Rows in the form MLflow's UI shows as a table (what ``mlflow.log_table`` writes, without its appending)."""
    return {"columns": [str(c) for c in table.columns], "data": json.loads(table.to_json(orient="values"))}


def refusal(shown: str, exc: BaseException) -> str:
    """One sentence for a store that refused: the URI, MLflow's reason in one line, and what to check."""
    reason = clean_reason(exc)
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return (
        f"MLflow at {shown} refused the export ({reason}); check --tracking-uri (or MLFLOW_TRACKING_URI), "
        "that the server is up and that you may write to it."
    )
