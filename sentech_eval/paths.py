"""Where sentech-eval finds its files: configs, shipped datasets, models. Imports nothing of ours.

- configs   ``conf/`` at the repository root is the source of truth; the wheel ships it as the
            package ``sentech_eval.conf`` (a setuptools package-dir mapping), so an installed
            tool finds it through Hydra's ``pkg://sentech_eval.conf``. Users add config dirs of
            their own with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.
- datasets  ``datasets/`` at the repository root, shipped as ``sentech_eval.datasets_shipped``.
- models    a user cache dir, ``$SENTECH_MODELS_DIR`` or ``$XDG_CACHE_HOME/sentech-eval/models``
            (``~/.cache/sentech-eval/models``): never the source tree or site-packages.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The source checkout this package was imported from (meaningless for an installed wheel).
REPO_ROOT = PACKAGE_DIR.parent
CONF_PACKAGE = "sentech_eval.conf"
DATASETS_PACKAGE = "sentech_eval.datasets_shipped"
MODELS_DIR_ENV = "SENTECH_MODELS_DIR"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # put in place by `sentech-eval fetch-model`


def conf_dir() -> Path:
    """The directory holding ``config.yaml`` and the config groups (backend/, dataset/, …)."""
    installed = PACKAGE_DIR / "conf"  # a wheel; an editable install or a checkout uses the repo's
    return installed if (installed / "config.yaml").is_file() else REPO_ROOT / "conf"


def conf_search_path() -> str:
    """The primary config path for Hydra: ``pkg://sentech_eval.conf`` when importable, else a file path."""
    try:
        found = importlib.util.find_spec(CONF_PACKAGE) is not None
    except ModuleNotFoundError:
        found = False
    return f"pkg://{CONF_PACKAGE}" if found else str(REPO_ROOT / "conf")


def datasets_dir() -> Path:
    """The directory of the shipped datasets (capitals.parquet, arithmetic.parquet)."""
    installed = PACKAGE_DIR / "datasets_shipped"
    return installed if installed.is_dir() else REPO_ROOT / "datasets"


def default_models_dir() -> Path:
    """``$SENTECH_MODELS_DIR`` if set, else ``$XDG_CACHE_HOME/sentech-eval/models`` (``~/.cache/…``)."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "sentech-eval" / "models"


def embedded_model_path(models_dir: Path | None = None) -> Path:
    """Where the embedded default model is (or will be) in ``models_dir`` (default: ``default_models_dir()``)."""
    return Path(models_dir or default_models_dir()) / EMBEDDED_MODEL_FILE
