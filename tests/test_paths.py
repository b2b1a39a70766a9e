"""paths.py: where configs, shipped datasets and models are found."""

from __future__ import annotations

from pathlib import Path

from sentech_eval import paths


def test_models_default_to_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.MODELS_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert paths.default_models_dir() == Path("~/.cache/sentech-eval/models").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.default_models_dir() == tmp_path / "cache" / "sentech-eval" / "models"
    monkeypatch.setenv(paths.MODELS_DIR_ENV, str(tmp_path / "mine"))
    assert paths.default_models_dir() == tmp_path / "mine"
    assert paths.embedded_model_path() == tmp_path / "mine" / paths.EMBEDDED_MODEL_FILE


def test_serve_llama_looks_in_the_same_models_dir(monkeypatch, tmp_path):
    from sentech_eval.server.engines import LlamaEngine

    monkeypatch.setenv(paths.MODELS_DIR_ENV, str(tmp_path))
    assert LlamaEngine().model_path == tmp_path / paths.EMBEDDED_MODEL_FILE


def test_configs_and_datasets_are_found():
    assert (paths.conf_dir() / "config.yaml").is_file()
    assert {"local", "remote"} <= {p.stem for p in (paths.conf_dir() / "backend").glob("*.yaml")}
    assert (paths.datasets_dir() / "capitals.parquet").is_file()
    # In this checkout both are the repository's own directories, the source of truth.
    assert paths.conf_dir().resolve() == (paths.REPO_ROOT / "conf").resolve()
    assert paths.datasets_dir().resolve() == (paths.REPO_ROOT / "datasets").resolve()


def test_a_user_config_dir_adds_options_next_to_the_shipped_ones(tmp_path):
    from cli_helpers import call_cli

    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "mine.yaml").write_text(
        "kind: remote\nbase_url: http://127.0.0.1:9/v1\nmodel: mine\napi_key_env: MY_KEY\n"
    )
    for flags in (["--config-dir", str(tmp_path)], [f"hydra.searchpath=[file://{tmp_path}]"]):
        proc = call_cli("run", *flags, "backend=mine", "--cfg", "job", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "model: mine" in proc.stdout and "capitals.parquet" in proc.stdout  # shipped dataset still there


def test_an_unknown_choice_names_the_options_and_the_user_config_dir():
    from cli_helpers import call_cli

    proc = call_cli("run", "backend=nope")
    assert proc.returncode == 2
    assert "Unknown backend 'nope'; choose one of: llama31_8b, local, remote" in proc.stderr
    assert "--config-dir" in proc.stderr
