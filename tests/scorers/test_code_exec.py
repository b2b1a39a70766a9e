"""The code_exec scorer: how the program is put together, the detail words, limits, refusal, overlap."""

from __future__ import annotations

import asyncio
import time

import pytest

from sentech_eval import sandbox
from sentech_eval.errors import ConfigError
from sentech_eval.scorers import build_scorer
from sentech_eval.scorers.code_exec import WORDS, assemble_program, extract_code

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap (bwrap) is not installed")

PROMPT = '''import math


def helper(x):
    return x * 2


def double_sqrt(n: int) -> float:
    """Twice the square root of n.
    >>> double_sqrt(4)
    4.0
    """
'''
TEST = """
def check(candidate):
    assert candidate(4) == 4.0
    assert candidate(9) == 6.0
"""
BODY = "    return helper(math.sqrt(n))\n"
FULL = "def double_sqrt(n):\n    return helper(math.sqrt(n))\n"


def row(output, prompt=PROMPT, test=TEST, entry_point="double_sqrt"):
    return {"output": output, "prompt": prompt, "reference": test, "entry_point": entry_point, "status": "ok"}


@pytest.fixture(scope="module")
def scorer():
    built = build_scorer("code_exec", {"cpu_s": 2, "wall_s": 6, "memory_mb": 256, "concurrency": 2})
    yield built
    asyncio.run(built.aclose())


def score(scorer, output, **kw):
    return scorer.score_sync(row(output, **kw))


# ---------------------------------------------------------------- the program
def test_first_fenced_block_else_the_whole_answer():
    assert extract_code("Here:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("Sure!\n```py\nx = 1\n") == "x = 1\n"  # cut off at max_tokens: runs to the end
    assert extract_code("  ```python\n  x = 1\n  ```") == "  x = 1\n"
    # code first, then a fence it never opened, then prose (the embedded model does this)
    assert extract_code("def f():\n    return 1\n```\n\nThis returns 1.") == "def f():\n    return 1\n"
    assert extract_code("Sure:\n```python\nx = 1\n") == "x = 1\n"  # an opening fence with a language: unclosed
    code_then_blocks = "x = 1\n```\n\n```python\nx = 1\n```\n\n### Example\n\n```python\nprint(x)\n"
    assert extract_code(code_then_blocks) == "x = 1\n"
    assert extract_code("Sure!\n```\nx = 1\n```\n") == "x = 1\n"  # a bare fence that opens a block: normal


def test_a_full_function_gets_the_prompts_imports_and_helpers_not_its_stub():
    program = assemble_program(f"```python\n{FULL}```", PROMPT, TEST, "double_sqrt")
    assert program.startswith("import math\n")
    assert "def helper(x)" in program
    assert '"""Twice the square root' not in program  # the prompt's own stub is left out
    assert program.count("def double_sqrt") == 1
    assert program.rstrip().endswith("check(double_sqrt)")


def test_a_body_continues_the_prompt():
    program = assemble_program(BODY, PROMPT, TEST, "double_sqrt")
    assert program.startswith(PROMPT + BODY)
    assert program.rstrip().endswith("check(double_sqrt)")


def test_without_entry_point_the_reference_is_a_test_script():
    program = assemble_program("x = 2", "", "assert x == 2", None)
    assert program == "x = 2\n\nassert x == 2\n"


def test_no_code_is_none():
    assert assemble_program("", PROMPT, TEST, "double_sqrt") is None
    assert assemble_program("```python\n\n```", PROMPT, TEST, "double_sqrt") is None


# ---------------------------------------------------------------- detail words
@needs_bwrap
@pytest.mark.parametrize(
    "output,word",
    [
        (f"```python\n{FULL}```", "passed"),
        (BODY, "passed"),
        ("    return n\n", "failed"),
        ("```python\ndef double_sqrt(n):\n    return n +\n```", "syntax"),
        ("", "no_code"),
        ("    while True:\n        pass\n", "timeout"),
        ("    x = bytearray(10**10)\n", "memory"),
        ("    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n", "killed"),
        ("    while True:\n        print('x' * 10000)\n", "killed"),
        ("    import os\n    os._exit(0)\n", "failed"),  # leaving early is not passing
        ("    import sys\n    sys.exit(0)\n", "failed"),
    ],
)
def test_detail_words(scorer, output, word):
    out = score(scorer, output)
    assert out["score_code_exec_detail"].split(":")[0].split("\n")[0] == word
    assert word in WORDS
    assert out["score_code_exec"] == (1.0 if word == "passed" else 0.0)
    assert out["score_code_exec_sandbox"].startswith("bwrap")
    if word != "no_code":
        assert out["score_code_exec_cpu_limit_s"] == 2.0
        assert out["score_code_exec_wall_s"] > 0


@needs_bwrap
def test_a_failure_shows_the_last_stderr_lines(scorer):
    out = score(scorer, "    return n\n")
    detail = out["score_code_exec_detail"]
    assert detail.startswith("failed: raised AssertionError")
    assert "AssertionError" in detail.splitlines()[-1]
    assert len(detail.splitlines()) <= 1 + 5


@needs_bwrap
def test_credentials_in_stderr_are_redacted(monkeypatch):
    key = "sk-live-" + "9f8e7d6c5b4a" * 3
    monkeypatch.setenv("SENTECH_API_KEY", key)
    built = build_scorer("code_exec", {"cpu_s": 2})
    out = built.score_sync(row(f"    raise ValueError('{key}')\n"))
    assert key not in out["score_code_exec_detail"] and "[redacted]" in out["score_code_exec_detail"]


@needs_bwrap
def test_executions_run_off_the_event_loop_in_parallel(scorer):
    """Two sandboxes at once (concurrency 2), while the loop keeps ticking every few milliseconds."""
    sleeper = "    import time\n    time.sleep(0.5)\n    return 2 * math.sqrt(n)\n"  # check() calls it twice: 1 s

    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        started = time.perf_counter()
        results = await asyncio.gather(*(scorer.score(row(sleeper)) for _ in range(4)))
        elapsed = time.perf_counter() - started
        done = True
        await tick_task
        return results, elapsed, ticks

    results, elapsed, ticks = asyncio.run(main())
    assert all(r["score_code_exec"] == 1.0 for r in results)
    assert elapsed < 3.5  # 4 × 1 s in 2 slots (2 s) plus start-up, not 4 s in a row
    assert ticks > elapsed / 0.01 / 4  # the loop was free (a blocked loop would tick a handful of times)


def test_refuses_without_a_sandbox_tool_unless_allowed(tmp_path):
    missing = str(tmp_path / "bwrap")
    with pytest.raises(ConfigError, match=r"scorers\.code_exec\.allow_unsandboxed=true"):
        build_scorer("code_exec", {"bwrap": missing})
    allowed = build_scorer("code_exec", {"bwrap": missing, "allow_unsandboxed": True, "cpu_s": 2})
    out = allowed.score_sync(row(BODY))
    assert out["score_code_exec"] == 1.0
    assert out["score_code_exec_sandbox"] == "none (allow_unsandboxed)"


def test_bad_options_are_one_sentence():
    with pytest.raises(ConfigError, match="concurrency"):
        build_scorer("code_exec", {"concurrency": 0})
    with pytest.raises(ConfigError, match=r"scorers\.code_exec: .*cpu_s"):
        build_scorer("code_exec", {"cpu_s": -1})
