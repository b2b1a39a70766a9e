"""Fixture: a real echo server on a free loopback port."""

from __future__ import annotations

import pytest
from server_helpers import KEY

from sentech_eval.server.testing import running_server


@pytest.fixture(scope="module")
def server() -> str:
    """Base URL (…/v1) of an echo server accepting KEY, answering from the shipped datasets."""
    with running_server(engine="echo", api_key=KEY) as url:
        yield url
