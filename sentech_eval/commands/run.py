"""``sentech-eval run``: the Hydra app. The task function stays tiny; the work is in ``evaluate``.

Every Hydra flag works (``-m``, ``--cfg job``, ``--help``, ``hydra.run.dir=…``). A user error
stops the run with one sentence; in a multirun the failed job is recorded and the sweep goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from sentech_eval.config import config_error, register_configs
from sentech_eval.engine.evaluation import run_evaluation
from sentech_eval.errors import ConfigError, SentechEvalError
from sentech_eval.paths import CONF_DIR
from sentech_eval.secrets import refuse_secret_overrides

GROUP_CHOICE = re.compile(r"^(?P<group>backend|sampling|dataset|runner|scorers|sweep)=(?P<value>.*)$")


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choices(argv: list[str]) -> None:
    """Refuse an unknown config-group choice (``backend=nope``) with one sentence listing the options.

    Skipped when the user adds config dirs of their own (--config-dir, hydra.searchpath): Hydra checks then.
    """
    if any(arg.startswith(("--config-dir", "-cd", "--config-path", "-cp")) or "hydra.searchpath" in arg for arg in argv):
        return
    for arg in argv:
        match = GROUP_CHOICE.match(arg.lstrip("+"))
        if not match or "," in match["value"] and not match["value"].startswith("["):
            continue  # sweeps over groups (backend=remote,local) are Hydra's to expand
        group, value = match["group"], match["value"].strip()
        values = [v.strip() for v in value.strip("[]").split(",") if v.strip()] if value.startswith("[") else [value]
        known = _choices(group)
        for name in values:
            if name not in known and name != "null":
                raise ConfigError(f"Unknown {group.removesuffix('s')} {name!r}; choose one of: {', '.join(known)} (files in conf/{group}/).")


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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def task(cfg: DictConfig) -> float | None:
    """The Hydra task function: one run of one configuration."""
    out_dir = output_dir()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = evaluate(cfg, out_dir)
    except SentechEvalError as exc:
        print(f"sentech-eval run: error: {exc}", file=sys.stderr)
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
        print(f"sentech-eval run: job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _record_job_status(out_dir, "failed", f"{type(exc).__name__}: {exc}", None)
        return None
    _record_job_status(out_dir, "interrupted" if summary.get("interrupted") else "ok", None, summary)
    if summary.get("interrupted"):
        sys.exit(130)  # one Ctrl-C stops a whole sweep too; the sweep's exit hook still combines results
    return summary.get("objective")


def main(argv: list[str], prog: str = "sentech-eval run") -> int:
    """Entry for ``sentech-eval run``: hand the arguments to Hydra."""
    refuse_secret_overrides(argv)
    check_group_choices(argv)
    register_configs()
    sys.argv = [prog.replace(" ", "-")] + list(argv)
    # Hydra raises its composition errors (a value of the wrong type for its schema) instead of
    # printing them, so they come out as one ConfigError sentence with exit code 2.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        task()
    except (HydraException, OmegaConfBaseException) as exc:
        raise config_error(exc) from None
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return 0
