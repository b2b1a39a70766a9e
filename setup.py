"""Packaging beyond what pyproject.toml can say: conf/ and datasets/ ship inside the package.

The repository keeps ``conf/`` and ``datasets/`` at its root (the layout the README shows, the
source of truth); the wheel installs them as the data packages ``sentech_eval.conf`` and
``sentech_eval.datasets_shipped`` (a package-dir mapping), which ``sentech_eval.paths`` finds and
Hydra reads through ``pkg://sentech_eval.conf``. Every other setting is in pyproject.toml.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = {"sentech_eval.conf": "conf", "sentech_eval.datasets_shipped": "datasets"}

setup(
    packages=find_packages(include=["sentech_eval", "sentech_eval.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "sentech_eval.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"],
        "sentech_eval.datasets_shipped": ["*.parquet", "README.md"],
    },
)
