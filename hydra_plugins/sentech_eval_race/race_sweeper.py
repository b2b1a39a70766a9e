"""``hydra/sweeper=race``: the grid of the basic sweeper's ``params``, raced in rounds.

The grid is parsed exactly as Hydra's basic sweeper does it (``hydra.sweeper.params`` plus
command-line sweeps); ``sentech_eval.engine.race_sweep.run_race`` decides which cells run in each
round and hands each round to the configured launcher (basic, joblib, ray, submitit …). After the
race the sweep dir is combined (results.parquet, trials.parquet, sweep.json) and reported
(report.html with a race section); the last line printed names the winner.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


class RaceSweeper(BasicSweeper):
    """Runs the grid as a race (see docs/sweeps.md); settings under ``race.*`` in the task config."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments: list[str]) -> Any:
        """Parse the grid, race it, combine and report the sweep dir."""
        # sentech_eval is imported when a race runs, not at Hydra's plugin scan, which imports this
        # module in every Hydra app of the environment (numpy, pyarrow … only for a race)
        from sentech_eval.config import job_spec
        from sentech_eval.engine.race_sweep import run_race

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        spec = job_spec(self.config, racing=True)  # the sweep's base job, checked (a user error: one sentence, exit 2)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        cells = self.split_arguments(overrides, None)[0]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        launcher = self.launcher

        def launch(batch, initial_job_idx):
            returns = launcher.launch(batch, initial_job_idx=initial_job_idx)
            self.returns.append(returns)
            return returns

        self.returns: list[Any] = []
        record = run_race(spec, cells, launch, sweep_dir)  # a user error reaches the CLI: one sentence, exit 2
        _report(sweep_dir, record, announce=not _combines_at_the_end(self.config))
        return self.returns


def _combines_at_the_end(config: Any) -> bool:
    """Whether the CombineSweepResults callback runs after the sweep: it prints the winner line last."""
    callbacks = config.hydra.get("callbacks") or {}
    return any(str(c.get("_target_", "")).endswith(".CombineSweepResults") for c in callbacks.values())


def _report(sweep_dir: Path, record: dict[str, Any], announce: bool) -> None:
    """Combine the cells' results and write report.html (with the race section) into the sweep dir;
    ``announce``: print the winner line (else the combine callback prints it, once, as the last line)."""
    from sentech_eval.commands.report import write_report
    from sentech_eval.engine.sweep import combine
    from sentech_eval.errors import SentechEvalError
    from sentech_eval.escaping import terminal_text

    try:
        combine(sweep_dir)
        write_report(sweep_dir / "results.parquet", out=sweep_dir)
    except SentechEvalError as exc:
        print(f"sentech-eval race: no report ({terminal_text(exc)})", file=sys.stderr)
    if announce:
        print(terminal_text(record["line"]), file=sys.stderr)
