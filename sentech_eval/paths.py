"""Where things live on disk: the source checkout, its ``conf/``, and the models directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
MODELS_DIR_ENV = "SENTECH_MODELS_DIR"


def default_models_dir() -> Path:
    """``$SENTECH_MODELS_DIR`` if set, else ``<repo root>/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "models"
