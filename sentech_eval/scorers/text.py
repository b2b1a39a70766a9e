"""Text-matching scorers on normalised text: ``exact_match``, ``contains`` and ``token_f1``.

Text is compared after ``sentech_eval.normalize.normalize_text`` (case, punctuation, symbols and
spacing do not count). A list reference counts as several acceptable answers (best one wins).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sentech_eval.normalize import normalize_text
from sentech_eval.scorers.base import BaseScorer, references


def tokens(text: Any) -> list[str]:
    """The normalised words of ``text``."""
    norm = normalize_text(text)
    return norm.split(" ") if norm else []


class ExactMatch(BaseScorer):
    """1 when the normalised output equals a normalised reference, else 0 (null without reference)."""

    name = "exact_match"

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        refs = references(row)
        if not refs:
            return self.result(None, "no reference")
        out = normalize_text(row.get("output"))
        return self.result(1.0 if any(out == normalize_text(r) for r in refs) else 0.0)


class Contains(BaseScorer):
    """1 when a normalised reference occurs in the normalised output as whole words, else 0.

    ``whole_words: false`` allows a match inside a word (so "4" is found in "14").
    """

    name = "contains"

    def __init__(self, name: str | None = None, whole_words: bool = True) -> None:
        super().__init__(name)
        self.whole_words = bool(whole_words)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        refs = [normalize_text(r) for r in references(row)]
        refs = [r for r in refs if r]
        if not refs:
            return self.result(None, "no reference")
        out = normalize_text(row.get("output"))
        if self.whole_words:
            hit = any(f" {r} " in f" {out} " for r in refs)
        else:
            hit = any(r in out for r in refs)
        return self.result(1.0 if hit else 0.0)


def token_f1(output: Any, reference: Any) -> float:
    """SQuAD-style F1 between the bags of normalised words of output and reference."""
    out, ref = tokens(output), tokens(reference)
    if not out and not ref:
        return 1.0
    if not out or not ref:
        return 0.0
    common = sum((Counter(out) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1(BaseScorer):
    """Word-overlap F1 in [0, 1] between output and the best-matching reference."""

    name = "token_f1"

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        refs = references(row)
        if not refs:
            return self.result(None, "no reference")
        return self.result(max(token_f1(row.get("output"), r) for r in refs))
