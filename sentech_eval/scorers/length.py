"""``length``: the size of the answer, in completion tokens and in characters."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from sentech_eval.scorers.base import BaseScorer, score_column


class Length(BaseScorer):
    """``score_length`` = completion tokens (null if the backend reported none);
    ``score_length_chars`` = characters of the output."""

    name = "length"

    def columns(self) -> dict[str, pa.DataType]:
        return {score_column(self.name): pa.float64(), f"{score_column(self.name)}_chars": pa.float64()}

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        tokens = row.get("completion_tokens")
        try:
            tokens = None if tokens is None or tokens != tokens else float(tokens)
        except (TypeError, ValueError):
            tokens = None
        output = row.get("output")
        return {
            score_column(self.name): tokens,
            f"{score_column(self.name)}_chars": float(len(output)) if output is not None else None,
        }
