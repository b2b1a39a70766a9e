"""Shared fixtures: a real echo server on a loopback port (helpers live in cli_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_helpers import TEST_KEY


@pytest.fixture(scope="session")
def echo_server() -> Iterator[str]:
    """A real `sentech-eval serve --engine echo` on a free loopback port; yields the base URL (key TEST_KEY)."""
    from sentech_eval.server.testing import running_server

    with running_server(engine="echo", api_key=TEST_KEY) as base_url:
        yield base_url
