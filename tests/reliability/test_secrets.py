"""Secrets: the key comes from the environment only and appears nowhere a run writes or prints.

A run with a distinctive random key (some requests failing, progress bar on) is grepped: the run
dir (results, parts, .hydra/, logs, job_status.json) and the captured stdout/stderr. Overrides
that try to carry a key are refused before Hydra saves them. TLS verification stays on.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from reliability_support import (
    app_in_thread,
    assert_one_sentence,
    call_cli,
    files_holding,
    new_key,
    remote_run_args,
    rows,
    run_cli,
)

from sentech_eval.engine.results import read_metadata
from sentech_eval.server.testing import make_config, running_server


def _files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.is_file()]


def _assert_key_nowhere(key: str, run_dir: Path, *texts: str) -> None:
    found = files_holding(key, run_dir)
    assert not found, f"key found in {found}"
    for path in _files(run_dir):  # Parquet pages may be compressed: decode them too
        if path.suffix == ".parquet":
            assert key not in pq.read_table(path).to_pandas().astype(str).to_string()
            assert key not in str(read_metadata(path))
    for text in texts:
        assert key not in text


def test_a_run_leaves_no_trace_of_the_key(tmp_path):
    key = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=key, seed=2, error_rate=0.3, error_status=503) as url:
        result = run_cli(
            *remote_run_args(
                url, run_dir, "dataset.limit=50", "runner.max_retries=0", "runner.progress=true", "runner.flush_rows=10"
            ),
            key=key,
        )
    assert result.returncode == 0, result.stderr
    df = rows(run_dir)
    assert len(df) == 50 and (df["status"] == "error").any() and (df["status"] == "ok").any()
    names = {p.name for p in _files(run_dir)}
    assert {"results.parquet", "config.yaml", "overrides.yaml", "hydra.yaml", "job_status.json"} <= names
    assert "req" in result.stderr  # the progress bar was drawn (and is checked too)
    _assert_key_nowhere(key, run_dir, result.stdout, result.stderr)
    meta = read_metadata(run_dir / "results.parquet")
    assert meta["config"]["backend"]["api_key_env"] == "SENTECH_API_KEY"


def test_a_rejected_key_is_not_repeated_in_the_error(tmp_path):
    wrong = new_key()
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=new_key()) as url:
        result = call_cli(*remote_run_args(url, run_dir), key=wrong)
    assert_one_sentence(result, "HTTP 401")
    _assert_key_nowhere(wrong, run_dir, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "override",
    [
        "backend.api_key={key}",
        "+backend.api_key={key}",
        "+backend.token={key}",
        "++backend.headers.Authorization=Bearer {key}",
        "backend.base_url=https://user:{key}@api.example.com/v1",
        "backend.base_url='https://api.example.com/v1?api_key={key}'",
        "backend.api_key_env={key}",
    ],
)
def test_an_override_carrying_a_key_is_refused_before_hydra_saves_it(tmp_path, override, monkeypatch):
    """In-process `sentech-eval run OVERRIDE` (the refusal happens before Hydra starts, so no process is needed)."""
    monkeypatch.chdir(tmp_path)
    key = new_key()
    run_dir = tmp_path / "run"
    result = call_cli("run", "backend=remote", override.format(key=key), f"hydra.run.dir={run_dir}")
    assert assert_one_sentence(result, "SENTECH_API_KEY", "environment variable")
    assert "Refusing the override" in result.stderr
    assert not run_dir.exists()  # refused before Hydra created the run dir and saved overrides.yaml
    assert key not in result.stdout + result.stderr


def _run_with_config_file(tmp_path: Path, yaml_with_key: str) -> tuple[str, subprocess.CompletedProcess, Path]:
    """`run` with a config file of the user's (extending the shipped config) that carries a fresh key
    where ``yaml_with_key`` says ``{key}``; returns (key, result, run dir)."""
    key = new_key()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "leaky.yaml").write_text("defaults:\n  - config\n  - _self_\n" + yaml_with_key.format(key=key))
    run_dir = tmp_path / "run"
    result = call_cli("run", "--config-dir", str(conf), "--config-name", "leaky", f"hydra.run.dir={run_dir}", key=None)
    assert key not in result.stderr + result.stdout
    return key, result, run_dir


def test_a_key_in_a_config_file_is_refused_and_not_kept_in_hydra_files(tmp_path):
    key, result, run_dir = _run_with_config_file(tmp_path, "backend:\n  api_key: {key}\n")
    assert_one_sentence(result, "backend.api_key", "looks like a credential", "SENTECH_API_KEY")
    # backend.api_key is no key of the backend's schema: the config does not even compose, so
    # Hydra saves nothing (a key-shaped value under a schema key composes and is scrubbed: below)
    assert not (run_dir / ".hydra" / "config.yaml").exists()
    _assert_key_nowhere(key, run_dir)


def test_a_key_shaped_value_in_a_config_file_is_refused_and_scrubbed_from_hydra_files(tmp_path):
    key, result, run_dir = _run_with_config_file(tmp_path, "experiment: {key}\n")
    assert_one_sentence(result, "experiment", "looks like a credential", "SENTECH_API_KEY")
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "[redacted]" in (run_dir / ".hydra" / "config.yaml").read_text()
    _assert_key_nowhere(key, run_dir)


# ---- TLS ------------------------------------------------------------------------------------------
@contextmanager
def _https_server(tmp_path: Path, key: str) -> Iterator[tuple[str, Path]]:
    """The real server app behind TLS with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, pkey = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(pkey),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, pkey)
    config = make_config("echo", api_key=key)
    with app_in_thread(lambda: config.build_app(config.build_engine()), ssl_context=context) as port:
        yield f"https://127.0.0.1:{port}/v1", cert


def test_tls_certificates_are_verified(tmp_path):
    key = new_key()
    with _https_server(tmp_path, key) as (url, cert):
        untrusted = run_cli(*remote_run_args(url, tmp_path / "untrusted", "dataset.limit=3"), key=key)
        # The standard way to trust a private CA works (verification on, with that CA).
        trusted = run_cli(
            *remote_run_args(url, tmp_path / "trusted", "dataset.limit=3"),
            key=key,
            env={"SSL_CERT_FILE": str(cert)},
        )
    assert untrusted.returncode == 1, untrusted.stderr  # every row failed: said, exit 1, rows kept
    assert "every request failed" in untrusted.stderr and "Traceback" not in untrusted.stderr
    df = rows(tmp_path / "untrusted")
    assert (df["status"] == "error").all() and (df["attempts"] == 1).all()
    assert df["error"].str.startswith("TLS certificate verification failed for https://127.0.0.1:").all()
    assert trusted.returncode == 0, trusted.stderr
    assert (rows(tmp_path / "trusted")["status"] == "ok").all()
