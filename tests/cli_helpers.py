"""Helpers shared by the tests: the real `sentech-eval` CLI, in a fresh process or in this one.

``run_cli`` starts a process, as a user runs the command: use it where the process itself is what is
tested (exit without teardown, signals, resource limits, a console script, a server that must not
share the test's GIL). ``call_cli`` runs the same ``sentech_eval.cli.main`` in this process with
stdout and stderr captured and returns the same ``CompletedProcess`` record, in a tenth of a second
instead of a second or two: use it for everything that checks an exit code, a message or the files a
run writes. Tests that start a process are marked ``e2e`` automatically (tests/conftest.py).
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from subprocess import CompletedProcess  # by name: call_cli starts no process (tests/marking.py reads the code)
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "test-key-7f3a9c"


def cli_env(key: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI run: the caller's without its SENTECH_API_KEY, unbuffered, with
    SENTECH_API_KEY set to ``key`` (unset when None), plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    full_env["PYTHONUNBUFFERED"] = "1"
    if key is not None:
        full_env["SENTECH_API_KEY"] = key
    full_env.update(env or {})
    return full_env


def cli_command(*args: str) -> list[str]:
    """`sentech-eval ARGS…` through the current interpreter."""
    return [sys.executable, "-m", "sentech_eval.cli", *args]


def run_cli(
    *args: str,
    key: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `sentech-eval ARGS…` as a user would (a fresh process), capturing stdout and stderr.

    The caller's SENTECH_API_KEY is not inherited: a test that needs a key passes ``key``.
    """
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, env=cli_env(key, env), timeout=timeout, cwd=cwd or REPO_ROOT
    )


def call_cli(
    *args: str, key: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> CompletedProcess[str]:
    """Run `sentech-eval ARGS…` in this process (``sentech_eval.cli.main``, the function the console
    script calls before it exits) and return what a process would have given: exit code, stdout, stderr.

    As in ``run_cli``, the caller's SENTECH_API_KEY is not inherited (``key`` sets it), ``env`` is added and
    the command runs in ``cwd`` (default: the test's working directory; run_cli's is the repository). What the
    call changes in the process is put back afterwards: the environment, ``sys.argv``, the working
    directory, the logging handlers Hydra installs, and the run-dir locks a process would release by
    exiting. The project's own ``atexit`` functions registered during the call run at its end, as the
    console script runs them when it exits. An exception the CLI does not handle is printed as the
    interpreter would (a traceback on stderr, exit 1), so ``"Traceback" not in result.stderr`` means
    the same in both helpers.
    """
    from sentech_eval import cli
    from sentech_eval.engine import rundir

    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    held_before = set(rundir._held)
    out, err = io.StringIO(), io.StringIO()
    call_env = cli_env(key, env)
    os.environ.clear()
    os.environ.update(call_env)
    at_exit = _OwnExitFunctions()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err), at_exit:
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                code = _exit_code(exc, err)
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                traceback.print_exc(file=err)
                code = 1
            at_exit.run()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for handler in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(handler)
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for path in set(rundir._held) - held_before:
            rundir.unlock_run_dir(path)
    return CompletedProcess(["sentech-eval", *args], code, out.getvalue(), err.getvalue())


class _OwnExitFunctions:
    """While active, the project's ``atexit`` functions (a sweep's fallback combine …) are kept here
    instead of in the interpreter's list; ``run`` calls them, last registered first, as the console
    script's exit does. Other libraries' exit functions are registered as usual."""

    OWN = ("sentech_eval", "hydra_plugins")

    def __init__(self) -> None:
        self.functions: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> _OwnExitFunctions:
        self._register, self._unregister = atexit.register, atexit.unregister
        atexit.register, atexit.unregister = self.register, self.unregister  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        atexit.register, atexit.unregister = self._register, self._unregister  # type: ignore[assignment]

    def register(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        if not str(getattr(func, "__module__", "")).startswith(self.OWN):
            return self._register(func, *args, **kwargs)
        self.functions.append((func, args, kwargs))
        return func

    def unregister(self, func: Callable[..., Any]) -> None:
        self.functions = [f for f in self.functions if f[0] != func]
        self._unregister(func)

    def run(self) -> None:
        while self.functions:
            func, args, kwargs = self.functions.pop()
            try:
                func(*args, **kwargs)
            except Exception:  # noqa: BLE001 - as the interpreter reports a failing exit function
                print("Exception ignored in atexit callback:", file=sys.stderr)
                traceback.print_exc()


def _exit_code(exc: SystemExit, err: io.StringIO) -> int:
    """The exit status of ``sys.exit(exc.code)``: None is 0, an int itself, anything else printed and 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=err)
    return 1


def processes_named(name: str) -> list[int]:
    """Pids of every process on the machine whose comm is ``name`` (to show that none outlived a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
