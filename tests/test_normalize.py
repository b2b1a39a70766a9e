"""One normaliser: exact_match and compare's output agreement call the same answers the same."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from sentech_eval.analysis.compare import agreement_row
from sentech_eval.analysis.pairing import pair_frames
from sentech_eval.normalize import normalize_text
from sentech_eval.scorers import build_scorer


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("$5", "5", True),  # symbols are not part of an answer
        ("5 €", "5", True),
        ("Paris!", "paris", True),
        ("STRASSE", "straße", True),  # case-folded, not just lower-cased
        ("Ｐａｒｉｓ", "Paris", True),  # NFKC
        ("5", "50", False),
        ("Paris", "Lyon", False),
    ],
)
def test_exact_match_and_output_agreement_agree(a, b, same):
    assert (normalize_text(a) == normalize_text(b)) is same
    exact = build_scorer("exact_match", {})
    assert asyncio.run(exact.score({"output": a, "reference": b, "status": "ok"}))["score_exact_match"] == float(same)
    rows = {"prompt_id": ["p"], "repeat": [0], "status": ["ok"]}
    paired = pair_frames(pd.DataFrame({**rows, "output": [a]}), pd.DataFrame({**rows, "output": [b]}))
    assert agreement_row(paired)["value"] == float(same)
