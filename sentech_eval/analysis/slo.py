"""Serving metrics of a run under load: SLOs, goodput, quality goodput, percentiles, the knee.

``load_summary(results, slo)`` gives one row per run of a configuration at one load (a job of a
``+sweep=load``, or a single run): how many requests, how fast they were sent (``achieved_rps``)
and answered (``throughput_rps``), whether the client kept its schedule, the p50/p90/p95/p99 of
``ttft_s``, ``tpot_s``, ``itl_s`` (every gap of every row) and ``latency_s``, and under an SLO

- ``goodput_rps``          requests meeting every SLO per second of the run (vLLM's goodput),
- ``slo_attainment``       the fraction of requests meeting every SLO,
- ``quality_goodput_rps``  requests meeting every SLO *and* scoring 1 on ``slo.score``.

A request meets an SLO when it succeeded and each metric with a limit is at most that limit; a
missing metric fails (a run without streaming has no TTFT to judge), except TPOT of a one-token
answer, which has no token after the first. ``saturation_knee`` finds the load after which p99
latency grows faster than the rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from sentech_eval.config import MAX_P99_SEND_LAG_S, MIN_ACHIEVED_FRACTION
from sentech_eval.errors import ConfigError

PERCENTILES = (50, 90, 95, 99)
METRICS = ("ttft_s", "tpot_s", "itl_s", "latency_s", "e2e_from_schedule_s")
# Where the rows of one load level are told apart (present columns only).
LOAD_KEYS = ("config_id", "dataset", "job", "arrival", "request_rate")
# The knee: p99 latency grows by more than the rate does, and by at least this much (log scale),
# so the noise of two nearly equal latencies is not a knee.
KNEE_MIN_GROWTH = math.log(1.10)


@dataclass(frozen=True)
class SLO:
    """Latency limits in seconds (None = no limit) and the score a correct answer has 1 on."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    latency_s: float | None = None
    score: str | None = None

    @property
    def limits(self) -> dict[str, float]:
        """The metrics that have a limit."""
        return {name: value for name in ("ttft_s", "tpot_s", "latency_s") if (value := getattr(self, name)) is not None}

    @property
    def active(self) -> bool:
        """Whether any limit or score is set."""
        return bool(self.limits) or self.score is not None

    def describe(self) -> str:
        """E.g. 'ttft_s ≤ 0.5, latency_s ≤ 2, score_contains = 1'."""
        parts = [f"{name} ≤ {value:g}" for name, value in self.limits.items()]
        if self.score:
            parts.append(f"score_{self.score} = 1")
        return ", ".join(parts) or "none"


SLO_KEYS = tuple(f.name for f in fields(SLO))


def parse_slo(assignments: Sequence[str]) -> SLO:
    """``["slo.ttft_s=0.5", "slo.score=contains"]`` -> SLO; ConfigError naming a bad one."""
    values: dict[str, float | str] = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        name = key.removeprefix("slo.")
        if not sep or not key.startswith("slo.") or name not in SLO_KEYS:
            raise ConfigError(
                f"{text!r} is not an SLO; write slo.KEY=VALUE with KEY one of {', '.join(SLO_KEYS)} "
                "(e.g. slo.ttft_s=0.5 slo.latency_s=2 slo.score=contains)."
            )
        if name == "score":
            values[name] = raw.strip().removeprefix("score_")
            if not values[name]:
                raise ConfigError("slo.score needs a score name, e.g. slo.score=contains.")
            continue
        try:
            limit = float(raw)
        except ValueError:
            limit = float("nan")
        if not (limit > 0 and math.isfinite(limit)):
            raise ConfigError(f"slo.{name}={raw!r} must be a positive number of seconds, e.g. slo.{name}=0.5.")
        values[name] = limit
    return SLO(**values)  # type: ignore[arg-type]


def check_slo(results: pd.DataFrame, slo: SLO) -> None:
    """ConfigError when the results cannot be judged against ``slo`` (a metric or score never recorded)."""
    for name in slo.limits:
        if name not in results or results[name].notna().sum() == 0:
            hint = " (TTFT, TPOT and ITL need backend.stream=true)" if name in ("ttft_s", "tpot_s") else ""
            raise ConfigError(
                f"slo.{name} is set but these results have no {name} values{hint}; drop slo.{name} "
                "or report a run that recorded it."
            )
    if slo.score is not None and f"score_{slo.score}" not in results:
        known = sorted(c.removeprefix("score_") for c in results.columns if c.startswith("score_"))
        raise ConfigError(
            f"slo.score={slo.score} names no score column of these results; scores present: "
            f"{', '.join(known) or 'none'} (add one with `sentech-eval score PATH scorers=[{slo.score}]`)."
        )


def meets_slo(results: pd.DataFrame, slo: SLO) -> np.ndarray:
    """Per row: succeeded and within every latency limit (the score is not part of it)."""
    ok = (results["status"] == "ok").to_numpy(copy=True)
    for name, limit in slo.limits.items():
        values = results[name].to_numpy(dtype=float, na_value=np.nan)
        within = values <= limit
        if name == "tpot_s" and "completion_tokens" in results:
            tokens = results["completion_tokens"].to_numpy(dtype=float, na_value=np.nan)
            within |= np.isnan(values) & (tokens <= 1)  # nothing after the first token: nothing to be late
        ok &= within
    return ok


def is_correct(results: pd.DataFrame, score: str) -> np.ndarray:
    """Per row: ``score_<score>`` is 1."""
    values = results[f"score_{score}"].to_numpy(dtype=float, na_value=np.nan)
    return values >= 1.0 - 1e-9


def flat_gaps(column: pd.Series) -> np.ndarray:
    """Every inter-token gap of every row of an ``itl_s`` column (rows hold lists or arrays)."""
    arrays = [np.asarray(v, dtype=float) for v in column if v is not None and not _is_nan(v) and len(v)]
    return np.concatenate(arrays) if arrays else np.array([])


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _span_s(part: pd.DataFrame) -> tuple[float, float]:
    """(seconds from the first send to the last send, seconds from the first send to the last answer)."""
    if "started_at" not in part or part["started_at"].isna().all():
        busy = float(part["latency_s"].sum()) if "latency_s" in part else float("nan")
        return float("nan"), busy
    start = pd.to_datetime(part["started_at"], utc=True)
    end = start + pd.to_timedelta(part["latency_s"].fillna(0.0), unit="s")
    first = start.min()
    return (start.max() - first).total_seconds(), (end.max() - first).total_seconds()


def _percentiles(values: np.ndarray) -> dict[int, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {q: float("nan") for q in PERCENTILES}
    return dict(zip(PERCENTILES, (float(v) for v in np.percentile(values, PERCENTILES))))


def load_keys(results: pd.DataFrame) -> list[str]:
    """The columns that tell one load level's rows from another's in these results."""
    return [k for k in LOAD_KEYS if k in results]


def load_row(part: pd.DataFrame, slo: SLO) -> dict:
    """The load metrics of one run (see the module docstring)."""
    n = len(part)
    ok = part[part["status"] == "ok"]
    send_span, duration = _span_s(part)
    row: dict = {"n": n, "n_ok": len(ok), "duration_s": duration}
    row["achieved_rps"] = (n - 1) / send_span if n > 1 and send_span > 0 else float("nan")
    row["throughput_rps"] = len(ok) / duration if duration > 0 else float("nan")
    if "completion_tokens" in ok and duration > 0:
        row["output_tokens_per_s"] = float(ok["completion_tokens"].sum()) / duration
    for name in METRICS:
        if name not in part:
            continue
        values = flat_gaps(ok[name]) if name == "itl_s" else ok[name].to_numpy(dtype=float, na_value=np.nan)
        if name == "e2e_from_schedule_s" and np.isnan(values).all():
            continue
        for q, v in _percentiles(values).items():
            row[f"{name}_p{q}"] = v
    requested = part["request_rate"].dropna().unique() if "request_rate" in part else []
    lag = part["send_lag_s"].to_numpy(dtype=float, na_value=np.nan) if "send_lag_s" in part else np.array([np.nan])
    row["send_lag_s_p99"] = _percentiles(lag)[99]
    row["schedule_kept"] = schedule_kept(
        row["achieved_rps"], float(requested[0]) if len(requested) else None, row["send_lag_s_p99"]
    )
    if slo.active:
        meets = meets_slo(part, slo)
        row["slo_attainment"] = float(meets.mean()) if n else float("nan")
        row["goodput_rps"] = float(meets.sum()) / duration if duration > 0 else float("nan")
        if slo.score is not None:
            good = meets & is_correct(part, slo.score)
            row["quality_goodput_rps"] = float(good.sum()) / duration if duration > 0 else float("nan")
    return row


def schedule_kept(achieved_rps: float, requested_rps: float | None, p99_lag_s: float) -> bool | None:
    """False when an open-loop client fell behind (p99 send lag > 10 ms or < 98 % of the rate)."""
    if requested_rps is None or not requested_rps > 0:
        return None
    late = not math.isnan(p99_lag_s) and p99_lag_s > MAX_P99_SEND_LAG_S
    slow = not math.isnan(achieved_rps) and achieved_rps < MIN_ACHIEVED_FRACTION * requested_rps
    return not (late or slow)


def load_summary(results: pd.DataFrame, slo: SLO | None = None) -> pd.DataFrame:
    """One row per load level (see ``load_keys``), sorted by configuration and achieved rate."""
    slo = slo or SLO()
    keys = load_keys(results)
    groups = results.groupby(keys, dropna=False, sort=False) if keys else [((), results)]
    rows = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **load_row(part, slo)})
    summary = pd.DataFrame(rows)
    order = [k for k in ("config_id", "dataset") if k in summary] + ["achieved_rps"]
    return summary.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)


def saturation_knee(rates: Sequence[float], p99_latency: Sequence[float]) -> int | None:
    """Index of the point after which p99 latency grows faster than the rate (None: no knee).

    Points are taken in order of rate; the knee is the last point before the first step whose
    relative latency growth exceeds its relative rate growth (log scale) and 10 %.
    """
    pairs = [
        (float(r), float(lat), i)
        for i, (r, lat) in enumerate(zip(rates, p99_latency))
        if r > 0 and lat > 0 and math.isfinite(r) and math.isfinite(lat)
    ]
    pairs.sort()
    for (r0, l0, i0), (r1, l1, _) in zip(pairs, pairs[1:]):
        growth = math.log(l1 / l0)
        if growth > max(math.log(r1 / r0), 0.0) and growth > KNEE_MIN_GROWTH:
            return i0
    return None


def is_load_run(results: pd.DataFrame, slo: SLO) -> bool:
    """Whether the results (or the SLO asked for) call for a load table: an SLO, an open-loop
    arrival process, streamed token timings, or several load levels (jobs) of one configuration."""
    if slo.active:
        return True
    if "arrival" in results and (results["arrival"].dropna() != "closed").any():
        return True
    if "itl_s" in results and results["itl_s"].notna().any():
        return True
    return "job" in results and "config_id" in results and results.groupby("config_id")["job"].nunique().max() > 1


def load_knees(load: pd.DataFrame) -> dict:
    """Configuration -> achieved rate at its saturation knee (configurations with ≥ 3 load levels)."""
    knees = {}
    groups = load.groupby("config_id", sort=False) if "config_id" in load else [("all", load)]
    for config, part in groups:
        if len(part) < 3 or "latency_s_p99" not in part:
            continue
        index = saturation_knee(part["achieved_rps"].tolist(), part["latency_s_p99"].tolist())
        if index is not None:
            knees[config] = float(part["achieved_rps"].iloc[index])
    return knees
