"""``sentech-eval export mlflow|wandb PATH``: replay finished runs and sweeps into an experiment tracker.

The Parquet results are the source of truth, so an export can happen any time after a run, as often as
wanted: the tracker's runs are found again by the results' own identity and updated, never duplicated
(``--force-new`` makes a fresh copy). ``runner.export=mlflow|wandb`` calls ``export_at_end`` when a run
ends (commands/run.py) or a sweep does (the ``ExportSweepAtEnd`` callback); there a tracker that refuses
costs one warning line, never the run. W&B and MLflow take their settings from their own environment
variables then (MLFLOW_TRACKING_URI, WANDB_MODE, WANDB_PROJECT …).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sentech_eval.errors import ConfigError, SentechEvalError

TRACKERS = ("mlflow", "wandb")
DEFAULT_EXPERIMENT = "sentech-eval"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export finished runs and sweeps to MLflow or Weights & Biases, replayed from their Parquet results. "
            "A run becomes one tracker run; a sweep a parent run with one child run per configuration (W&B: a "
            "group). Params come from the results' metadata (never a key), metrics from the report's summary "
            "(scores with 95% CIs, error rate, latency, tokens/s, cost), artifacts are summary.parquet, "
            "report.html and the rows. A second export updates the same tracker runs. Needs the tracker extra: "
            "pip install 'sentech-eval[track]'."
        ),
    )
    trackers = parser.add_subparsers(dest="tracker", metavar="{mlflow,wandb}", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("path", help="a run dir, a sweep dir, or a directory of them")
        sub.add_argument(
            "--rows",
            type=int,
            metavar="N",
            help="send a seeded sample of N rows per configuration instead of every row (large runs)",
        )
        sub.add_argument(
            "--force-new", action="store_true", help="make fresh tracker runs instead of updating the earlier export"
        )

    mlflow = trackers.add_parser(
        "mlflow",
        help="export to MLflow",
        description="Export to MLflow (the tracking store at --tracking-uri, else MLFLOW_TRACKING_URI).",
    )
    common(mlflow)
    mlflow.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000 (default: MLflow's own setting)",
    )
    mlflow.add_argument(
        "--experiment",
        metavar="NAME",
        help="MLflow experiment (default: the results' `experiment`, which is the dataset name unless set)",
    )
    wandb = trackers.add_parser(
        "wandb",
        help="export to Weights & Biases",
        description="Export to Weights & Biases (W&B's own settings hold: WANDB_MODE=offline, WANDB_DIR, "
        "WANDB_BASE_URL, WANDB_PROJECT, WANDB_ENTITY).",
    )
    common(wandb)
    wandb.add_argument(
        "--project", metavar="P", help="W&B project (default: WANDB_PROJECT, else the results' `experiment`)"
    )
    wandb.add_argument("--entity", metavar="E", help="W&B entity (default: WANDB_ENTITY or your default entity)")
    return parser


def export(
    tracker: str,
    path: str | Path,
    *,
    rows: int | None = None,
    force_new: bool = False,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> list[str]:
    """Export every run and sweep at ``path``; returns one line per source. SentechEvalError on bad input."""
    if tracker not in TRACKERS:
        raise ConfigError(f"Unknown tracker {tracker!r}; choose one of: {', '.join(TRACKERS)}.")
    if rows is not None and rows < 1:
        raise ConfigError(f"--rows must be at least 1, got {rows}.")
    # imported here: `run` imports this module for export_at_end, and a run's start-up stays without pandas
    from sentech_eval.export.replay import find_sources, replay

    sources = find_sources(path)
    lines = []
    exporters: dict[str, Any] = {}
    for source, kind in sources:
        with replay(source, kind, rows) as plan:
            if tracker == "mlflow":
                from sentech_eval.export.mlflow import MlflowExporter

                name = experiment or plan.experiment or DEFAULT_EXPERIMENT
                if name not in exporters:
                    exporters[name] = MlflowExporter(tracking_uri, name)
                exporter = exporters[name]
                outcome = exporter.export(plan, force_new=force_new)
                what = (
                    f"run {outcome.parent_id} with {len(outcome.run_ids)} child runs"
                    if outcome.parent_id
                    else f"run {outcome.run_ids[0]}"
                )
                verb = f"{outcome.created} new, {outcome.updated} updated"
                lines.append(
                    f"sentech-eval export: {source} -> MLflow {exporter.shown}, experiment "
                    f"{exporter.experiment!r}: {what} ({verb}); see them with: mlflow ui --backend-store-uri "
                    f"{exporter.shown}"
                )
            else:
                from sentech_eval.export.wandb import WandbExporter, where

                if "wandb" not in exporters:
                    exporters["wandb"] = WandbExporter(project, entity)
                outcome = exporters["wandb"].export(plan, force_new=force_new)
                group = f" in group {outcome.group!r}" if outcome.group else ""
                lines.append(
                    f"sentech-eval export: {source} -> {where()}: {len(outcome.run_ids)} run(s){group} "
                    f"({', '.join(outcome.run_ids)})"
                )
    return lines


def export_at_end(tracker: str | None, path: str | Path, what: str = "run") -> None:
    """``runner.export``: export a finished run or sweep; any failure is one warning line, never the run's."""
    if not tracker:
        return
    try:
        for line in export(tracker, path):
            print(line, file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the results are safe; the export can be repeated by hand
        message = str(exc) if isinstance(exc, SentechEvalError) else f"{type(exc).__name__}: {exc}"
        message = " ".join(message.split())
        print(
            f"sentech-eval {what}: warning: export to {tracker} failed ({message}); the results are kept, "
            f"retry with: sentech-eval export {tracker} {path}",
            file=sys.stderr,
        )


class ExportSweepAtEnd(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml, listed before ``combine_sweep``: Hydra calls
    the end hooks in reverse order, so this runs once the sweep is combined): ``runner.export``."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Export the combined sweep when ``runner.export`` names a tracker."""
        runner = config.get("runner") or {}
        export_at_end(runner.get("export"), Path(str(config.hydra.sweep.dir)), what="sweep")


def main(argv: list[str] | None = None, prog: str = "sentech-eval export") -> int:
    """Entry point of ``sentech-eval export``."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    lines = export(
        args.tracker,
        args.path,
        rows=args.rows,
        force_new=args.force_new,
        tracking_uri=getattr(args, "tracking_uri", None),
        experiment=getattr(args, "experiment", None),
        project=getattr(args, "project", None),
        entity=getattr(args, "entity", None),
    )
    for line in lines:
        print(line)
    return 0
