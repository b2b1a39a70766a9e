"""sentech_eval.config: the job spec built once (ranges, unknown keys, secret-looking keys), config_id stability."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sentech_eval.config import config_id, find_secret_keys, job_spec
from sentech_eval.errors import ConfigError
from sentech_eval.types import Sampling


def make_cfg(**overrides):
    base = {
        "experiment": "t",
        "backend": {"kind": "remote", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "X"},
        "sampling": {
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "max_tokens": 16,
            "seed": 0,
        },
        "dataset": {"name": "d", "path": "d.parquet", "limit": None},
        "runner": {"concurrency": 4, "repeats": 1},
        "scorers": {},
    }
    cfg = OmegaConf.create(base)
    for dotted, value in overrides.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value, force_add=True)
    return cfg


def test_valid_config_gives_typed_sections():
    spec = job_spec(make_cfg())
    assert spec.sampling == Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0)
    assert spec.dataset.path == "d.parquet" and spec.dataset.num_shards == 1
    assert spec.runner.concurrency == 4 and spec.runner.max_retries == 5
    assert spec.backend.base_url == "http://127.0.0.1:1/v1" and spec.backend.timeout_s == 60.0  # schema default
    assert spec.price is None and spec.race is None and spec.scorers == () and spec.experiment == "t"


def test_the_spec_is_frozen():
    import dataclasses

    spec = job_spec(make_cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.runner = None


@pytest.mark.parametrize(
    "key,value,fragment",
    [
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
    ],
)
def test_out_of_range_values_are_refused_with_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        job_spec(make_cfg(**{key: value}))


def test_null_sampling_values_are_allowed_and_not_sent():
    sampling = job_spec(make_cfg(sampling__top_k=None, sampling__temperature=None)).sampling
    assert "top_k" not in sampling.request_fields()
    assert "temperature" not in sampling.request_fields()
    assert sampling.request_fields()["top_p"] == 0.9
    assert "seed" not in sampling.request_fields()


@pytest.mark.parametrize("key", ["sampling__tempurature", "runner__concurency", "dataset__pth", "surprise"])
def test_unknown_keys_are_named(key):
    with pytest.raises(ConfigError, match="Unknown config key"):
        job_spec(make_cfg(**{key: 1}))


@pytest.mark.parametrize("key", ["backend__api_key", "backend__token", "backend__headers__authorization", "password"])
def test_credential_keys_are_refused(key):
    with pytest.raises(ConfigError, match="SENTECH_API_KEY"):
        job_spec(make_cfg(**{key: "sk-123"}))


def test_api_key_env_is_not_a_credential():
    assert find_secret_keys({"backend": {"api_key_env": "X", "max_tokens": 3}}) == []


def test_config_id_is_stable_and_sensitive_to_sampling():
    a = config_id("remote", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a == config_id("remote", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a != config_id("remote", "m", Sampling(0.8, 0.9, 40, 0.0, 0.0, 16, 0))
    assert a != config_id("local", "m", Sampling(0.7, 0.9, 40, 0.0, 0.0, 16, 0))
    assert len(a) == 12


# ---- backend schemas (RemoteBackendConfig, LocalBackendConfig): one place for keys, types and defaults
def test_backend_settings_fill_the_schema_defaults():
    from sentech_eval.config import LocalBackendConfig, PriceConfig, RemoteBackendConfig, backend_settings

    remote = backend_settings({"kind": "remote", "model": "m", "price": {"input_per_mtok": 1}}, RemoteBackendConfig)
    assert remote == RemoteBackendConfig(model="m", price=PriceConfig(input_per_mtok=1))
    local = backend_settings(
        OmegaConf.create({"kind": "local", "model_path": "x.gguf", "n_ctx": 512}), LocalBackendConfig
    )
    assert (local.n_ctx, local.n_batch, local.workers, local.repack) == (512, LocalBackendConfig.n_batch, 1, "auto")


@pytest.mark.parametrize(
    "node, fragment",
    [
        (
            {"kind": "remote", "base_ur": "http://x/v1"},
            "Unknown config key 'backend.base_ur' for backend=remote; the nearest valid key is 'backend.base_url'.",
        ),
        ({"kind": "remote", "timeout_s": "abc"}, "Config key 'backend.timeout_s' must be a number, got 'abc'."),
        ({"kind": "remote", "stream": "maybe"}, "Config key 'backend.stream' must be true or false, got 'maybe'."),
        ({"kind": "local", "n_ctx": "big"}, "Config key 'backend.n_ctx' must be an integer, got 'big'."),
        ({"kind": "local", "n_threads": "x"}, "Config key 'backend.n_threads' must be an integer or null, got 'x'."),
        ({"kind": "local", "api_kye": "x"}, "Unknown config key 'backend.api_kye' for backend=local"),
        ({"kind": "local", "api_key": "x"}, "Config key 'backend.api_key' looks like a credential"),  # secrets first
    ],
)
def test_backend_settings_refuse_with_one_sentence(node, fragment):
    from sentech_eval.config import BACKEND_SCHEMAS, backend_settings

    with pytest.raises(ConfigError) as err:
        backend_settings(node, BACKEND_SCHEMAS[node["kind"]][0])
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "price, fragment",
    [
        (
            {"input_per_mtk": 1},
            "Unknown config key 'backend.price.input_per_mtk'; the nearest valid key is 'backend.price.input_per_mtok'.",
        ),
        (
            {"zzz": 1},
            "Unknown config key 'backend.price.zzz'; known keys are: input_per_mtok, output_per_mtok, per_hour.",
        ),
    ],
)
def test_an_unknown_price_key_is_named_with_the_nearest_one(price, fragment):
    with pytest.raises(ConfigError) as err:
        job_spec(make_cfg(backend__price=price))
    assert str(err.value) == fragment


@pytest.mark.parametrize("form", ["typed", "added"])
def test_price_is_a_field_of_every_backend_schema(form):
    """``backend.price.input_per_mtok=0.15`` works as written; the old ``+backend.price={…}`` still does."""
    from sentech_eval.config import compose_config

    for backend in ("remote", "local"):
        if form == "typed":
            overrides = [f"backend={backend}", "backend.price.input_per_mtok=0.15", "backend.price.per_hour=2"]
        else:
            overrides = [f"backend={backend}", "+backend.price={input_per_mtok: 0.15, per_hour: 2}"]
        spec = job_spec(compose_config(overrides))
        assert (spec.price.input_per_mtok, spec.price.output_per_mtok, spec.price.per_hour) == (0.15, 0.0, 2.0)
    assert job_spec(compose_config(["backend=remote"])).price is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("backend.price.input_per_mtok=-1", "backend.price.input_per_mtok=-1 must be 0 or more (USD)."),
        ("backend.price.per_hour=abc", "Config key 'backend.price.per_hour' must be a number or null, got 'abc'."),
    ],
)
def test_a_bad_price_is_one_sentence(override, fragment):
    from sentech_eval.config import compose_config

    with pytest.raises(ConfigError) as err:
        job_spec(compose_config([override]))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_cost_ceiling_without_a_price_says_how_to_set_one():
    with pytest.raises(ConfigError, match=r"backend.price.input_per_mtok=0.15 backend.price.output_per_mtok=0.6"):
        job_spec(make_cfg(runner__max_cost_usd=1.0))


@pytest.mark.parametrize("group", ["backend", "runner", "dataset", "sampling"])
def test_shipped_yamls_extend_their_schema_and_repeat_no_default(group):
    """conf/<group>/*.yaml set only what differs from their schema: a default lives in config.py alone."""
    import dataclasses

    from sentech_eval.config import BACKEND_SCHEMAS, SCHEMAS, compose_config, group_choices
    from sentech_eval.paths import conf_dir

    schemas = (
        {name: schema for schema, name in BACKEND_SCHEMAS.values()}
        if group == "backend"
        else {SCHEMAS[group][1]: SCHEMAS[group][0]}
    )
    for name in group_choices(group):
        raw = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
        base = [str(entry) for entry in raw.defaults if str(entry) in schemas]
        assert base and list(raw.defaults)[-1] == "_self_", f"{group}/{name}.yaml: defaults: [base_…, _self_]"
        schema = schemas[base[0]]
        defaults = {f.name: f.default for f in dataclasses.fields(schema)}
        values = OmegaConf.to_container(raw, resolve=False)
        repeated = [k for k, v in values.items() if k != "defaults" and k in defaults and defaults[k] == v]
        assert not repeated, f"conf/{group}/{name}.yaml repeats the schema's default of {repeated}"
        composed = compose_config([f"{group}={name}"])[group]
        assert OmegaConf.get_type(composed) is schema


def test_the_race_sweep_file_extends_the_race_schema_and_docs_give_its_defaults():
    """conf/sweep/race_temperature.yaml extends base_race and sets only the score; docs/sweeps.md states RaceConfig's defaults."""
    import dataclasses

    import yaml

    from sentech_eval.config import RaceConfig, compose_config
    from sentech_eval.paths import REPO_ROOT, conf_dir

    raw = OmegaConf.load(conf_dir() / "sweep" / "race_temperature.yaml")
    assert {"/race": "base_race"} in OmegaConf.to_container(raw.defaults)
    defaults = {f.name: f.default for f in dataclasses.fields(RaceConfig)}
    repeated = [k for k, v in raw.race.items() if defaults.get(k) == v]
    assert not repeated, f"conf/sweep/race_temperature.yaml repeats RaceConfig's default of {repeated}"
    assert OmegaConf.get_type(compose_config(["+sweep=race_temperature"]).race) is RaceConfig
    table = _table_defaults((REPO_ROOT / "docs" / "sweeps.md").read_text(encoding="utf-8"))
    checked = 0
    for keys, cell in table.items():
        names = [k.strip().strip("`").removeprefix("race.") for k in keys.split("/")]
        values = [v.strip().strip("`") for v in cell.split("/")] if len(names) > 1 else [cell]
        for name, value in zip(names, values):
            if keys.startswith("race.") and name in defaults and name != "score":
                assert yaml.safe_load(value) == defaults[name], f"docs/sweeps.md: race.{name}"
                checked += 1
    assert checked == 5


def _table_defaults(text: str) -> dict[str, str]:
    """``| `key` | default | meaning |`` rows of a markdown table: key -> default cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def test_docs_give_the_schema_defaults():
    """docs/local.md's table and docs/reference.md's backend rows state the schemas' defaults (no drift)."""
    import dataclasses

    import yaml

    from sentech_eval.config import LocalBackendConfig, RemoteBackendConfig
    from sentech_eval.paths import REPO_ROOT

    local_doc = _table_defaults((REPO_ROOT / "docs" / "local.md").read_text(encoding="utf-8"))
    checked = 0
    for field in dataclasses.fields(LocalBackendConfig):
        if field.name in local_doc and field.name != "model_path":
            assert yaml.safe_load(local_doc[field.name]) == field.default, f"docs/local.md: {field.name}"
            checked += 1
    assert checked >= 8
    readme = _table_defaults((REPO_ROOT / "docs" / "reference.md").read_text(encoding="utf-8"))
    remote = {f.name: f.default for f in dataclasses.fields(RemoteBackendConfig)}
    checked = 0
    for keys, cell in readme.items():
        names = [k.strip().strip("`").removeprefix("backend.") for k in keys.split("/")]
        values = [v.strip().strip("`") for v in cell.split("/")] if len(names) > 1 else [cell]
        for name, value in zip(names, values):
            if name in remote and name != "kind":
                assert yaml.safe_load(value) == remote[name], f"docs/reference.md config table: backend.{name}"
                checked += 1
    assert checked >= 6


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["sampling.seed=9223372036854775807", "runner.repeats=2"], "sampling.seed at most 9223372036854775806"),
        (["sampling.seed=18446744073709551615"], "beyond what the results' seed column stores"),
        (["sampling.seed=9223372036854775800", "runner.repeats=9"], "gives seeds up to 9223372036854775808"),
    ],
)
def test_a_seed_the_results_cannot_store_is_refused_before_anything_is_sent(
    tmp_path, capsys, monkeypatch, overrides, fragment
):
    """The seed column is int64: repeat r sends seed + r; a value past it would be sent, paid for, then lost."""
    from sentech_eval.cli import main

    monkeypatch.setenv("SENTECH_API_KEY", "sk-" + "x1y2" * 8)
    try:
        code = main(
            ["run", "backend=remote", "backend.base_url=http://127.0.0.1:9/v1", "backend.send_seed=true"]
            + ["runner.max_retries=0", "runner.progress=false", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
        )
    except SystemExit as exc:  # (the Hydra task exits with its code)
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, err
    assert fragment in err and "results.parquet" not in err
    assert not (tmp_path / "run" / "results.parquet").exists()


def test_the_largest_storable_seed_passes_the_check():
    from sentech_eval.config import INT64_MAX, RunnerConfig, check_column_limits
    from sentech_eval.types import Sampling

    check_column_limits(Sampling(seed=INT64_MAX - 1), RunnerConfig(repeats=2))


def test_the_spec_of_a_composed_config_keeps_the_column_mapping_and_the_scorers():
    from sentech_eval.config import compose_config

    spec = job_spec(
        compose_config(["dataset.columns.id=qid", "dataset.columns.prompt=question", "scorers=[contains,token_f1]"])
    )
    assert spec.dataset.columns == {"id": "qid", "prompt": "question"}
    assert [s.name for s in spec.scorers] == ["contains", "token_f1"]  # token_f1 is no credential
    assert spec.scorers[0].options["_target_"].endswith(".Contains")
    saved_columns = spec.saved_config["dataset"]["columns"]
    assert {k: v for k, v in saved_columns.items() if v} == {"id": "qid", "prompt": "question"}
    assert "hydra" not in spec.saved_config


def test_the_race_sweep_file_gives_a_race_spec():
    from sentech_eval.config import RaceSettings, compose_config

    spec = job_spec(compose_config(["+sweep=race_temperature", "race.keep=2"]))
    assert spec.race.score_column == "score_contains" and spec.race.settings == RaceSettings(keep=2)
    with pytest.raises(ConfigError, match=r"race.growth=1(\.0)? must be greater than 1"):
        job_spec(compose_config(["+sweep=race_temperature", "race.growth=1"]))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("scorers.mine._target_=pkg.f", "write +scorers.mine._target_=pkg.f"),
        ("sweep=race_temperature", "write +sweep=race_temperature"),
        ("runner.foo=1", "Unknown config key 'runner.foo'; known keys are: arrival"),
    ],
)
def test_a_key_that_needs_a_plus_says_so(override, fragment):
    """Where a key or group needs ``+`` to be added, the sentence gives the override to type; a schema's
    section (runner) takes no new keys, so no + is suggested there."""
    from sentech_eval.config import compose_config

    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert fragment in str(err.value) and "\n" not in str(err.value)
    if override.startswith("runner"):
        assert "+" not in str(err.value)
