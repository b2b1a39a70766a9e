"""sentech-eval: batch evaluation and benchmarking of chat-completion models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pandas import DataFrame

__version__ = "0.1.0"

__all__ = ["load_results", "__version__"]


def load_results(path: str | Path) -> DataFrame:
    """One pandas DataFrame from a results file, a run dir, a sweep dir or a directory of runs."""
    from sentech_eval.engine.results import load_results as _load

    return _load(path)
