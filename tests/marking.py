"""What a test starts, read from its code: the facts behind the ``e2e``, ``local_model`` and ``slow`` markers.

``facts_of(functions)`` reads the code of a test function and of its fixtures (their names and
constants, nested functions and lambdas included) and follows every function and class of tests/
they name, so a helper such as ``run_cli`` counts wherever it is called from. A test

- starts a **process** when that code reaches ``subprocess``, ``os.fork``/``posix_spawn``,
  ``asyncio.create_subprocess_*``, ``multiprocessing``, a server started with ``subprocess=True``
  or ``workers=…``, or one of the project's own process starters (``listening_process`` …);
- loads **llama.cpp** when it reaches ``llama_cpp``, ``LocalBackend``, ``load_llama`` or the llama server
  engine, or runs the CLI (``run_cli``/``call_cli``) with ``backend=local`` or ``--engine llama``;
- starts a **server** when it reaches ``running_server``/``running_config``, ``app_in_thread`` or an
  aiohttp site of its own.

Nothing here keeps a list of tests: a new test is classified by what it calls. tests/conftest.py turns
the facts into markers, and a runtime check there reports a test that started a process without the
``e2e`` marker (so a starter this module does not know about is seen at once).
"""

from __future__ import annotations

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
LLAMA_NAMES = {"llama_cpp", "Llama", "LocalBackend", "load_llama", "LlamaEngine", "LocalWorker"}
# names whose use starts a server on a loopback port in this process
SERVER_NAMES = {"running_server", "running_config", "app_in_thread", "TCPSite", "start_site", "serve_forever"}
# calls that run the CLI; with these, a ``backend=local`` or ``--engine llama`` argument loads the model
CLI_NAMES = {"run_cli", "call_cli", "cli_command"}
# keyword arguments of ``running_server`` that put the server in a process of its own
SUBPROCESS_KEYWORDS = {"subprocess", "workers"}


def facts_of(functions: Iterable[Callable[..., Any]]) -> set[str]:
    """The facts (PROCESS, LLAMA, SERVER) of everything ``functions`` reach."""
    reader = _Reader()
    for function in functions:
        reader.visit(function)
    return reader.facts


class _Reader:
    def __init__(self) -> None:
        self.facts: set[str] = set()
        self.seen: set[int] = set()

    def visit(self, obj: Any) -> None:
        """Read a function (or every method of a class) defined in tests/, once."""
        obj = inspect.unwrap(obj) if callable(obj) else obj
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if id(obj) in self.seen or not _defined_in_tests(obj):
            return
        self.seen.add(id(obj))
        if isinstance(obj, type):
            for member in vars(obj).values():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    self.visit(member)
            return
        if isinstance(obj, types.FunctionType):
            self.read_code(obj.__code__, obj.__globals__)

    def read_code(self, code: types.CodeType, namespace: dict[str, Any]) -> None:
        names, strings, keywords = set(code.co_names), set(), set()
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.read_code(const, namespace)
            elif isinstance(const, str):
                strings.add(const)
            elif isinstance(const, tuple) and all(isinstance(c, str) for c in const):
                keywords.update(const)  # the keyword names of a call (and tuples of strings)
                strings.update(const)
        if names & PROCESS_NAMES:
            self.facts.add(PROCESS)
        if names & LLAMA_NAMES:
            self.facts.add(LLAMA)
        if names & SERVER_NAMES:
            self.facts.add(SERVER)
            if keywords & SUBPROCESS_KEYWORDS:
                self.facts.add(PROCESS)
        if names & CLI_NAMES and any(_loads_the_model(s) for s in strings):
            self.facts.add(LLAMA)
        for name in names:
            value = namespace.get(name, _imported_module(name))
            if isinstance(value, types.ModuleType):
                if value.__name__ in PROCESS_MODULES:
                    starters = PROCESS_MODULES[value.__name__]
                    if starters is None or names & starters:  # subprocess.CompletedProcess alone starts nothing
                        self.facts.add(PROCESS)
                elif value.__name__.split(".")[0] == "llama_cpp":
                    self.facts.add(LLAMA)
                elif _module_in_tests(value):  # a helper module of tests/: what the code takes from it
                    for attribute in names:
                        self.visit(getattr(value, attribute, None))
            elif value is not None:
                self.visit(value)


def _loads_the_model(argument: str) -> bool:
    """A CLI argument that loads the embedded model: ``backend=local`` (also in ``--judge backend=local``)
    or the llama engine of ``serve``."""
    return argument.lstrip("+").startswith("backend=local") or argument in ("llama", "--engine=llama")


def _imported_module(name: str) -> types.ModuleType | None:
    """The module a function imports by ``name`` inside its body (``import subprocess``, ``from cli_helpers
    import run_cli``), when it is one that matters here: a process starter or a helper module of tests/."""
    module = sys.modules.get(name)
    if module is None or not (name in PROCESS_MODULES or _module_in_tests(module)):
        return None
    return module


def _module_in_tests(module: types.ModuleType) -> bool:
    source = getattr(module, "__file__", None)
    return source is not None and Path(source).resolve().is_relative_to(TESTS_DIR)


def _defined_in_tests(obj: Any) -> bool:
    """Whether ``obj`` is a function or class whose source is under tests/ (conftest, helpers, test files)."""
    if not isinstance(obj, (types.FunctionType, type)):
        return False
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(TESTS_DIR)
