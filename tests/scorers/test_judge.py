"""The LLM-as-judge scorer against a real `sentech-eval serve` (echo engine) on a loopback port.

The echo engine answers with the judge prompt's text, so a rubric of just ``{output}`` makes the
judge "reply" with the graded output: that lets each test choose the judge's reply exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.scorers import build_scorers
from sentech_eval.scorers.judge import DEFAULT_RUBRIC, render
from sentech_eval.server.testing import running_server

KEY_ENV = "SENTECH_EVAL_JUDGE_TEST_KEY"
KEY = "judge-key-31c9"


@pytest.fixture(scope="module")
def judge_url():
    with running_server(engine="echo", api_key=KEY) as url:
        yield url


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def backend(url, **extra):
    return {"kind": "remote", "base_url": url, "model": "judge", "api_key_env": KEY_ENV, **extra}


def judge_rows(cfg, rows):
    async def go():
        [scorer] = build_scorers({"judge": cfg})
        try:
            return scorer, await asyncio.gather(*(scorer.score(r) for r in rows))
        finally:
            await scorer.aclose()

    return asyncio.run(go())


def row(output, reference="Paris"):
    return {"output": output, "reference": reference, "prompt": "What is the capital of France?", "status": "ok"}


def test_grade_is_parsed_normalised_and_costs_recorded(judge_url):
    scorer, outs = judge_rows(
        {"backend": backend(judge_url), "rubric": "{output}"},
        [row("Grade: 8"), row("I think... Grade: 3\nGrade: 10"), row("grade = 0")],
    )
    assert set(scorer.columns()) == {
        "score_judge",
        "score_judge_detail",
        "score_judge_latency_s",
        "score_judge_prompt_tokens",
        "score_judge_completion_tokens",
    }
    assert [o["score_judge"] for o in outs] == [0.8, 1.0, 0.0]  # the last grade in a reply wins
    assert outs[0]["score_judge_detail"].startswith("grade 8/10")
    for o in outs:
        assert o["score_judge_latency_s"] > 0
        assert o["score_judge_prompt_tokens"] >= 1 and o["score_judge_completion_tokens"] >= 1


def test_custom_grade_range(judge_url):
    _, [out] = judge_rows(
        {"backend": backend(judge_url), "rubric": "{output}", "grade_min": 1, "grade_max": 5}, [row("Grade: 4")]
    )
    assert out["score_judge"] == pytest.approx(0.75)


def test_unparseable_and_out_of_range_grades_are_recorded_errors(judge_url):
    _, outs = judge_rows(
        {"backend": backend(judge_url), "rubric": "{output}"}, [row("Paris, clearly"), row("Grade: 12")]
    )
    assert outs[0]["score_judge"] is None
    assert outs[0]["score_judge_detail"].startswith("judge error: no grade found in reply: 'Paris, clearly'")
    assert outs[1]["score_judge"] is None
    assert "grade 12 is outside [0, 10]" in outs[1]["score_judge_detail"]
    assert outs[0]["score_judge_latency_s"] > 0  # the request happened and was timed


def test_default_rubric_reaches_the_judge_and_echo_reply_has_no_grade(judge_url):
    # the echo judge repeats the default rubric, whose last line is "Grade: <number>": no usable grade
    _, [out] = judge_rows({"backend": backend(judge_url)}, [row("Paris")])
    assert out["score_judge"] is None and "no grade found" in out["score_judge_detail"]
    assert out["score_judge_detail"].endswith(
        "End your reply with one line of the form Grade: <number>'"
    )  # the reply's end


def test_judge_request_failures_are_recorded_not_raised():
    with running_server(engine="echo", api_key=KEY, error_rate=1.0, error_status=503) as url:
        _, outs = judge_rows(
            {"backend": backend(url), "rubric": "{output}", "max_attempts": 2, "backoff_s": 0.01}, [row("Grade: 5")] * 3
        )
    for out in outs:
        assert out["score_judge"] is None
        assert out["score_judge_detail"].startswith("judge error (HTTP 503):")


def test_wrong_key_is_recorded_per_row(judge_url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    _, [out] = judge_rows({"backend": backend(judge_url), "rubric": "{output}"}, [row("Grade: 5")])
    assert out["score_judge"] is None and "HTTP 401" in out["score_judge_detail"]
    assert "not-the-key" not in out["score_judge_detail"]


def test_setup_problems_fail_before_any_request(judge_url, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(BackendError, match=KEY_ENV):
        build_scorers({"judge": {"backend": backend(judge_url)}})
    with pytest.raises(ConfigError, match="needs a judge backend"):
        build_scorers({"judge": {"backend": None}})
    with pytest.raises(ConfigError, match="grade_max"):
        build_scorers({"judge": {"backend": backend(judge_url), "grade_min": 5, "grade_max": 5}})
    with pytest.raises(ConfigError, match="capture group"):
        build_scorers({"judge": {"backend": backend(judge_url), "grade_pattern": "grade"}})


def test_render_fills_known_placeholders_and_leaves_other_braces():
    text = render('{"q": "{prompt}", "keep": {literal}} {reference}', {"prompt": "Q?", "reference": None})
    assert text == '{"q": "Q?", "keep": {literal}} '
    assert "{output}" in DEFAULT_RUBRIC and "{reference}" in DEFAULT_RUBRIC
