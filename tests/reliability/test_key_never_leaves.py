"""The key never leaves the process: `grep -r KEY` over the run dir, the console output and ~/.cache finds nothing.

For every override shape that tries to carry a key (by name, by shape, by value, URL-encoded,
base64, in a dict, where a variable name goes), `sentech-eval run` refuses it before Hydra writes
anything; and a full run whose server quotes the key back in every way stores none of it.
``HOME`` points into the test's tmp dir, so ``~/.cache`` is exactly what these runs wrote.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hostile_server import hostile_server
from reliability_support import assert_one_sentence, call_cli, files_holding, new_key, remote_run_args, run_cli

from sentech_eval.server.testing import running_server

SHAPES = [
    "+backend.headers={{Authorization:'Bearer {key}'}}",
    "+backend.key={key}",
    "backend.api_key={key}",
    "++backend.headers.X-Api-Key={key}",
    "+backend.extra={{token: {key}}}",
    "+backend.note={key}",
    "backend.api_key_env={key}",
    "backend.base_url=https://api.example.com/v1?api%5Fkey={key}",
    "backend.base_url=https://api.example.com/v1%3Fapi_key%3D{key}",
    "backend.base_url=https://api.example.com/v1?access_token={key}",
    "backend.base_url=https://user:{key}@api.example.com/v1",
    "+backend.auth=Basic {basic}",
    "+backend.note={b64}",
    "+backend.note={quoted}",
    "hydra.job.env_set.SENTECH_API_KEY={key}",
    "hydra.run.dir={tmp}/{key}",
]


def _grep(key: str, *paths: Path) -> str:
    """The files holding the key, one a line (Parquet files decoded too, metadata included)."""
    found = "".join(f"{path}\n" for path in files_holding(key, *paths))
    for root in paths:  # Parquet pages are compressed: read them too, metadata included
        for path in root.rglob("*.parquet") if root.exists() else ():
            table = pq.read_table(path)
            if key in table.to_pandas().astype(str).to_string() or key in str(table.schema.metadata):
                found += f"{path}\n"
    return found


@pytest.mark.parametrize("shape", SHAPES)
def test_an_override_shape_carrying_the_key_leaves_no_trace(tmp_path, shape, monkeypatch):
    """In-process (the refusal happens before Hydra starts); the key is also the configured variable's value."""
    key = new_key()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    arg = shape.format(
        key=key,
        tmp=tmp_path,
        basic=base64.b64encode(f"user:{key}".encode()).decode(),
        b64=base64.b64encode(key.encode()).decode(),
        quoted=quote(quote(key, safe=""), safe=""),
    )
    result = call_cli("run", "backend=remote", arg, f"hydra.run.dir={run_dir}", key=key)
    assert_one_sentence(result, "Refusing", "SENTECH_API_KEY")
    assert not run_dir.exists(), "Hydra created the run dir before the refusal"
    assert key not in result.stdout + result.stderr
    assert _grep(key, tmp_path, home / ".cache") == ""


# Interpolations that would resolve to the key: refused before Hydra writes anything (run dir, .hydra/,
# job_status.json), naming the override. ALIAS_KEY holds a copy of the key under a name that is no credential's.
INTERPOLATIONS = [
    ("backend.model=${{oc.env:SENTECH_API_KEY}}", "'backend.model=…'"),
    ("dataset.name=${{oc.env:SENTECH_API_KEY}}", "'dataset.name=…'"),
    ("experiment=x-${{oc.env:SENTECH_API_KEY,none}}", "'experiment=…'"),
    ("hydra.run.dir={tmp}/run/${{oc.env:SENTECH_API_KEY}}", "'hydra.run.dir=…'"),
    ("+backend.note=${{oc.env: 'SENTECH_API_KEY'}}", "'backend.note=…'"),
    ("backend.model=${{oc.env:${{oc.env:WHICH}}}}", "'backend.model=…'"),
    ("backend.model=${{env:MY_KEY_ENV}}", "MY_KEY_ENV"),  # the variable backend.api_key_env names
    ("backend.model=${{oc.env:ALIAS_KEY}}", "'backend.model=…'"),  # found by its resolved value
    ("backend.model=m-${{oc.decode:'${{oc.env:ALIAS_KEY}}'}}", "'backend.model=…'"),
    ("dataset.path={tmp}/${{oc.env:ALIAS_KEY}}.parquet", "'dataset.path=…'"),  # -> dataset.name -> experiment dir
    ("hydra.run.dir={tmp}/run/${{oc.env:ALIAS_KEY}}", "'hydra.run.dir=…'"),
    ("backend.model=a,${{oc.env:ALIAS_KEY}}", "'backend.model=…'"),  # one value of a sweep
]


@pytest.mark.parametrize("shape, named", INTERPOLATIONS)
def test_an_interpolation_that_would_resolve_to_the_key_is_refused_before_anything_is_written(
    tmp_path, shape, named, monkeypatch
):
    key = new_key()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MY_KEY_ENV", key)
    monkeypatch.setenv("ALIAS_KEY", key)
    monkeypatch.setenv("WHICH", "SENTECH_API_KEY")
    monkeypatch.chdir(tmp_path)
    arg = shape.format(tmp=tmp_path)
    argv = ["run", "backend=remote", arg]
    if "MY_KEY_ENV" in shape:
        argv.append("backend.api_key_env=MY_KEY_ENV")
    if "hydra.run.dir" not in shape:
        argv.append(f"hydra.run.dir={tmp_path / 'run'}")
    if "," in shape and "oc.env:" in shape.split(",")[1]:
        argv.insert(1, "-m")
    result = call_cli(*argv, key=key)
    assert_one_sentence(result, "Refusing", named)
    assert not (tmp_path / "run").exists() and not (tmp_path / "results").exists(), "Hydra wrote before the refusal"
    assert key not in result.stdout + result.stderr
    assert _grep(key, tmp_path) == ""


@pytest.mark.parametrize("arg", ["backend.model=${oc.env:HOME}", "experiment=e-${oc.env:USER,me}"])
def test_an_interpolation_of_another_variable_still_runs(tmp_path, arg, capsys, monkeypatch):
    """Only the key's variables are refused: the check does not stop ordinary interpolations."""
    from sentech_eval.config import check_resolved_overrides

    monkeypatch.setenv("SENTECH_API_KEY", new_key())
    check_resolved_overrides(["backend=remote", arg], [new_key()])  # no ConfigError


@pytest.mark.parametrize(
    "arg", ["experiment=../../x", "experiment=a/b", "dataset.name=../up", "experiment=..", "experiment=${oc.env:HOME}"]
)
def test_a_name_that_becomes_a_directory_cannot_leave_the_results_dir(tmp_path, arg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = call_cli("run", "backend=remote", arg)
    assert_one_sentence(result, "becomes a directory name under results/")
    assert list(tmp_path.iterdir()) == [], "something was written"


def test_a_run_whose_server_quotes_the_key_back_stores_none_of_it(tmp_path):
    key = new_key()
    home = tmp_path / "home"
    home.mkdir()
    modes = [
        "ok",
        "key_cut",
        "key_prefix",
        "key_suffix",
        "key_in_output",
        "key_in_finish_reason",
        "key_in_html",
        "key_in_location",
        "key_in_model",
        "key_escaped_in_model",
        "key_escaped_in_output",
        "key_escaped_in_error",
        "key_percent_in_location",
    ]
    data = tmp_path / "modes.parquet"
    pd.DataFrame({"id": modes, "prompt": [f"mode:{m}" for m in modes]}).to_parquet(data)
    with hostile_server() as (url, _state):
        hostile = run_cli(
            *remote_run_args(
                url, tmp_path / "hostile", f"dataset.path={data}", "runner.progress=true", "runner.max_retries=1"
            ),
            key=key,
            env={"HOME": str(home)},
        )
    with running_server(engine="echo", api_key=key, seed=3, error_rate=0.3, error_status=503) as url:
        streamed = run_cli(
            *remote_run_args(
                url,
                tmp_path / "streamed",
                "dataset.limit=30",
                "backend.stream=true",
                "runner.progress=true",
                "runner.max_retries=0",
            ),
            key=key,
            env={"HOME": str(home)},
        )
    for result in (hostile, streamed):
        assert result.returncode == 0, result.stderr
        assert key not in result.stdout + result.stderr
        for piece in (key[i : i + 12] for i in range(len(key) - 11)):
            assert piece not in result.stdout + result.stderr
    assert _grep(key, tmp_path / "hostile", tmp_path / "streamed", home / ".cache") == ""
    for piece in {key[: len(key) // 2], key[-(len(key) // 2) :]}:  # a long part of the key is found nowhere either
        assert _grep(piece, tmp_path / "hostile", tmp_path / "streamed", home / ".cache") == ""
