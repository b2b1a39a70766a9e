"""``numeric``: the last number in the output against the reference number, with a tolerance."""

from __future__ import annotations

import math
import re
from typing import Any

from sentech_eval.errors import ConfigError
from sentech_eval.scorers.base import BaseScorer, references

# 1,234.5  -3  .5  2e-3 ; thousands separators are dropped before parsing.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def last_number(text: Any) -> tuple[float, str] | None:
    """The last number in ``text`` as (value, matched text), or None."""
    if text is None:
        return None
    found = None
    for m in NUMBER.finditer(str(text)):
        s = m.group(0)
        if not any(ch.isdigit() for ch in s) or s[0] in "eE":
            continue
        try:
            found = (float(s.replace(",", "")), s)
        except ValueError:
            continue
    return found


class NumericMatch(BaseScorer):
    """1 when |last number in output - reference| <= tolerance (+ rel_tolerance * |reference|), else 0.

    The detail holds the number found (or "no number"). A reference that is not a number gives
    a null score with the reason in the detail.
    """

    name = "numeric"

    def __init__(self, name: str | None = None, tolerance: float = 1e-6, rel_tolerance: float = 0.0) -> None:
        super().__init__(name)
        if tolerance is None or float(tolerance) < 0 or rel_tolerance is None or float(rel_tolerance) < 0:
            raise ConfigError(f"Scorer {self.name!r}: tolerance and rel_tolerance must be >= 0.")
        self.tolerance = float(tolerance)
        self.rel_tolerance = float(rel_tolerance)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        refs = references(row)
        if not refs:
            return self.result(None, "no reference")
        ref_values = [v[0] for v in (last_number(r) for r in refs) if v is not None]
        if not ref_values:
            return self.result(None, f"reference {refs[0]!r} has no number")
        found = last_number(row.get("output"))
        if found is None:
            return self.result(0.0, "no number")
        value, text = found
        ok = any(
            math.isclose(value, ref, rel_tol=self.rel_tolerance, abs_tol=self.tolerance)
            or abs(value - ref) <= self.tolerance + self.rel_tolerance * abs(ref)
            for ref in ref_values
        )
        return self.result(1.0 if ok else 0.0, text)
