"""Scorers: turn one results row into ``score_<name>`` columns (see ``base`` for the protocol)."""

from __future__ import annotations

from sentech_eval.scorers.base import (
    SCORERS,
    BaseScorer,
    FunctionScorer,
    Scorer,
    build_scorer,
    build_scorers,
    close_scorers,
    null_scores,
    score_row,
    score_schema,
)

__all__ = [
    "SCORERS",
    "BaseScorer",
    "FunctionScorer",
    "Scorer",
    "build_scorer",
    "build_scorers",
    "close_scorers",
    "null_scores",
    "score_row",
    "score_schema",
]
