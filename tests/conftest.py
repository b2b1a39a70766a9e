"""Shared fixtures (a real echo server on a loopback port; CLI helpers live in cli_helpers.py), and the
markers every test gets from what it starts (see tests/marking.py and docs/development.md):

- ``e2e``: starts a process (the CLI through ``run_cli``, a server in a process of its own, pip …);
- ``local_model``: loads llama.cpp on the embedded GGUF, in this process or in a server;
- ``slow``: starts a server on a loopback port, or is marked slow by hand (a long property test).

``make check`` runs ``-m "not e2e and not local_model and not slow"``; ``make test`` runs everything.
What a test's code shows is one source; what it did is the other: an audit hook sees every process a
test starts, and the tests that started one are remembered in pytest's cache (``.pytest_cache``) and
marked ``e2e`` from the next run on. A test that started a process while not marked ``e2e`` is named
at the end of the run, so the classification never drifts silently.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import TEST_KEY
from marking import LLAMA, PROCESS, SERVER, facts_of

MARKER_OF_FACT = {PROCESS: "e2e", LLAMA: "local_model", SERVER: "slow"}
# programs the code under test runs for a moment (provenance asks git for the commit): not a test's process
QUICK_PROGRAMS = {"git"}
STARTED_A_PROCESS = "sentech_eval/started_a_process"  # pytest cache key: node ids of tests that did
_current: dict[str, Any] = {}  # the test running now (nodeid, whether it is marked e2e)
_ran: set[str] = set()  # node ids of the tests run in this session
_started: dict[str, str] = {}  # nodeid -> the first process it started
_unmarked: dict[str, str] = {}  # the same, for the tests that were not marked e2e


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
    """Mark each test by what its code starts (a process, llama.cpp, a server) and by whether it
    started a process when it last ran."""
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    started_before = set(cache.get(STARTED_A_PROCESS, [])) if cache is not None else set()
    for item in items:
        markers = {MARKER_OF_FACT[fact] for fact in facts_of(_functions_of(item))}
        if item.nodeid in started_before:
            markers.add("e2e")
        for marker in sorted(markers):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note a process started by the running test (an audit hook: it sees every way a process starts)."""
    nodeid = _current.get("nodeid")
    if nodeid is None or nodeid in _started or event not in ("subprocess.Popen", "os.fork", "os.posix_spawn"):
        return
    what = args[0] if event != "os.fork" and args else event
    if os.path.basename(str(what)) in QUICK_PROGRAMS:
        return
    _started[nodeid] = f"{event}: {what!s:.120}"


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current.update(nodeid=item.nodeid, e2e=item.get_closest_marker("e2e") is not None)
    _ran.add(item.nodeid)
    try:
        return (yield)
    finally:
        if item.nodeid in _started and not _current["e2e"]:
            _unmarked[item.nodeid] = _started[item.nodeid]
        _current.clear()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remember which tests started a process (those that ran now replace what was remembered of them)."""
    cache = getattr(session.config, "cache", None)
    if cache is None or not _ran:
        return
    remembered = set(cache.get(STARTED_A_PROCESS, [])) - _ran
    cache.set(STARTED_A_PROCESS, sorted(remembered | set(_started)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _unmarked:
        return
    terminalreporter.section("tests that started a process without the e2e marker")
    terminalreporter.write_line(
        "marked e2e from the next run on (remembered in .pytest_cache); tests/marking.py can learn the "
        "starter they use:"
    )
    for nodeid, what in sorted(_unmarked.items()):
        terminalreporter.write_line(f"  {nodeid}  ({what})")
