"""What a run cost: total, per 1,000 requests, and per correct answer with its interval.

Rows carry ``cost_usd`` (written by the runner from ``backend.price``); rows without it cost
nothing here, and results with no ``cost_usd`` at all have no cost figures (``has_cost``).

The cost per correct answer of a 0/1 score is ``total cost / correct answers``, where the
correct answers are ``n × accuracy`` over the ``n`` scored rows (errored rows are never correct,
but what they cost counts). Its interval takes the spend as known and the accuracy as the
uncertain part: with the accuracy's interval ``[low, high]`` — the very interval ``report``
shows for that score (``stats.mean_ci``: Wilson, or cluster-adjusted Wilson when prompts hold
several rows) — it is ``[cost / (n × high), cost / (n × low)]``. When ``low`` is 0 the data do
not rule out that no answer is ever correct, so the interval has no upper bound (``inf``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sentech_eval.analysis import stats

COST_COLUMN = "cost_usd"
NO_UPPER_BOUND = "no upper bound: the accuracy's lower bound is 0"


def has_cost(df: pd.DataFrame) -> bool:
    """True when the rows carry a cost (a ``backend.price`` was set)."""
    return COST_COLUMN in df.columns and df[COST_COLUMN].notna().any()


def total_cost(df: pd.DataFrame) -> float:
    """Sum of ``cost_usd`` over every row, errored ones included (missing costs count as 0)."""
    return float(pd.to_numeric(df[COST_COLUMN], errors="coerce").fillna(0.0).sum())


def binary_scores(df: pd.DataFrame, scores: list[str]) -> list[str]:
    """The scores that are right/wrong (only 0 and 1 among the values): those have a cost per correct answer."""
    return [s for s in scores if s in df.columns and stats.is_binary(pd.to_numeric(df[s], errors="coerce"))]


def accuracy_interval(
    df: pd.DataFrame, score: str, clusters: Any | None = None, confidence: float = 0.95
) -> stats.Interval:
    """The interval ``report`` gives the mean of ``score``: ok rows only, ``stats.mean_ci`` over ``clusters``."""
    values = pd.to_numeric(df[score], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    status = df["status"].to_numpy() if "status" in df.columns else np.full(len(df), "ok", dtype=object)
    return stats.mean_ci(stats.quality_values(values, status), clusters=clusters, confidence=confidence)


def cost_per_correct(cost: float, accuracy: stats.Interval) -> tuple[float, float, float]:
    """(estimate, low, high) of the cost per correct answer from the spend and the accuracy's interval.

    ``cost / (n × accuracy)`` with ``n = accuracy.n`` scored rows; the bounds divide by the upper and
    lower accuracy bounds. A bound (or the estimate) whose accuracy is 0 is ``inf``; NaN without scored rows.
    """
    n = accuracy.n
    if n == 0 or math.isnan(accuracy.estimate):
        return math.nan, math.nan, math.nan

    def per(acc: float) -> float:
        return cost / (n * acc) if acc > 0 else math.inf

    return per(accuracy.estimate), per(accuracy.high), per(accuracy.low)


def cost_columns(part: pd.DataFrame, intervals: dict[str, stats.Interval]) -> dict[str, Any]:
    """A summary row's cost columns: ``cost_usd``, ``cost_per_1k_requests`` and, per 0/1 score in
    ``intervals`` (the accuracy intervals the summary computed), ``cost_per_correct_<name>`` with
    ``_ci_low`` / ``_ci_high`` (``<name>`` = the score without ``score_``)."""
    total = total_cost(part)
    requests = len(part)
    out: dict[str, Any] = {
        COST_COLUMN: total,
        "cost_per_1k_requests": 1000.0 * total / requests if requests else math.nan,
    }
    for score, ci in intervals.items():
        name = f"cost_per_correct_{score.removeprefix('score_')}"
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = cost_per_correct(total, ci)
    return out


def cost_per_correct_names(summary: pd.DataFrame) -> list[str]:
    """The ``cost_per_correct_<name>`` columns of a summary (one per 0/1 score)."""
    return [c for c in summary.columns if c.startswith("cost_per_correct_") and not c.endswith(("_ci_low", "_ci_high"))]


def side_costs(
    df: pd.DataFrame, scores: list[str], clusters: Any | None = None, confidence: float = 0.95
) -> dict[str, Any]:
    """``cost_columns`` of a whole results frame (one side of a comparison), its 0/1 scores' intervals included."""
    intervals = {s: accuracy_interval(df, s, clusters, confidence) for s in binary_scores(df, scores)}
    return cost_columns(df, intervals)


def money(value: float, digits: int = 4) -> str:
    """``$12.35`` from a dollar upwards, else ``digits`` significant figures (``$0.0001234``); '–' for NaN, '∞'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    return "$" + np.format_float_positional(value, precision=digits, unique=False, fractional=False, trim="k")


def interval_text(estimate: float, low: float, high: float) -> str:
    """``$0.0012 [$0.0010, $0.0015]``, saying in words when there is no upper bound or no correct answer."""
    if isinstance(estimate, float) and math.isnan(estimate):
        return "–"
    if math.isinf(estimate):
        return f"no correct answer (≥ {money(low)}; {NO_UPPER_BOUND})"
    if math.isinf(high):
        return f"{money(estimate)} [{money(low)}, {NO_UPPER_BOUND}]"
    return f"{money(estimate)} [{money(low)}, {money(high)}]"
