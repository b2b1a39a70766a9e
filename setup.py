"""Packaging beyond what pyproject.toml can say: conf/ and datasets/ ship inside the package.

The repository keeps ``conf/`` and ``datasets/`` at its root (the layout the README shows, the
source of truth); the wheel installs them as the data packages ``sentech_eval.conf`` (each config
group a subpackage) and ``sentech_eval.datasets_shipped`` (a package-dir mapping), which
``sentech_eval.paths`` finds and Hydra reads through ``pkg://sentech_eval.conf``. Every other
setting is in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

HERE = Path(__file__).resolve().parent
DATA_PACKAGES = {"sentech_eval.conf": "conf", "sentech_eval.datasets_shipped": "datasets"}
for group in sorted(p for p in (HERE / "conf").rglob("*") if p.is_dir() and p.name != "__pycache__"):
    relative = group.relative_to(HERE / "conf")
    DATA_PACKAGES["sentech_eval.conf." + ".".join(relative.parts)] = f"conf/{relative.as_posix()}"

setup(
    # hydra_plugins is a namespace package (no __init__.py, shared with other plugins): find_packages skips it
    packages=(
        find_packages(include=["sentech_eval", "sentech_eval.*"])
        + find_namespace_packages(include=["hydra_plugins.*"])
        + list(DATA_PACKAGES)
    ),
    package_dir=DATA_PACKAGES,
    package_data={
        **{name: ["*.yaml"] for name in DATA_PACKAGES if name.startswith("sentech_eval.conf")},
        "sentech_eval.datasets_shipped": ["*.parquet", "*.LICENSE", "README.md"],
        "sentech_eval.view": ["static/*.css", "static/*.js"],  # the viewer's stylesheet and script
    },
)
