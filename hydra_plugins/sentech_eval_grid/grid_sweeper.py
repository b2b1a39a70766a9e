"""``hydra/sweeper=grid`` (the default of ``sentech-eval run -m``): Hydra's basic sweeper, checked faster.

The basic sweeper composes every job's configuration once before launching the batch, only to check
it, and the launcher composes each one again to run it: two compositions per job, each reading and
merging every YAML file. This sweeper checks one job per distinct combination of config-group choices
(``backend=remote,local`` makes two; ``sampling.temperature=0,0.3,0.7`` makes one), which is where a
composition can fail on something the first job does not show (a missing option, a key another
group lacks). A bad *value* in a later job (``sampling.temperature=0,abc``) is reported when that
job starts, in one sentence, after the jobs before it have kept their results.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class GridSweeper(BasicSweeper):
    """The basic sweeper's grid (``params`` and command-line sweeps, same batches), one check per group choice."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self._checked: set[tuple[tuple[str, str], ...]] = set()

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose the first job of each new combination of config-group overrides (raises as Hydra does)."""
        assert self.config is not None and self.hydra_context is not None
        groups = set(self.config.hydra.runtime.choices.keys())
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for overrides in batch:
            parsed = parser.parse_overrides(list(overrides))
            signature = tuple(sorted((o.key_or_group, str(o.value())) for o in parsed
                                     if o.key_or_group in groups or o.is_add() and "." not in o.key_or_group))
            if signature in self._checked:
                continue
            self._compose(overrides)
            self._checked.add(signature)

    def _compose(self, overrides: Sequence[str]) -> None:
        """Compose one job's configuration the way the launcher will (errors surface here, before any job runs)."""
        assert self.config is not None and self.hydra_context is not None
        self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
