"""What a test starts, read from its code: the facts behind the ``e2e``, ``local_model`` and ``slow`` markers.

``facts_of(functions)`` reads the code of a test function and of its fixtures (their names and
constants, nested functions and lambdas included) and follows every function and class of tests/
they name, so a helper such as ``run_cli`` counts wherever it is called from. A test

- starts a **process** when that code reaches ``subprocess``, ``os.fork``/``posix_spawn``,
  ``asyncio.create_subprocess_*``, ``multiprocessing``, a server started with ``subprocess=True``
  or ``workers=…``, or one of the project's own process starters (``listening_process`` …);
- also starts a process when it builds the ``code_exec`` scorer (``build_scorer("code_exec")``,
  ``scorers=[code_exec]``): each answer runs in a sandbox;
- loads **llama.cpp** when it reaches ``llama_cpp``, ``LocalBackend``, ``load_llama`` or the llama server
  engine, or runs the CLI (``run_cli``/``call_cli``) with ``backend=local`` or ``--engine llama``;
- starts a **server** when it reaches ``running_server``/``running_config``, ``app_in_thread`` or an
  aiohttp site of its own.

Nothing here keeps a list of tests: a new test is classified by what it calls. tests/conftest.py turns
the facts into markers, and a runtime check there reports a test that started a process without the
``e2e`` marker (so a starter this module does not know about is seen at once).
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent

PROCESS, LLAMA, SERVER = "process", "llama", "server"

# modules whose use starts a process: module -> the attributes that do (None: any use does)
PROCESS_MODULES: dict[str, set[str] | None] = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "multiprocessing": None,
    "concurrent.futures.process": None,
}
# attribute or function names that start a process whatever they are reached through
PROCESS_NAMES = {
    "Popen",
    "fork",
    "forkpty",
    "posix_spawn",
    "posix_spawnp",
    "create_subprocess_exec",
    "create_subprocess_shell",
    "ProcessPoolExecutor",
    # the project's own starters (sentech_eval.server.testing, sentech_eval.sandbox)
    "listening_process",
    "serve_command",
    "Sandbox",
}
# names whose use loads llama.cpp (a model in this process, or the llama engine of a server)
LLAMA_NAMES = {"llama_cpp", "Llama", "LocalBackend", "load_llama", "LlamaEngine", "LocalWorker", "BatchEngine"}
# names whose use starts a server on a loopback port in this process
SERVER_NAMES = {"running_server", "running_config", "app_in_thread", "TCPSite", "start_site", "serve_forever"}
# calls that run the CLI; with these, a ``backend=local`` or ``--engine llama`` argument loads the model
CLI_NAMES = {"run_cli", "call_cli", "cli_command"}
# calls that build a scorer by name; the code_exec scorer runs each answer in a sandbox process
SCORER_BUILDERS = {"build_scorer", "build_scorers"}
# keyword arguments of ``running_server`` that put the server in a process of its own
SUBPROCESS_KEYWORDS = {"subprocess", "workers"}


def facts_of(functions: Iterable[Callable[..., Any]]) -> set[str]:
    """The facts (PROCESS, LLAMA, SERVER) of everything ``functions`` reach."""
    facts: set[str] = set()
    for function in functions:
        facts |= _facts(function, set())
    return facts


# id -> (the object, its facts): a helper or fixture is read once per session, however many tests use it
_known: dict[int, tuple[Any, frozenset[str]]] = {}


def _facts(obj: Any, reading: set[int]) -> frozenset[str]:
    """The facts of a function (or of every method of a class) defined in tests/, and of what it reaches.
    ``reading``: the objects being read further up (a cycle adds nothing)."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    key = id(obj)
    if key in _known:
        return _known[key][1]
    if key in reading or not _defined_in_tests(obj):
        return frozenset()
    reading.add(key)
    facts: set[str] = set()
    if isinstance(obj, type):
        for member in vars(obj).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                facts |= _facts(member, reading)
    else:
        facts |= _code_facts(obj.__code__, obj.__globals__, reading)
    reading.discard(key)
    _known[key] = (obj, frozenset(facts))
    return _known[key][1]


def _code_facts(code: types.CodeType, namespace: dict[str, Any], reading: set[int]) -> set[str]:
    facts: set[str] = set()
    names, strings, keywords = set(code.co_names), set(), set()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            facts |= _code_facts(const, namespace, reading)
        elif isinstance(const, str):
            strings.add(const)
        elif isinstance(const, tuple) and all(isinstance(c, str) for c in const):
            keywords.update(const)  # the keyword names of a call (and tuples of strings)
            strings.update(const)
    if names & PROCESS_NAMES:
        facts.add(PROCESS)
    if names & LLAMA_NAMES:
        facts.add(LLAMA)
    if names & SERVER_NAMES:
        facts.add(SERVER)
        if keywords & SUBPROCESS_KEYWORDS:
            facts.add(PROCESS)
    if names & CLI_NAMES and any(_loads_the_model(s) for s in strings):
        facts.add(LLAMA)
    if names & (CLI_NAMES | SCORER_BUILDERS) and any(_runs_programs(s) for s in strings):
        facts.add(PROCESS)
    for name in names:
        value = namespace[name] if name in namespace else _imported_module(name)
        if isinstance(value, types.ModuleType):
            if value.__name__ in PROCESS_MODULES:
                starters = PROCESS_MODULES[value.__name__]
                if starters is None or names & starters:  # subprocess.CompletedProcess alone starts nothing
                    facts.add(PROCESS)
            elif value.__name__.split(".")[0] == "llama_cpp":
                facts.add(LLAMA)
            elif _module_in_tests(value):  # a helper module of tests/: what the code takes from it
                for attribute in names:
                    facts |= _facts(getattr(value, attribute, None), reading)
        elif value is not None:
            facts |= _facts(value, reading)
    return facts


def _loads_the_model(argument: str) -> bool:
    """A CLI argument that loads the embedded model: ``backend=local`` (also in ``--judge backend=local``)
    or the llama engine of ``serve``."""
    return argument.lstrip("+").startswith("backend=local") or argument in ("llama", "--engine=llama")


def _runs_programs(argument: str) -> bool:
    """A scorer name or CLI argument that runs programs: the code_exec scorer (``scorers=[code_exec]``)."""
    return argument == "code_exec" or (argument.startswith("scorers=[") and "code_exec" in argument)


def _imported_module(name: str) -> types.ModuleType | None:
    """The module a function imports by ``name`` inside its body (``import subprocess``, ``from cli_helpers
    import run_cli``), when it is one that matters here: a process starter or a helper module of tests/."""
    module = sys.modules.get(name)
    if module is None or not (name in PROCESS_MODULES or _module_in_tests(module)):
        return None
    return module


def _module_in_tests(module: types.ModuleType) -> bool:
    return _in_tests(getattr(module, "__file__", None))


def _defined_in_tests(obj: Any) -> bool:
    """Whether ``obj`` is a function or class whose source is under tests/ (conftest, helpers, test files)."""
    if isinstance(obj, types.FunctionType):
        return _in_tests(obj.__code__.co_filename)
    if isinstance(obj, type):
        return _in_tests(getattr(sys.modules.get(obj.__module__), "__file__", None))
    return False


@functools.cache
def _in_tests(filename: str | None) -> bool:
    return filename is not None and Path(filename).resolve().is_relative_to(TESTS_DIR)
