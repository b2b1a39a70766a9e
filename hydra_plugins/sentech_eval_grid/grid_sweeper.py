"""sentech-eval's ``hydra/sweeper=basic`` (the default of ``sentech-eval run -m``): Hydra's basic grid, checked faster.

Hydra's basic sweeper composes every job's configuration once before launching the batch, only to
check it, and the launcher composes each one again to run it: two compositions per job, each
reading and merging every YAML file. This one checks one job per distinct combination of
config-group choices (``dataset=a,b`` makes two; ``sampling.temperature=0,0.3,0.7`` makes one),
which is where a composition can fail on something the first job does not show (a missing option, a
key another group lacks). A bad *value* in a later job (``sampling.temperature=0,abc``) is reported
when that job starts, in one sentence, after the jobs before it have kept their results.
``hydra.sweeper.check_every_job=true`` brings back Hydra's check of every job.

Importing this module registers it as ``hydra/sweeper=basic`` (replacing Hydra's entry, so sweep
files that select another sweeper, such as ``optuna`` or ``race``, still do) and as ``grid``.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan executes this module before it is in
# sys.modules, where a dataclass with string annotations cannot be built.
from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser


@dataclass
class GridSweeperConf:
    """``hydra.sweeper.*`` of the grid sweeper: the basic sweeper's fields and ``check_every_job``."""

    _target_: str = "hydra_plugins.sentech_eval_grid.grid_sweeper.GridSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    check_every_job: bool = False


class GridSweeper(BasicSweeper):
    """The basic sweeper's grid (``params`` and command-line sweeps, same batches), one check per group choice."""

    def __init__(
        self, max_batch_size: int | None = None, params: dict[str, str] | None = None, check_every_job: bool = False
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.check_every_job = check_every_job
        self._checked: set[tuple[tuple[str, str], ...]] = set()

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose the first job of each new combination of config-group overrides (raises as Hydra does)."""
        if self.check_every_job:
            super().validate_batch_is_legal(batch)
            return
        assert self.config is not None and self.hydra_context is not None
        groups = set(self.config.hydra.runtime.choices.keys())
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for overrides in batch:
            parsed = parser.parse_overrides(list(overrides))
            signature = tuple(
                sorted(
                    (o.key_or_group, str(o.value()))
                    for o in parsed
                    if o.key_or_group in groups or o.is_add() and "." not in o.key_or_group
                )
            )
            if signature in self._checked:
                continue
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            self._checked.add(signature)


for _name in ("basic", "grid"):
    ConfigStore.instance().store(group="hydra/sweeper", name=_name, node=GridSweeperConf, provider="sentech-eval")
