"""The built-in scorers on realistic outputs, one behaviour per case."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from sentech_eval.errors import ConfigError
from sentech_eval.normalize import normalize_text
from sentech_eval.scorers import build_scorer
from sentech_eval.scorers.numeric import last_number
from sentech_eval.scorers.text import token_f1


def score(name, output, reference=None, **options):
    row = {"output": output, "reference": reference, "prompt": "q?", "completion_tokens": 3, "status": "ok"}
    return asyncio.run(build_scorer(name, options).score(row))


def test_normalize_drops_case_punctuation_and_extra_space():
    assert normalize_text("  The  Capital: PARIS!! ") == "the capital paris"
    assert normalize_text(None) == ""
    assert normalize_text("Ｐａｒｉｓ") == "paris"  # NFKC folds full-width letters


@pytest.mark.parametrize(
    "output,reference,expected",
    [
        ("Paris", "Paris", 1.0),
        ("  paris. ", "Paris", 1.0),
        ("PARIS!", "paris", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("", "Paris", 0.0),
    ],
)
def test_exact_match(output, reference, expected):
    assert score("exact_match", output, reference)["score_exact_match"] == expected


def test_exact_match_without_reference_is_null_with_reason():
    out = score("exact_match", "Paris", None)
    assert out["score_exact_match"] is None
    assert out["score_exact_match_detail"] == "no reference"


def test_list_reference_accepts_any():
    assert score("exact_match", "Mumbai", ["Bombay", "Mumbai"])["score_exact_match"] == 1.0


@pytest.mark.parametrize(
    "output,reference,expected",
    [
        ("The capital of France is Paris.", "Paris", 1.0),
        ("It's New  York City", "new york", 1.0),
        ("The answer is 14.", "4", 0.0),  # whole words: "4" is not in "14"
        ("Lyon", "Paris", 0.0),
    ],
)
def test_contains(output, reference, expected):
    assert score("contains", output, reference)["score_contains"] == expected


def test_contains_inside_words_when_asked():
    assert score("contains", "The answer is 14.", "4", whole_words=False)["score_contains"] == 1.0


@pytest.mark.parametrize(
    "output,reference,expected",
    [
        ("Paris", "Paris", 1.0),
        ("the city of Paris", "Paris", 2 * 0.25 * 1.0 / 1.25),  # precision 1/4, recall 1
        ("Lyon", "Paris", 0.0),
    ],
)
def test_token_f1(output, reference, expected):
    assert score("token_f1", output, reference)["score_token_f1"] == pytest.approx(expected)


def test_token_f1_counts_repeated_words_once_per_match():
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "output,reference,expected,detail",
    [
        ("Final answer: Paris.", "paris", 1.0, "Paris"),
        ("answer = Lyon", "Paris", 0.0, "Lyon"),
        ("I do not know", "Paris", 0.0, "no match"),
    ],
)
def test_regex_capture_group_against_reference(output, reference, expected, detail):
    out = score("regex", output, reference, pattern=r"answer\s*[:=]\s*(\w+)")
    assert (out["score_regex"], out["score_regex_detail"]) == (expected, detail)


def test_regex_named_group_last_match_and_no_reference():
    out = score("regex", "x=1, x=2, x=3", None, pattern=r"x=(?P<v>\d)", group="v", last=True)
    assert out == {"score_regex": 1.0, "score_regex_detail": "3"}


@pytest.mark.parametrize(
    "options,fragment",
    [
        ({}, "needs a pattern"),
        ({"pattern": "("}, "not a valid regular expression"),
        ({"pattern": "(a)", "group": 2}, r"has 1 group\(s\)"),
        ({"pattern": "(a)", "group": "nope"}, "no group named"),
    ],
)
def test_regex_bad_config_is_one_sentence(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_scorer("regex", options)


@pytest.mark.parametrize(
    "text,value",
    [
        ("The answer is 42.", 42.0),
        ("1,234.5 apples then -3", -3.0),
        ("total: 1,234.5", 1234.5),
        ("about 2.5e3 m", 2500.0),
        ("1, 2, 3", 3.0),
        ("no digits here", None),
    ],
)
def test_last_number(text, value):
    found = last_number(text)
    assert (found[0] if found else None) == value


@pytest.mark.parametrize(
    "output,reference,options,expected",
    [
        ("So 7 * 6 = 42", "42", {}, 1.0),
        ("It is 41.", "42", {}, 0.0),
        ("It is 41.", "42", {"tolerance": 1}, 1.0),
        ("about 101", "100", {"rel_tolerance": 0.02}, 1.0),
        ("about 103", "100", {"rel_tolerance": 0.02}, 0.0),
        ("I cannot count", "42", {}, 0.0),
    ],
)
def test_numeric(output, reference, options, expected):
    assert score("numeric", output, reference, **options)["score_numeric"] == expected


def test_numeric_reference_without_number_is_null():
    out = score("numeric", "42", "forty-two")
    assert out["score_numeric"] is None and "has no number" in out["score_numeric_detail"]


def test_numeric_negative_tolerance_refused():
    with pytest.raises(ConfigError, match="tolerance"):
        build_scorer("numeric", {"tolerance": -1})


SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}


@pytest.mark.parametrize(
    "output,options,expected,detail_part",
    [
        ('{"city": "Paris"}', {}, 1.0, None),
        ("{'city': 'Paris'}", {}, 0.0, "invalid JSON"),
        ('{"city": "Paris"}', {"schema": SCHEMA}, 1.0, None),
        ('{"city": 3}', {"schema": SCHEMA}, 0.0, "schema: city: 3 is not of type 'string'"),
        ('{"town": "x"}', {"schema": SCHEMA}, 0.0, "'city' is a required property"),
        ('Here:\n```json\n{"city": "Paris"}\n```', {"extract": True}, 1.0, None),
        ('Here:\n```json\n{"city": "Paris"}\n```', {}, 0.0, "invalid JSON"),
    ],
)
def test_json_valid(output, options, expected, detail_part):
    out = score("json_valid", output, **options)
    assert out["score_json_valid"] == expected
    if detail_part:
        assert detail_part in out["score_json_valid_detail"]


def test_json_valid_schema_from_file_and_bad_schema(tmp_path):
    import json

    path = tmp_path / "s.json"
    path.write_text(json.dumps(SCHEMA))
    assert score("json_valid", '{"city": "Rome"}', schema_path=str(path))["score_json_valid"] == 1.0
    with pytest.raises(ConfigError, match="JSON Schema is invalid"):
        build_scorer("json_valid", {"schema": {"type": "no-such-type"}})
    with pytest.raises(ConfigError, match="cannot read JSON Schema"):
        build_scorer("json_valid", {"schema_path": str(tmp_path / "missing.json")})


def test_length_tokens_and_chars():
    scorer = build_scorer("length")
    assert scorer.columns() == {"score_length": pa.float64(), "score_length_chars": pa.float64()}
    row = {"output": "The capital is Paris.", "completion_tokens": 5}
    assert asyncio.run(scorer.score(row)) == {"score_length": 5.0, "score_length_chars": 21.0}
    assert asyncio.run(scorer.score({"output": "ab", "completion_tokens": None})) == {
        "score_length": None,
        "score_length_chars": 2.0,
    }
