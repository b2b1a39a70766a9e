"""Building scorers: the registry, the conf/scorers group via Hydra, and user plug-ins via _target_."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from sentech_eval.commands.score import scoring_spec
from sentech_eval.errors import ConfigError
from sentech_eval.paths import conf_dir
from sentech_eval.scorers import FunctionScorer, Scorer, build_scorers, null_scores, score_row, score_schema
from sentech_eval.scorers.base import SCORERS

ROW = {
    "output": "Paris is the capital.",
    "reference": "Paris",
    "prompt": "Capital of France?",
    "prompt_id": "p1",
    "completion_tokens": 4,
    "status": "ok",
}


def run(coro):
    return asyncio.run(coro)


def test_every_registered_scorer_has_a_config_file():
    files = {p.stem for p in (conf_dir() / "scorers").glob("*.yaml")}
    assert files == set(SCORERS)


def test_compose_selects_group_options_and_overrides():
    specs = scoring_spec(["scorers=[exact_match,contains,numeric]", "scorers.numeric.tolerance=0.5"]).scorers
    assert [s.name for s in specs] == ["exact_match", "contains", "numeric"]
    scorers = build_scorers(specs)
    assert [s.name for s in scorers] == ["exact_match", "contains", "numeric"]
    assert scorers[2].tolerance == 0.5
    assert all(isinstance(s, Scorer) for s in scorers)


def test_compose_without_scorers_gives_none():
    assert build_scorers(scoring_spec([]).scorers) == []


def test_compose_unknown_scorer_names_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"Unknown scorer 'exactmatch'; choose one of: code_exec, contains, exact_match"
    ):
        scoring_spec(["scorers=[exactmatch]"])


def test_build_from_names_and_empty_configs():
    assert [s.name for s in build_scorers(["exact_match", "token_f1"])] == ["exact_match", "token_f1"]
    assert [s.name for s in build_scorers({"contains": None, "length": {}})] == ["contains", "length"]
    assert build_scorers(None) == [] and build_scorers({}) == []


def test_unknown_name_without_target_is_a_config_error():
    with pytest.raises(
        ConfigError, match="Unknown scorer 'bleu'; choose one of: code_exec, contains, exact_match, json_valid"
    ):
        build_scorers({"bleu": {}})


def test_bad_option_is_a_config_error():
    with pytest.raises(ConfigError, match="Scorer 'numeric'.*tolerence"):
        build_scorers({"numeric": {"tolerence": 1}})


def test_missing_target_module_is_a_config_error():
    with pytest.raises(ConfigError, match="Scorer 'mine': cannot build 'nowhere.at_all'"):
        build_scorers({"mine": {"_target_": "nowhere.at_all"}})


def test_user_function_from_config_with_options():
    cfg = OmegaConf.create({"starts": {"_target_": "scorers.plugins.starts_with_reference", "case_sensitive": True}})
    [scorer] = build_scorers(cfg)
    assert isinstance(scorer, FunctionScorer) and scorer.name == "starts"
    assert scorer.columns() == {"score_starts": pa.float64(), "score_starts_detail": pa.string()}
    assert run(scorer.score(ROW)) == {"score_starts": 1.0, "score_starts_detail": None}
    assert run(scorer.score({**ROW, "output": "paris!"})) == {"score_starts": 0.0, "score_starts_detail": None}
    assert run(scorer.score({**ROW, "reference": None}))["score_starts"] is None


def test_user_function_returning_dict_and_async_function():
    [words, length] = build_scorers(
        {"short": {"_target_": "scorers.plugins.word_count"}, "chars": {"_target_": "scorers.plugins.async_len"}}
    )
    assert run(words.score(ROW)) == {"score_short": 0.0, "score_short_detail": "4 words"}
    assert run(length.score(ROW))["score_chars"] == float(len(ROW["output"]))


def test_user_function_with_unknown_option_is_refused_at_build_time():
    with pytest.raises(ConfigError, match="Scorer 'w'.*word_count cannot be called.*bogus"):
        build_scorers({"w": {"_target_": "scorers.plugins.word_count", "bogus": 1}})


def test_user_function_exception_is_recorded_not_raised():
    [scorer] = build_scorers({"bad": {"_target_": "scorers.plugins.explode"}})
    out = run(scorer.score(ROW))
    assert out == {"score_bad": None, "score_bad_detail": "error: ValueError: boom on p1"}


def test_user_class_from_config():
    [scorer] = build_scorers({"plen": {"_target_": "scorers.plugins.PromptLength", "unit": "words"}})
    assert scorer.name == "plen"
    assert run(scorer.score(ROW)) == {"score_plen": 3.0}


def test_duplicate_columns_are_refused():
    with pytest.raises(ConfigError, match="both write column 'score_x'"):
        build_scorers(
            {
                "x": {"_target_": "scorers.plugins.async_len"},
                "y": {"_target_": "scorers.plugins.PromptLength", "name": "x"},
            }
        )


def test_score_row_and_null_scores_cover_every_column():
    scorers = build_scorers(["exact_match", "length"])
    assert list(score_schema(scorers)) == [
        "score_exact_match",
        "score_exact_match_detail",
        "score_length",
        "score_length_chars",
    ]
    out = run(score_row(scorers, ROW))
    assert out["score_exact_match"] == 0.0 and out["score_length"] == 4.0
    assert null_scores(scorers) == dict.fromkeys(score_schema(scorers))
