"""config.py: ranges, unknown keys, secret-looking keys, config_id stability."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sentech_eval.config import config_id, find_secret_keys, validate
from sentech_eval.errors import ConfigError
from sentech_eval.types import Sampling


def make_cfg(**overrides):
    base = {
        "experiment": "t",
        "backend": {"kind": "remote", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "X"},
        "sampling": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "frequency_penalty": 0.0,
                     "presence_penalty": 0.0, "max_tokens": 16, "seed": 0},
        "dataset": {"name": "d", "path": "d.parquet", "limit": None},
        "runner": {"concurrency": 4, "repeats": 1},
        "scorers": {},
    }
    cfg = OmegaConf.create(base)
    for dotted, value in overrides.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value, force_add=True)
    return cfg


def test_valid_config_gives_typed_sections():
    sampling, dataset, runner = validate(make_cfg())
    assert sampling == Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0)
    assert dataset.path == "d.parquet" and dataset.num_shards == 1
    assert runner.concurrency == 4 and runner.max_retries == 5


@pytest.mark.parametrize("key,value,fragment", [
    ("sampling__temperature", 2.5, "sampling.temperature=2.5 is out of range"),
    ("sampling__temperature", -0.1, "between 0 and 2"),
    ("sampling__top_p", 0.0, "greater than 0 and at most 1"),
    ("sampling__top_p", 1.5, "sampling.top_p"),
    ("sampling__top_k", -1, "sampling.top_k=-1"),
    ("sampling__frequency_penalty", 2.5, "between -2 and 2"),
    ("sampling__presence_penalty", -3, "sampling.presence_penalty"),
    ("sampling__max_tokens", 0, "at least 1"),
    ("sampling__temperature", "hot", "must be a number"),
    ("sampling__top_k", 1.5, "must be an integer"),
    ("runner__concurrency", 0, "runner.concurrency=0 must be at least 1"),
    ("runner__repeats", 0, "runner.repeats=0"),
    ("dataset__limit", 0, "dataset.limit=0"),
    ("dataset__shard_index", 3, "dataset.shard_index=3"),
])
def test_out_of_range_values_are_refused_with_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        validate(make_cfg(**{key: value}))


def test_null_sampling_values_are_allowed_and_not_sent():
    sampling, _, _ = validate(make_cfg(sampling__top_k=None, sampling__temperature=None))
    assert "top_k" not in sampling.request_fields()
    assert "temperature" not in sampling.request_fields()
    assert sampling.request_fields()["top_p"] == 0.9
    assert "seed" not in sampling.request_fields()


@pytest.mark.parametrize("key", ["sampling__tempurature", "runner__concurency", "dataset__pth", "surprise"])
def test_unknown_keys_are_named(key):
    with pytest.raises(ConfigError, match="Unknown config key"):
        validate(make_cfg(**{key: 1}))


@pytest.mark.parametrize("key", ["backend__api_key", "backend__token", "backend__headers__authorization", "password"])
def test_credential_keys_are_refused(key):
    with pytest.raises(ConfigError, match="SENTECH_API_KEY"):
        validate(make_cfg(**{key: "sk-123"}))


def test_api_key_env_is_not_a_credential():
    assert find_secret_keys({"backend": {"api_key_env": "X", "max_tokens": 3}}) == []


def test_config_id_is_stable_and_sensitive_to_sampling():
    a = config_id("remote", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a == config_id("remote", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a != config_id("remote", "m", Sampling(0.8, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a != config_id("local", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert len(a) == 12
