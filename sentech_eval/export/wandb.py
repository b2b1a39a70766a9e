"""Replay runs and sweeps into Weights & Biases: one W&B run per configuration, a sweep's runs in one group.

W&B lets the caller choose run ids: each run's id is a hash of its ``replay.TrackedRun.key`` (the
results' own identity), so a second export resumes the same runs (``resume="allow"``) instead of adding
new ones; ``force_new`` adds a fresh copy with new ids. W&B's own settings hold: ``WANDB_MODE=offline``
writes the runs under ``WANDB_DIR`` for a later ``wandb sync``, ``WANDB_PROJECT``/``WANDB_ENTITY``
apply when ``--project``/``--entity`` are not given, ``WANDB_BASE_URL`` names the server.

W&B has no parent runs: a sweep's configurations share ``group`` (the sweep's name) and each carries
the sweep's files under ``sweep/`` in its artifact (W&B stores identical files once).
Metrics go to each run's summary, a load run's levels to its history (one step per level), the rows
to a ``wandb.Table`` named ``rows``, the files to an artifact of type ``sentech-eval-results``.
The export switches off what W&B would otherwise collect or send by itself (console capture, system
metrics, git and code saving, error reports), unless the user's environment sets those.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sentech_eval.errors import ConfigError, TrackerError
from sentech_eval.export.replay import Replay, TrackedRun, clean_reason, exported_at, tracker_id

INSTALL_HINT = "Weights & Biases is not installed; install the tracker extra: pip install 'sentech-eval[track]'"
ARTIFACT_TYPE = "sentech-eval-results"
DEFAULT_BASE_URL = "https://api.wandb.ai"
INIT_TIMEOUT_S = 30.0  # W&B waits 90 s for a server that does not answer; WANDB_INIT_TIMEOUT overrides this
# W&B's own reports of its errors, off unless the user's environment says otherwise
QUIET_ENV = {"WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}


@dataclass
class Outcome:
    """What one replay sent: the W&B run ids and the group."""

    group: str | None
    run_ids: list[str]


def _wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError(INSTALL_HINT + ".") from None
    return wandb


@contextmanager
def _quiet_env() -> Iterator[None]:
    added = [name for name in QUIET_ENV if name not in os.environ]
    for name in added:
        os.environ[name] = QUIET_ENV[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def where() -> str:
    """Where the runs go, for messages: the offline dir or the server's URL."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return f"W&B offline ({os.environ.get('WANDB_DIR') or os.getcwd()})"
    return f"W&B at {os.environ.get('WANDB_BASE_URL') or DEFAULT_BASE_URL}"


class WandbExporter:
    """Sends replays to one W&B project (``project=None``: W&B's own setting, else the results' experiment)."""

    def __init__(self, project: str | None = None, entity: str | None = None) -> None:
        self.wandb = _wandb()
        self.project = project
        self.entity = entity

    def export(self, replay: Replay, force_new: bool = False) -> Outcome:
        """One W&B run per configuration of ``replay``; TrackerError naming the server when W&B refuses."""
        group = replay.parent.name[:128] if replay.parent is not None else None
        suffix = f"-{uuid.uuid4().hex[:8]}" if force_new else ""
        run_ids = []
        with _quiet_env():
            try:
                for child in replay.children:
                    run_ids.append(self._send(child, replay, group, suffix))
            except Exception as exc:  # noqa: BLE001 - whatever W&B raises is one sentence naming where
                raise TrackerError(refusal(exc)) from None
            finally:
                # W&B reads its environment (WANDB_MODE, WANDB_DIR …) once per process and keeps a service
                # running: end both, so the next export sees the environment as it is then
                self.wandb.teardown()
        return Outcome(group, run_ids)

    def _project(self, replay: Replay) -> str | None:
        if self.project:
            return self.project
        if os.environ.get("WANDB_PROJECT"):
            return None  # W&B reads it
        return replay.experiment or "sentech-eval"

    def _send(self, run: TrackedRun, replay: Replay, group: str | None, suffix: str) -> str:
        wandb = self.wandb
        run_id = tracker_id(run.key) + suffix
        timeout = {} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": INIT_TIMEOUT_S}
        settings = wandb.Settings(
            **timeout,
            console="off",
            silent=True,
            x_disable_stats=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
            disable_job_creation=True,
        )
        config = dict(run.params)
        if replay.parent is not None:
            config.update({f"sweep.{k}": v for k, v in replay.parent.params.items() if k not in config})
        config.update({f"tag.{k}": v for k, v in run.tags.items()})
        config["sentech_eval.key"] = run.key
        config["sentech_eval.source"] = str(replay.source.resolve())
        tags = ["sentech-eval", run.kind] + ([f"check:{run.tags['check']}"] if "check" in run.tags else [])
        live = wandb.init(
            project=self._project(replay),
            entity=self.entity,
            id=run_id,
            name=run.name[:128],
            group=group,
            job_type=run.kind,
            config=config,
            tags=tags,
            resume="allow",
            settings=settings,
        )
        try:
            for step in range(max((len(v) for v in run.steps.values()), default=0)):
                live.log({name: values[step] for name, values in run.steps.items() if step < len(values)})
            if run.table is not None:
                live.log({"rows": wandb.Table(dataframe=run.table)})
            live.summary.update({**run.metrics, "exported_at": exported_at()})
            files = dict(run.files)
            if replay.parent is not None:
                files.update({f"sweep/{name}": path for name, path in replay.parent.files.items()})
            if files:
                artifact = wandb.Artifact(f"results-{tracker_id(run.key, 16)}", type=ARTIFACT_TYPE)
                for name, path in files.items():
                    artifact.add_file(str(path), name=name)
                live.log_artifact(artifact)
        except BaseException:
            live.finish(exit_code=1)
            raise
        live.finish()
        return run_id


def refusal(exc: BaseException) -> str:
    """One sentence for W&B refusing: where the runs were going, W&B's reason in one line, what to check."""
    reason = clean_reason(exc)
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return (
        f"{where()} refused the export ({reason}); check `wandb login` (or WANDB_API_KEY), --project/--entity "
        "and WANDB_BASE_URL, or export offline with WANDB_MODE=offline and `wandb sync` later."
    )
