"""The ``sentech-eval`` command: a thin dispatcher to one module per subcommand.

Each subcommand is ``module:function`` taking ``argv`` (the arguments after the subcommand)
and returning an exit code. Modules are imported lazily so ``--help`` stays fast. User errors
(``SentechEvalError``) are printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

from sentech_eval.errors import SentechEvalError
from sentech_eval.escaping import terminal_lines

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "sentech_eval.commands.run:main",
        "evaluate a dataset (Hydra app: overrides, -m sweeps, --cfg job, --help)",
    ),
    "serve": ("sentech_eval.commands.serve:main", "run the Sentech-compatible server (echo or llama engine)"),
    "score": ("sentech_eval.commands.score:main", "add or replace score columns in existing results, no requests"),
    "report": ("sentech_eval.commands.report:main", "summary.parquet, report.html and a markdown summary of results"),
    "compare": ("sentech_eval.commands.compare:main", "paired comparison of two runs (e.g. remote vs local)"),
    "check": ("sentech_eval.commands.check:main", "CI regression gate: exit 1 when a threshold regresses"),
    "cache": (
        "sentech_eval.commands.cache:main",
        "response cache: stats, clear [--model M] [--older-than 30d], explain RUN_DIR PROMPT_ID",
    ),
    "combine": (
        "sentech_eval.commands.combine:main",
        "combine a sweep's job results into one table (after a kill, or again)",
    ),
    "view": (
        "sentech_eval.commands.view:main",
        "browse every run, row and sweep in a local web app: runs, rows, sweeps, compare, history",
    ),
    "export": (
        "sentech_eval.commands.export:main",
        "export runs and sweeps to MLflow or Weights & Biases (replayed from the Parquet, idempotent)",
    ),
    "fetch-model": ("sentech_eval.commands.fetch_model:main", "put the embedded default GGUF model in place"),
}


def usage() -> str:
    """The top-level help text listing every subcommand."""
    lines = [
        "usage: sentech-eval <command> [args...]",
        "",
        "Batch evaluation and benchmarking of chat-completion models.",
        "",
        "commands:",
    ]
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<12} {help_text}")
    lines += ["", "Run `sentech-eval <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (what ``console_main`` and tests call)."""
    try:
        code = dispatch(argv)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is not an error
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point stdout at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command cut off by `| head`
    return code


def console_main() -> None:
    """Entry point of the ``sentech-eval`` console script: run the command, then leave at once."""
    exit_without_teardown(main())


def exit_without_teardown(code: int) -> None:
    """Exit with ``code`` after the work is saved, skipping the interpreter's teardown.

    Tearing down pandas, pyarrow, numpy and Hydra's modules is a large share of a short command
    (benchmarks/README.md, "Start-up"). Everything a normal exit does that matters still happens: the
    ``atexit`` functions run (logging's shutdown flushes and closes Hydra's log files;
    ``weakref.finalize`` removes temporary directories), then the output streams are flushed, so
    what an exit function prints is kept too. If a non-daemon thread is still working, Python's own
    exit waits for it as usual.
    """
    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if alive:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def dispatch(argv: list[str] | None = None) -> int:
    """Run the subcommand named in ``argv``; user errors become one line on stderr and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"sentech-eval: unknown command {command!r}; run `sentech-eval --help` for the list.", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[command][0].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        code = func(rest, prog=f"sentech-eval {command}")
    except SentechEvalError as exc:
        print(f"sentech-eval {command}: error: {terminal_lines(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sentech-eval {command}: interrupted.", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    console_main()
