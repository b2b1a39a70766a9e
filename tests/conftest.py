"""Shared fixtures (a real echo server on a loopback port; CLI helpers live in cli_helpers.py), and the
markers every test gets from what it starts (see tests/marking.py and docs/development.md):

- ``e2e``: starts a process (the CLI through ``run_cli``, a server in a process of its own, pip …);
- ``local_model``: loads llama.cpp on the embedded GGUF, in this process or in a server;
- ``slow``: starts a server on a loopback port, or is marked slow by hand (a long property test).

``make check`` runs ``-m "not e2e and not local_model and not slow"``; ``make test`` runs everything.
A test that starts a process while not marked ``e2e`` (a starter tests/marking.py does not know) is
named at the end of the run, so the classification never drifts silently.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import TEST_KEY
from marking import LLAMA, PROCESS, SERVER, facts_of

MARKER_OF_FACT = {PROCESS: "e2e", LLAMA: "local_model", SERVER: "slow"}
# programs the code under test runs for a moment (provenance asks git for the commit): not a test's process
QUICK_PROGRAMS = {"git"}
_current: dict[str, Any] = {}  # the test running now (nodeid, whether it is marked e2e)
_unmarked_processes: dict[str, str] = {}  # nodeid -> what it started


@pytest.fixture(scope="session")
def echo_server() -> Iterator[str]:
    """A real `sentech-eval serve --engine echo` on a free loopback port; yields the base URL (key TEST_KEY)."""
    from sentech_eval.server.testing import running_server

    with running_server(engine="echo", api_key=TEST_KEY) as base_url:
        yield base_url


def _functions_of(item: pytest.Item) -> list[Any]:
    """The test function and every fixture function it uses (directly or through other fixtures)."""
    functions = [getattr(item, "obj", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for definition in info.name2fixturedefs.get(name, ()) if info is not None else ():
            functions.append(definition.func)
    return [f for f in functions if f is not None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what its code starts (a process, llama.cpp, a server)."""
    for item in items:
        for fact in sorted(facts_of(_functions_of(item))):
            marker = MARKER_OF_FACT[fact]
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note a process started by a test that is not marked e2e (an audit hook: it sees every way in)."""
    nodeid = _current.get("nodeid")
    if nodeid is None or _current.get("e2e") or event not in ("subprocess.Popen", "os.fork", "os.posix_spawn"):
        return
    if threading.current_thread() is not threading.main_thread() and event == "os.fork":
        return
    what = args[0] if event != "os.fork" and args else event
    if os.path.basename(str(what)) in QUICK_PROGRAMS:
        return
    _unmarked_processes.setdefault(nodeid, f"{event}: {what!s:.120}")


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current.update(nodeid=item.nodeid, e2e=item.get_closest_marker("e2e") is not None)
    try:
        return (yield)
    finally:
        _current.clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _unmarked_processes:
        return
    terminalreporter.section("tests that started a process without the e2e marker")
    terminalreporter.write_line(
        "tests/marking.py did not see these start a process; teach it the starter they use "
        "(make check is meant to start none):"
    )
    for nodeid, what in sorted(_unmarked_processes.items()):
        terminalreporter.write_line(f"  {nodeid}  ({what})")
