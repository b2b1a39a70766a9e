"""``regex``: find a pattern in the output and compare its capture group to the reference."""

from __future__ import annotations

import re
from typing import Any

from sentech_eval import normalize
from sentech_eval.errors import ConfigError
from sentech_eval.scorers.base import BaseScorer, references


class RegexMatch(BaseScorer):
    """Score 1 when ``pattern`` matches and its ``group`` equals a reference (normalised), else 0.

    Without a reference the score is 1 when the pattern matches at all. ``group`` is a number or
    a name (default: 1 when the pattern has groups, else the whole match). ``last: true`` takes
    the last match instead of the first. The detail holds the captured text, or "no match".
    """

    name = "regex"

    def __init__(
        self,
        name: str | None = None,
        pattern: str | None = None,
        group: int | str | None = None,
        ignore_case: bool = True,
        last: bool = False,
        normalize_text: bool = True,
    ) -> None:
        super().__init__(name)
        if not pattern:
            raise ConfigError(f"Scorer {self.name!r} needs a pattern: set scorers.{self.name}.pattern='...'.")
        try:
            self.regex = re.compile(str(pattern), re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ConfigError(
                f"Scorer {self.name!r}: pattern {pattern!r} is not a valid regular expression ({exc})."
            ) from None
        if group is None:
            group = 1 if self.regex.groups else 0
        if isinstance(group, int) and group > self.regex.groups:
            raise ConfigError(
                f"Scorer {self.name!r}: pattern {pattern!r} has {self.regex.groups} group(s), not group {group}."
            )
        if isinstance(group, str) and not group.isdigit() and group not in self.regex.groupindex:
            raise ConfigError(f"Scorer {self.name!r}: pattern {pattern!r} has no group named {group!r}.")
        self.group = int(group) if isinstance(group, str) and group.isdigit() else group
        self.last = bool(last)
        self.normalize_text = bool(normalize_text)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        output = "" if row.get("output") is None else str(row["output"])
        matches = list(self.regex.finditer(output)) if self.last else [m for m in [self.regex.search(output)] if m]
        if not matches:
            return self.result(0.0, "no match")
        captured = matches[-1].group(self.group)
        if captured is None:
            return self.result(0.0, "group did not participate in the match")
        refs = references(row)
        if not refs:
            return self.result(1.0, captured)
        norm = normalize.normalize_text if self.normalize_text else (lambda s: str(s).strip())
        return self.result(1.0 if any(norm(captured) == norm(r) for r in refs) else 0.0, captured)
