"""``sentech-eval run``: the Hydra app. The task function builds the job spec, runs it (``run_job``)
and prints how the run ended; the work is in ``engine.evaluation.run_evaluation``.

Every Hydra flag works (``-m``, ``--cfg job``, ``--help``, ``hydra.run.dir=…``). A user error
stops the run with one sentence; in a multirun the failed job is recorded and the sweep goes on.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentech_eval.commands import estimate
from sentech_eval.commands.export import export_at_end
from sentech_eval.commands.run_summary import RunOutcome, end_of_run, read_outcome, result_lines
from sentech_eval.config import (
    JobSpec,
    check_resolved_overrides,
    group_choices,
    hydra_error,
    job_spec,
    register_configs,
    unknown_choice_message,
)
from sentech_eval.engine.cluster import refuse_job_this_node_cannot_run
from sentech_eval.engine.evaluation import RunResult, run_evaluation
from sentech_eval.engine.rundir import lock_run_dir, prepare_run_dir, unlock_run_dir
from sentech_eval.engine.sweep import take_sweep_exit_code
from sentech_eval.errors import ConfigError, RunDirError, SentechEvalError
from sentech_eval.escaping import terminal_lines
from sentech_eval.paths import conf_search_path
from sentech_eval.secrets import environment_secrets, key_env_names, redact_tree, refuse_secret_overrides


def _override_value(argv: list[str], key: str) -> str | None:
    value = None
    for arg in argv:
        name, sep, rest = arg.partition("=")
        if sep and name.lstrip("+~") == key:
            value = rest.strip().strip("'\"")
    return value


def check_output_dirs(argv: list[str]) -> None:
    """Before Hydra writes .hydra/ there: an explicit run dir must be usable and free (a second run into it
    stops here, naming the process that holds it); an explicit sweep dir must be usable."""
    multirun = any(arg in ("-m", "--multirun") for arg in argv) or any(
        arg.lstrip("+").startswith("sweep=") for arg in argv
    )
    run_dir = _override_value(argv, "hydra.run.dir")
    sweep_dir = _override_value(argv, "hydra.sweep.dir")
    if run_dir and "${" not in run_dir and not multirun:
        lock_run_dir(run_dir, "hydra.run.dir")
    if sweep_dir and "${" not in sweep_dir and multirun:
        prepare_run_dir(sweep_dir, "hydra.sweep.dir")


GROUP_CHOICE = re.compile(r"^(?P<group>backend|sampling|dataset|runner|scorers|sweep)=(?P<value>.*)$")


def check_group_choices(argv: list[str]) -> None:
    """Refuse an unknown config-group choice (``backend=nope``) with one sentence listing the options.

    Skipped when the user adds config dirs of their own (--config-dir, hydra.searchpath): Hydra checks then.
    """
    if any(
        arg.startswith(("--config-dir", "-cd", "--config-path", "-cp")) or "hydra.searchpath" in arg for arg in argv
    ):
        return
    for arg in argv:
        match = GROUP_CHOICE.match(arg.lstrip("+"))
        if not match or "," in match["value"] and not match["value"].startswith("["):
            continue  # sweeps over groups (backend=remote,local) are Hydra's to expand
        group, value = match["group"], match["value"].strip()
        values = [v.strip() for v in value.strip("[]").split(",") if v.strip()] if value.startswith("[") else [value]
        known = group_choices(group)
        for name in values:
            if name not in known and name != "null":
                raise ConfigError(unknown_choice_message(group, name))


def output_dir() -> Path:
    """This job's Hydra output dir (run dir, or the job's subdir in a multirun)."""
    return Path(HydraConfig.get().runtime.output_dir)


def build_spec(cfg: DictConfig, out_dir: Path) -> JobSpec:
    """The job's spec; on a config error, Hydra's saved copy of the config loses any credential first."""
    try:
        return job_spec(cfg)
    except ConfigError:
        scrub_saved_config(cfg, out_dir)
        raise


def scrub_saved_config(cfg: DictConfig, out_dir: Path) -> None:
    """Hydra saved the composed config to ``.hydra/config.yaml`` before the job ran: if a config file
    carried a credential (which ``job_spec`` refuses), overwrite that copy without its value."""
    saved = out_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        return
    container = OmegaConf.to_container(cfg, resolve=False)
    redacted = redact_tree(container, environment_secrets())
    if redacted != container:
        saved.write_text(OmegaConf.to_yaml(OmegaConf.create(redacted)))


def run_job(spec: JobSpec, out_dir: Path, resume: ResumeCommand) -> RunResult:
    """Run the job into ``out_dir`` and print what it did (counts, cost, why it stopped, how to resume)."""
    result = asyncio.run(run_evaluation(spec, out_dir, resume_command=resume.command()))
    for line in result_lines(result, resume.command):
        print(terminal_lines(line), file=sys.stderr)  # paths and names come from config: shown, never obeyed
    return result


def _record_job_status(out_dir: Path, status: str, error: str | None, summary: dict[str, Any] | None) -> None:
    record = {"status": status, "error": error, "summary": summary}
    try:
        overrides = list(HydraConfig.get().overrides.task)
        record["overrides"] = overrides
    except ValueError:
        pass
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "job_status.json").write_text(json.dumps(record, indent=2, default=str))


@hydra.main(version_base="1.3", config_path=conf_search_path(), config_name="config")
def task(cfg: DictConfig) -> float | None:
    """The Hydra task function: one run of one configuration."""
    out_dir = output_dir()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        spec = build_spec(cfg, out_dir)
        if multirun:  # a job on another node (Ray, SLURM) says what that node lacks, naming node and path
            refuse_job_this_node_cannot_run(spec, HydraConfig.get().job.num)
        result = run_job(spec, out_dir, ResumeCommand.of_this_job(out_dir))
    except SentechEvalError as exc:
        print(f"sentech-eval run: error: {terminal_lines(exc)}", file=sys.stderr)
        _record_job_status(out_dir, "failed", str(exc), None)
        if multirun:
            return None
        sys.exit(2)
    except KeyboardInterrupt:
        _record_job_status(out_dir, "interrupted", "interrupted", None)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a multirun must go on; a single run shows the traceback
        if not multirun:
            raise
        print(f"sentech-eval run: job failed: {type(exc).__name__}: {terminal_lines(exc)}", file=sys.stderr)
        _record_job_status(out_dir, "failed", f"{type(exc).__name__}: {exc}", None)
        return None
    finally:
        if multirun:
            # a launcher's worker process lives on to run other jobs, and a race's next round may resume
            # this dir in another worker: the job's lock on its dir ends with the job
            unlock_run_dir(out_dir)
    if result.summary.interrupted:
        _record_job_status(out_dir, "interrupted", None, result.record())
        sys.exit(130)  # one Ctrl-C stops a whole sweep too; the sweep's exit hook still combines results
    failure = job_failure(spec, result) if multirun else report_end_of_run(spec, result)
    _record_job_status(out_dir, "failed" if failure else "ok", failure, result.record())
    if not multirun:  # a sweep is exported once, when it ends (commands/export.py, ExportSweepAtEnd)
        export_at_end(spec.runner.export, out_dir)
    if failure and not multirun:  # a sweep goes on; its end names the failed jobs and exits 1
        sys.exit(1)
    return result.objective_value


def report_end_of_run(spec: JobSpec, result: RunResult) -> str | None:
    """Print the run's result (scores with 95% CIs, latency, tokens, errors, report.html) and
    return why the run failed: every row an error, or more errors than ``runner.max_error_rate``."""
    if not result.results.is_file():
        return None
    outcome, lines = end_of_run(result.results, scored=bool(result.scores) or bool(spec.scorers))
    for line in lines:
        print(terminal_lines(line), file=sys.stderr)
    failure = run_failure(spec, outcome)
    if failure:
        print(f"sentech-eval run: error: {failure}; the errors are listed above.", file=sys.stderr)
    return failure


def job_failure(spec: JobSpec, result: RunResult) -> str | None:
    """Why one job of a sweep failed by the rule a single run exits 1 on, with its most frequent error
    (the sweep prints it on the job's line and exits non-zero), or None."""
    if not result.results.is_file():
        return None
    outcome = read_outcome(result.results)
    failure = run_failure(spec, outcome)
    if failure and outcome.error_kinds:
        status, message, count = outcome.error_kinds[0]
        where = f"HTTP {status}" if status is not None else "no HTTP answer"
        failure += f"; the most frequent: {where} × {count}: {message or '(no message)'}"
    return failure


def run_failure(spec: JobSpec, outcome: RunOutcome) -> str | None:
    """Every row an error, or more errors than ``runner.max_error_rate``: the run failed (else None)."""
    limit = spec.runner.max_error_rate
    if outcome.rows and not outcome.ok:
        return f"every request failed ({outcome.errors} of {outcome.rows} rows are errors)"
    if limit is not None and outcome.error_rate > float(limit):
        return (
            f"{outcome.errors} of {outcome.rows} rows are errors ({outcome.error_rate:.1%}), "
            f"above runner.max_error_rate={float(limit):g}"
        )
    return None


@dataclass(frozen=True)
class ResumeCommand:
    """The command that resumes a job: its overrides with the run dir pinned (``hydra.run.dir``); in a
    sweep, the sweep as typed with its dir pinned (``hydra.sweep.dir``: each job resumes in its own dir)."""

    args: tuple[str, ...]  # the overrides (and -m) as typed
    dir_key: str  # hydra.run.dir or hydra.sweep.dir
    dir: Path

    @classmethod
    def of_this_job(cls, out_dir: Path) -> ResumeCommand:
        """From Hydra's state of the running job (and, in a sweep, the ``multirun.yaml`` its sweeper saved)."""
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.run.dir=")]
            return cls(tuple(overrides), "hydra.run.dir", out_dir)
        depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
        sweep_dir = out_dir.parents[depth - 1] if depth else out_dir
        typed = _sweep_as_typed(sweep_dir) or sys.argv[1:]
        typed = [a for a in typed if not a.lstrip("+").startswith(("hydra.sweep.dir=", "hydra.mode="))]
        if not any(a in ("-m", "--multirun") for a in typed) and not any(
            a.lstrip("+").startswith("sweep=") for a in typed
        ):
            typed = ["-m", *typed]
        return cls(tuple(typed), "hydra.sweep.dir", sweep_dir)

    def command(self, replace: dict[str, str] | None = None) -> str:
        """The shell command; ``replace`` sets keys to new values (e.g. a higher ``runner.max_cost_usd``)."""
        replace = replace or {}
        kept = [a for a in self.args if a.lstrip("+").split("=", 1)[0] not in replace]
        args = kept + [f"{key}={value}" for key, value in replace.items()]
        return shlex.join(["sentech-eval", "run", *args, f"{self.dir_key}={self.dir}"])


def _sweep_as_typed(sweep_dir: Path) -> list[str] | None:
    """The sweep's overrides as the user typed them, from the ``multirun.yaml`` Hydra's sweeper saved."""
    from sentech_eval.engine.sweep import MULTIRUN_FILE  # a sweep only: no import for a plain run

    try:
        saved = OmegaConf.load(sweep_dir / MULTIRUN_FILE)
        return [str(o) for o in saved.hydra.overrides.hydra] + [str(o) for o in saved.hydra.overrides.task]
    except (OSError, OmegaConfBaseException):
        return None


def is_plain_run(argv: list[str]) -> bool:
    """Whether ``argv`` runs the shipped config once: no flag (``-m``, ``--config-dir`` …), no sweep,
    and no Hydra setting but ``hydra.run.dir``. Only the sweep files set ``hydra.mode`` in the shipped
    config (tests/commands/test_run_remote.py checks every group option)."""
    for arg in argv:
        key = arg.partition("=")[0].lstrip("+~")
        if arg.startswith("-") or "sweep" in key or (key.startswith("hydra") and key != "hydra.run.dir"):
            return False
    return True


@contextmanager
def mode_known_for_a_plain_run(argv: list[str]) -> Iterator[None]:
    """Hydra composes the whole config once only to read ``hydra.mode``, then again to run. For a plain
    run the answer is known: ``None``, what Hydra's ``get_mode`` returns for a config that sets no mode,
    so one composition is saved (benchmarks/README.md, "Start-up")."""
    if not is_plain_run(argv):
        yield
        return
    get_mode = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = get_mode  # type: ignore[method-assign]


def register_sweepers() -> None:
    """Make the project's sweepers (``basic``, its faster-checking grid, and ``race``) known to Hydra
    however the package is installed: Hydra finds plugins by scanning the ``hydra_plugins``
    namespace, which an editable install's import hook hides from that scan. Importing the grid
    sweeper after the scan also puts its config in place of Hydra's ``hydra/sweeper=basic``.

    The imports come after the scan on purpose: the scan executes Hydra's plugin modules again,
    which redefines ``BasicSweeper``; a subclass must be made from the class the scan left behind.
    """
    plugins = Plugins.instance()
    from hydra_plugins.sentech_eval_grid.grid_sweeper import GridSweeper
    from hydra_plugins.sentech_eval_race.race_sweeper import RaceSweeper

    for sweeper in (GridSweeper, RaceSweeper):
        plugins.register(sweeper)
    try:  # the Ray launcher (hydra/launcher=ray, ray_cluster) needs the sweep extra's hydra-ray-launcher
        from hydra_plugins.sentech_eval_ray.ray_launcher import SentechRayLauncher
    except ImportError:
        return
    plugins.register(SentechRayLauncher)


def main(argv: list[str], prog: str = "sentech-eval run") -> int:
    """Entry for ``sentech-eval run``: hand the arguments to Hydra."""
    refuse_secret_overrides(argv)
    check_group_choices(argv)
    register_configs()
    register_sweepers()  # (before the resolved check: a sweep's config names the project's sweepers)
    check_resolved_overrides(argv, environment_secrets(key_env_names(argv)))  # before anything is written
    check_output_dirs(argv)
    if estimate.wants_estimate(argv):
        return estimate.run(argv)
    sys.argv = [prog.replace(" ", "-")] + list(argv)
    # Hydra raises its composition errors instead of printing them (HYDRA_FULL_ERROR during the call),
    # so they come out as one ConfigError sentence with exit code 2.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with mode_known_for_a_plain_run(argv):
            task()
    except (HydraException, OmegaConfBaseException) as exc:
        raise hydra_error(exc) from None
    except OSError as exc:
        if exc.errno not in UNWRITABLE or exc.filename is None:
            raise
        raise RunDirError(
            f"Cannot write {exc.filename} ({exc.strerror}); choose a writable hydra.run.dir "
            "(or hydra.sweep.dir) and free disk space if it is full."
        ) from None
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return take_sweep_exit_code()  # 0, or 1 for a multirun with failed jobs (engine/sweep.py says why)


UNWRITABLE = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}
