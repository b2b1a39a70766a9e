"""``sentech-eval run``: the Hydra app. The task function stays tiny; the work is in ``evaluate``.

Every Hydra flag works (``-m``, ``--cfg job``, ``--help``, ``hydra.run.dir=…``). A user error
stops the run with one sentence; in a multirun the failed job is recorded and the sweep goes on.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from sentech_eval.commands import estimate
from sentech_eval.commands.export import export_at_end
from sentech_eval.commands.run_summary import end_of_run
from sentech_eval.config import (
    check_resolved_overrides,
    config_error,
    group_choices,
    register_configs,
    unknown_choice_message,
    unknown_key_error,
)
from sentech_eval.engine.cluster import refuse_job_this_node_cannot_run
from sentech_eval.engine.evaluation import run_evaluation
from sentech_eval.engine.rundir import ARGV_ENV, lock_run_dir, prepare_run_dir, unlock_run_dir
from sentech_eval.engine.sweep import take_sweep_exit_code
from sentech_eval.errors import ConfigError, RunDirError, SentechEvalError
from sentech_eval.escaping import terminal_lines
from sentech_eval.paths import conf_search_path
from sentech_eval.secrets import environment_secrets, key_env_names, refuse_secret_overrides


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


def evaluate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Validate, build the backend, run the dataset, write results.parquet; returns a summary dict."""
    return asyncio.run(run_evaluation(cfg, out_dir))


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
        if multirun:  # a job on another node (Ray, SLURM) says what that node lacks, naming node and path
            refuse_job_this_node_cannot_run(cfg, HydraConfig.get().job.num)
        summary = evaluate(cfg, out_dir)
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
    if summary.get("interrupted"):
        _record_job_status(out_dir, "interrupted", None, summary)
        sys.exit(130)  # one Ctrl-C stops a whole sweep too; the sweep's exit hook still combines results
    failure = None if multirun else report_end_of_run(cfg, summary)
    _record_job_status(out_dir, "failed" if failure else "ok", failure, summary)
    if not multirun:  # a sweep is exported once, when it ends (commands/export.py, ExportSweepAtEnd)
        export_at_end((cfg.get("runner") or {}).get("export"), out_dir)
    if failure:
        sys.exit(1)
    return summary.get("objective")


def report_end_of_run(cfg: DictConfig, summary: dict[str, Any]) -> str | None:
    """Print the run's result (scores with 95% CIs, latency, tokens, errors, report.html) and
    return why the run failed: every row an error, or more errors than ``runner.max_error_rate``."""
    results = Path(summary["results"])
    if not results.is_file():
        return None
    outcome, lines = end_of_run(results, scored=bool(summary.get("scores")) or bool(cfg.get("scorers")))
    for line in lines:
        print(line, file=sys.stderr)
    limit = (cfg.get("runner") or {}).get("max_error_rate")
    failure = None
    if outcome.rows and not outcome.ok:
        failure = f"every request failed ({outcome.errors} of {outcome.rows} rows are errors; see above)."
    elif limit is not None and outcome.error_rate > float(limit):
        failure = (
            f"{outcome.errors} of {outcome.rows} rows are errors ({outcome.error_rate:.1%}), "
            f"above runner.max_error_rate={float(limit):g}."
        )
    if failure:
        print(f"sentech-eval run: error: {failure}", file=sys.stderr)
    return failure


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
    os.environ[ARGV_ENV] = json.dumps(list(argv))
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
        raise explain_hydra_error(exc) from None
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


def explain_hydra_error(exc: BaseException) -> ConfigError:
    """One sentence for a composition error; an unknown key names the nearest valid one."""
    cause = exc.__cause__
    if (
        isinstance(cause, (ConfigAttributeError, ConfigKeyError))
        and getattr(cause, "parent_node", None) is not None
        and cause.key
    ):
        full_key = str(cause.full_key or cause.key)
        schema = OmegaConf.get_type(cause.parent_node)
        return unknown_key_error(full_key, [str(k) for k in cause.parent_node.keys()], schema=schema)
    if isinstance(exc, OverrideParseException):
        reason = " ".join(str(exc.message).split()).split(" See https://")[0].strip()
        return ConfigError(
            f"Cannot parse the override {exc.override!r} ({reason}); quote values with special "
            "characters, e.g. 'key=\"a(b)\"' (see https://hydra.cc/docs/advanced/override_grammar/basic/)."
        )
    return config_error(exc)
