"""Where a result came from: the source commit and the versions of the packages that shape the numbers."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

from sentech_eval.paths import REPO_ROOT


def git_commit() -> str | None:
    """The repo's current commit, if this is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    out = {"python": sys.version.split()[0]}
    for name in ("sentech-eval", "pyarrow", "pandas", "aiohttp", "hydra-core", "llama-cpp-python"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
