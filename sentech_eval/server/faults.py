"""Seeded fault injection for ``sentech-eval serve``.

Each authenticated request draws exactly three numbers from one ``random.Random(seed)``, in
the order requests reach the handler, so a given seed and request order always inject the same
faults: drop the connection, answer with an error status, or answer slowly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ERROR_STATUSES = (500, 429, 503)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Rates are probabilities in [0, 1]; ``retry_after_s`` is sent with 429/503 when set.

    The seed is the server's (``--seed``, ``ServeConfig.seed``), given to the ``FaultInjector``.
    """

    error_rate: float = 0.0
    error_status: int = 500
    retry_after_s: float | None = None
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any fault can happen at all (if not, the handler skips the draws)."""
        return self.error_rate > 0 or self.drop_rate > 0 or (self.slow_rate > 0 and self.slow_ms > 0)

    def problems(self) -> list[str]:
        """Human-readable reasons this configuration is invalid (empty when valid)."""
        out = []
        for name in ("error_rate", "drop_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.error_status not in ERROR_STATUSES:
            out.append(f"--error-status must be one of {', '.join(map(str, ERROR_STATUSES))}, got {self.error_status}")
        if self.slow_ms < 0:
            out.append(f"--slow-ms must be >= 0, got {self.slow_ms}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            out.append(f"--retry-after must be >= 0, got {self.retry_after_s}")
        return out


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request: at most one of drop / error, plus an optional delay."""

    drop: bool = False
    error_status: int | None = None
    delay_s: float = 0.0


NO_FAULT = Fault()


class FaultInjector:
    """Deterministic per seed and request order: the n-th request always gets the same ``Fault``."""

    def __init__(self, config: FaultConfig, seed: int = 0) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self.counts = {"requests": 0, "dropped": 0, "errors": 0, "slow": 0}

    def next(self) -> Fault:
        """The fault for the next request (three draws every time, so the sequence is stable)."""
        cfg = self.config
        draw = self._rng.random
        drop_u, error_u, slow_u = draw(), draw(), draw()
        self.counts["requests"] += 1
        delay = cfg.slow_ms / 1000.0 if slow_u < cfg.slow_rate else 0.0
        if delay:
            self.counts["slow"] += 1
        if drop_u < cfg.drop_rate:
            self.counts["dropped"] += 1
            return Fault(drop=True, delay_s=delay)
        if error_u < cfg.error_rate:
            self.counts["errors"] += 1
            return Fault(error_status=cfg.error_status, delay_s=delay)
        return Fault(delay_s=delay) if delay else NO_FAULT
