"""``sentech-eval run … --estimate``: what a run or a whole sweep will cost, before anything is sent.

The config is composed exactly as ``run`` would compose it (Hydra's compose API, same overrides)
and each job's spec built by the same ``job_spec``; a multirun's grid is expanded as the basic
sweeper does (``hydra.sweeper.params`` and command-line sweeps), one estimate per job. Input tokens
are counted locally from the dataset; output tokens and latency come from earlier runs of the same
backend and model under ``results/<experiment>/``. Nothing is sent, unless ``--probe N`` asks for N
real requests of the first job (into a temporary dir) to measure them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from sentech_eval.config import JobSpec, composer, job_spec
from sentech_eval.engine.estimate import (
    Estimate,
    History,
    backend_identity,
    estimate_run,
    format_estimates,
    history_from_results,
)
from sentech_eval.engine.race_sweep import cell_labels
from sentech_eval.errors import ConfigError, SentechEvalError
from sentech_eval.escaping import terminal_lines

FLAGS = ("--estimate", "--estimate=noprobe")  # noprobe: the old spelling; no estimate sends anything now
PROBE_FLAG = "--probe"


def wants_estimate(argv: list[str]) -> bool:
    """True when the command line asks for an estimate (``--probe N`` alone is refused: it goes with it)."""
    if any(a in FLAGS for a in argv):
        return True
    if any(a == PROBE_FLAG or a.startswith(PROBE_FLAG + "=") for a in argv):
        raise ConfigError(f"{PROBE_FLAG} N goes with --estimate: sentech-eval run --estimate --probe 3 ...")
    return False


def split_probe(argv: list[str]) -> tuple[int, list[str]]:
    """(``--probe N``'s N, 0 when absent; the other arguments)."""
    probe, rest, args = 0, [], iter(argv)
    for arg in args:
        if arg == PROBE_FLAG or arg.startswith(PROBE_FLAG + "="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{PROBE_FLAG} {value!r} must be a whole number of requests, e.g. {PROBE_FLAG} 3.")
            probe = int(value)
        else:
            rest.append(arg)
    return probe, rest


def _probe(spec: JobSpec, prompts: int) -> History | None:
    """Send ``prompts`` prompts of this job into a temporary dir; their rows are the history."""
    from sentech_eval.engine.evaluation import run_evaluation

    probe_spec = dataclasses.replace(
        spec,
        dataset=dataclasses.replace(spec.dataset, limit=prompts),
        runner=dataclasses.replace(spec.runner, progress=False, repeats=1),
        scorers=(),
    )
    with tempfile.TemporaryDirectory(prefix="sentech-eval-probe-") as tmp:
        print(f"sentech-eval estimate: probing with {prompts} requests (--probe) ...", file=sys.stderr)
        asyncio.run(run_evaluation(probe_spec, Path(tmp)))
        kind, model = backend_identity(spec)
        history = history_from_results(Path(tmp), kind, model)
    if history is not None:
        history.source = f"a probe of {history.rows} requests"
    return history


def _cells(argv: list[str], base: DictConfig, multirun: bool) -> tuple[list[list[str]], int]:
    """The jobs' override lists (one per grid point) and a multiplier (Optuna trials)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not multirun:
        return [argv], 1
    params = base.hydra.sweeper.get("params") or {}
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + argv)
    try:
        return BasicSweeper.split_arguments(overrides, None)[0], 1
    except HydraException:  # a search space (Optuna): one run of the defaults per trial
        plain = [o.input_line for o in overrides if not o.is_sweep_override()]
        return [plain], int(base.hydra.sweeper.get("n_trials") or 1)


def main(argv: list[str]) -> int:
    """Print the estimate of the run or sweep that ``argv`` describes; returns the exit code."""
    probe, argv = split_probe(argv)
    multirun_flag = any(a in ("-m", "--multirun") for a in argv)
    argv = [a for a in argv if a not in FLAGS and a not in ("-m", "--multirun")]
    with composer() as compose:
        plain_args = [a for a in argv if not _is_sweep(a)]
        base = compose(plain_args, return_hydra_config=True)
        multirun = multirun_flag or str(base.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
        cells, trials = _cells(argv, base, multirun)
        race = "race_sweeper" in str(base.hydra.sweeper.get("_target_", ""))
        labels = cell_labels(cells) if multirun else [""] * len(cells)  # only what differs between jobs
        specs = [job_spec(compose(cell)) for cell in cells]
    kind, model = backend_identity(specs[0])
    history = history_from_results(Path("results") / specs[0].experiment, kind, model)
    if history is None and probe:
        history = _probe(specs[0], probe)
    estimates: list[Estimate] = []
    for spec, label in zip(specs, labels):
        estimates.extend([estimate_run(spec, history, label=label)] * trials)
    note = ""
    if race:
        note = " for the full grid (a race usually spends a fraction of it: see docs/sweeps.md)"
    if trials > 1:
        note += f" ({trials} Optuna trials of the default configuration)"
    print(format_estimates(estimates, note))
    return 0


def _is_sweep(arg: str) -> bool:
    """A command-line sweep (``key=a,b`` or ``key=range(…)``) rather than one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "=" not in arg or arg.startswith("-"):
        return False
    try:
        return OverridesParser.create().parse_overrides([arg])[0].is_sweep_override()
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override when it composes
        return False


def run(argv: list[str]) -> int:
    """``main`` with user errors turned into one sentence and exit code 2."""
    from hydra.errors import HydraException

    try:
        return main(argv)
    except (SentechEvalError, HydraException) as exc:
        print(f"sentech-eval run --estimate: error: {terminal_lines(exc)}", file=sys.stderr)
        return 2
