"""The viewer tests share one results tree made by real runs (view_support.build_tree)."""

from __future__ import annotations

import pytest
from view_support import build_tree


@pytest.fixture(scope="session")
def results_tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("view-tree"))
