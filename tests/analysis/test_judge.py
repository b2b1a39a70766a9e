"""The pairwise judge: verdict parsing, the preference arithmetic, and a real run on the echo server."""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import TEST_KEY
from synthetic_results import make_results

from sentech_eval.analysis.judge import judge_pairs, judge_rows, parse_verdict
from sentech_eval.analysis.pairing import pair_frames
from sentech_eval.commands.compare import judge_spec
from sentech_eval.errors import AuthenticationError, ConfigError


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Answer 2 names the capital.\nWinner: 2", "2"),
        ("**Winner:** 1", "1"),
        ("winner = TIE", "tie"),
        ("Winner: 1 ... on reflection, Winner: 2", "2"),
        ("Both are fine.", None),
        (None, None),
    ],
)
def test_parse_verdict(reply: str | None, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_preference_consistency_and_errors_from_verdicts() -> None:
    rows = [  # (prompt, order, prefers, error)
        ("p1", "AB", "B", None),
        ("p1", "BA", "B", None),  # B twice -> 1.0, consistent
        ("p2", "AB", "A", None),
        ("p2", "BA", "B", None),  # position bias -> 0.5, inconsistent
        ("p3", "AB", "tie", None),
        ("p3", "BA", "tie", None),  # tie -> 0.5, consistent
        ("p4", "AB", None, "no verdict"),
        ("p4", "BA", "A", None),  # one usable verdict -> 0.0
    ]
    j = pd.DataFrame(
        [
            {"prompt_id": p, "repeat": 0, "order": o, "verdict": "x", "prefers": w, "error": e, "latency_s": 0.1}
            for p, o, w, e in rows
        ]
    )
    out = {r["metric"]: r for r in judge_rows(j)}
    pref = out["judge_preference_b"]
    assert pref["value"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert pref["ci_low"] <= pref["value"] <= pref["ci_high"]
    assert (pref["wins"], pref["ties"], pref["losses"]) == (1, 2, 1)
    assert out["judge_position_consistency"]["value"] == pytest.approx(2 / 3)
    assert out["judge_errors"]["value"] == 1 and out["judge_errors"]["n_pairs"] == 8


def test_judge_overrides_must_be_overrides() -> None:
    with pytest.raises(ConfigError, match="put A and B before --judge"):
        judge_spec(["backend=local", "results/run-b"])


def test_judge_on_the_echo_server_asks_twice_per_pair(echo_server: str, monkeypatch) -> None:
    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
    a = make_results(n=6, wrong_ids=set())
    b = make_results(n=6, wrong_ids={0, 1})  # pairs 0 and 1 differ; 2-5 are identical (ties, not asked)
    j = judge_pairs(
        pair_frames(a, b), judge_spec(["backend=remote", f"backend.base_url={echo_server}", "backend.model=echo"])
    )
    assert len(j) == 12 and set(j["order"]) == {"AB", "BA"}
    asked = j[j["verdict"] != "identical outputs"]
    assert sorted(asked["prompt_id"].unique()) == ["cap-000", "cap-001"]
    # The echo engine echoes the judge prompt, whose last "Winner: ..." option is "tie".
    assert asked["error"].isna().all() and (asked["prefers"] == "tie").all()
    assert asked["latency_s"].gt(0).all()


def test_judge_errors_are_recorded_not_fatal(monkeypatch) -> None:
    from sentech_eval.server.testing import running_server

    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)
    a = make_results(n=2, wrong_ids=set())
    b = make_results(n=2, wrong_ids={0, 1})
    with running_server(engine="echo", api_key=TEST_KEY, error_rate=1.0, error_status=500) as url:
        j = judge_pairs(
            pair_frames(a, b), judge_spec(["backend=remote", f"backend.base_url={url}", "backend.timeout_s=5"])
        )
    assert len(j) == 4 and j["prefers"].isna().all()
    assert j["error"].str.contains("HTTP 500").all()
    assert {r["metric"]: r for r in judge_rows(j)}["judge_errors"]["value"] == 4


def test_rejected_judge_key_stops_with_one_sentence(echo_server: str, monkeypatch) -> None:
    monkeypatch.setenv("SENTECH_API_KEY", "wrong-key")
    a = make_results(n=3, wrong_ids=set())
    b = make_results(n=3, wrong_ids={0, 1, 2})
    with pytest.raises(AuthenticationError, match="judge backend rejected the API key"):
        judge_pairs(pair_frames(a, b), judge_spec(["backend=remote", f"backend.base_url={echo_server}"]))
