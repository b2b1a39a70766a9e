"""What a run cost: total, per 1,000 requests, and per correct answer with its interval.

Rows carry ``cost_usd`` (written by the runner from ``backend.price``). The cost per correct
answer is ``total cost / correct answers`` = mean cost per request / accuracy; its interval takes
the spend as known and the accuracy as the uncertain part: the accuracy's 95 % bootstrap interval
(clustered over prompts, ``stats.bootstrap_ci``) turned into ``[cost/acc_high, cost/acc_low]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sentech_eval.analysis.stats import bootstrap_ci

COST_COLUMN = "cost_usd"


def has_cost(df: pd.DataFrame) -> bool:
    """True when the rows carry a cost (a ``backend.price`` was set)."""
    return COST_COLUMN in df.columns and df[COST_COLUMN].notna().any()


def cost_summary(df: pd.DataFrame, score: str | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Total cost, cost per 1,000 requests and (with ``score``) cost per correct answer with interval.

    A row is correct when its score is ≥ 0.5 (0/1 scores: exactly the passes); errored rows cost
    what they cost and are never correct.
    """
    costs = pd.to_numeric(df.get(COST_COLUMN, pd.Series(dtype=float)), errors="coerce").fillna(0.0).to_numpy()
    requests = int(len(df))
    total = float(costs.sum())
    out: dict[str, Any] = {"requests": requests, "cost_usd": total,
                           "cost_per_1k_requests": 1000 * total / requests if requests else math.nan}
    if score and score in df.columns:
        ok = (df["status"] == "ok").to_numpy() if "status" in df.columns else np.ones(requests, bool)
        values = pd.to_numeric(df[score], errors="coerce").to_numpy(dtype=float)
        correct = np.where(ok & ~np.isnan(values), (values >= 0.5).astype(float), 0.0)
        clusters = df["prompt_id"].astype(str).to_numpy() if "prompt_id" in df.columns else None
        accuracy, low, high = bootstrap_ci(correct, clusters=clusters, confidence=confidence)
        per_request = total / requests if requests else math.nan
        n_correct = int(correct.sum())
        out.update({
            "score": score, "correct": n_correct,
            "cost_per_correct": total / n_correct if n_correct else math.inf,
            "cost_per_correct_ci_low": per_request / high if high > 0 else math.inf,
            "cost_per_correct_ci_high": per_request / low if low > 0 else math.inf,
        })
    return out


def cost_table(df: pd.DataFrame, by: list[str], score: str | None = None) -> pd.DataFrame:
    """``cost_summary`` per configuration (one row per group of ``by``)."""
    rows = []
    for key, part in df.groupby(by, dropna=False, sort=False) if by else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **cost_summary(part, score)})
    return pd.DataFrame(rows)


def format_cost(summary: dict[str, Any]) -> str:
    """One line: ``$0.0123 total, $0.41 per 1,000 requests, $0.0009 per correct [0.0008, 0.0010]``."""
    text = f"${summary['cost_usd']:.4f} total, ${summary['cost_per_1k_requests']:.4f} per 1,000 requests"
    if "cost_per_correct" in summary:
        text += (f", ${summary['cost_per_correct']:.6f} per correct answer ({summary['score']}) "
                 f"[{summary['cost_per_correct_ci_low']:.6f}, {summary['cost_per_correct_ci_high']:.6f}]")
    return text
