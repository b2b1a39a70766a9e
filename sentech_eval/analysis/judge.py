"""Pairwise LLM judge for ``compare --judge``: which of two outputs to the same prompt is better?

Every pair where both sides succeeded is judged twice, once as (A, B) and once as (B, A), so a
judge that favours the first (or second) position cancels out. Each verdict gives B 1, 0.5 (tie)
or 0; a pair's preference is the mean of its usable verdicts, and the reported rate is the mean
over pairs with a CI clustered by prompt (``stats.mean_ci``: the bootstrap resampling prompts, or
the mid-p or cluster-adjusted Wilson interval when every preference is 0 or 1). Pairs whose outputs
are identical after normalisation count as ties without asking. A failed request or a reply
without a verdict is recorded as a judge error and that verdict is left out; it never stops
the comparison. Only a rejected API key (401/403) stops it, as it stops a run.

The judge is a job spec (``commands/compare.py`` composes it from ``--judge``'s overrides, so
``--judge backend=local`` or ``--judge backend=remote backend.base_url=http://…`` work as in
``sentech-eval run``; ``sampling=greedy`` with ``max_tokens=256`` is used unless overridden).
Every verdict is kept in ``judge.parquet`` next to ``compare.parquet``.
"""

from __future__ import annotations

import asyncio
import re

import pandas as pd

from sentech_eval.analysis import stats
from sentech_eval.analysis.compare import metric_row, normalise_output
from sentech_eval.analysis.pairing import PairedResults
from sentech_eval.backends.base import Backend, create_backend
from sentech_eval.backends.retry import complete_with_retries
from sentech_eval.config import JobSpec
from sentech_eval.errors import AuthenticationError
from sentech_eval.types import Sampling

PROMPT = """You are comparing two answers to the same question.

Question:
{prompt}
{reference}
Answer 1:
{first}

Answer 2:
{second}

Which answer is better: more correct, complete and helpful? Reply with one line: "Winner: 1", "Winner: 2" or "Winner: tie"."""

VERDICT = re.compile(r"winner\s*[:=]?\s*\**\s*(1|2|tie)\b", re.IGNORECASE)
MAX_ATTEMPTS = 3


def parse_verdict(text: str | None) -> str | None:
    """'1', '2' or 'tie' from the judge's reply (the last 'Winner: …' line), None if there is none."""
    matches = VERDICT.findall(text or "")
    return matches[-1].lower() if matches else None


def _messages(row: pd.Series, first: str, second: str) -> list[dict[str, str]]:
    prompt = row.get("prompt_a") if isinstance(row.get("prompt_a"), str) else row.get("prompt_b", "")
    reference = row.get("reference_a")
    ref_text = f"\nReference answer:\n{reference}\n" if isinstance(reference, str) and reference else ""
    content = PROMPT.format(prompt=prompt or "", reference=ref_text, first=first, second=second)
    return [{"role": "user", "content": content}]


async def _judge_all(backend: Backend, sampling: Sampling, pairs: pd.DataFrame, concurrency: int) -> list[dict]:
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(row: pd.Series, order: str) -> dict:
        a, b = str(row["output_a"]), str(row["output_b"])
        first, second = (a, b) if order == "AB" else (b, a)
        async with semaphore:
            completion = await complete_with_retries(
                backend, _messages(row, first, second), sampling, max_attempts=MAX_ATTEMPTS
            )
        record = {
            "prompt_id": row["prompt_id"],
            "repeat": int(row["repeat"]),
            "order": order,
            "verdict": None,
            "prefers": None,
            "error": None,
            "latency_s": completion.latency_s,
        }
        if completion.http_status in (401, 403):
            # A rejected key is a set-up failure, not a verdict: every further request would fail too.
            raise AuthenticationError(
                f"The judge backend rejected the API key (HTTP {completion.http_status}); export the right key "
                f"in the variable named by backend.api_key_env for --judge."
            )
        if completion.status != "ok":
            record["error"] = f"request failed (HTTP {completion.http_status}): {completion.error}"
            return record
        verdict = parse_verdict(completion.output)
        record["verdict"] = " ".join(str(completion.output or "").split())[:200]
        if verdict is None:
            record["error"] = "no 'Winner: 1|2|tie' in the reply"
        elif verdict == "tie":
            record["prefers"] = "tie"
        else:
            first_side, second_side = ("A", "B") if order == "AB" else ("B", "A")
            record["prefers"] = first_side if verdict == "1" else second_side
        return record

    tasks = [one(row, order) for _, row in pairs.iterrows() for order in ("AB", "BA")]
    return list(await asyncio.gather(*tasks))


def judge_pairs(paired: PairedResults, judge: JobSpec, limit: int | None = None) -> pd.DataFrame:
    """One row per judge verdict (two per judged pair; identical outputs are ties, not asked), by the
    backend and sampling of the ``judge`` spec."""
    sampling, concurrency = judge.sampling, judge.runner.concurrency
    pairs = paired.pairs
    ok = pd.Series(True, index=pairs.index)
    for side in ("a", "b"):
        if f"status_{side}" in pairs.columns:
            ok &= pairs[f"status_{side}"].astype(str).eq("ok")
    pairs = pairs[ok & pairs["output_a"].notna() & pairs["output_b"].notna()]
    if limit is not None:
        pairs = pairs.head(limit)
    same = pairs["output_a"].map(normalise_output) == pairs["output_b"].map(normalise_output)
    records = [
        {
            "prompt_id": r["prompt_id"],
            "repeat": int(r["repeat"]),
            "order": order,
            "verdict": "identical outputs",
            "prefers": "tie",
            "error": None,
            "latency_s": None,
        }
        for _, r in pairs[same].iterrows()
        for order in ("AB", "BA")
    ]
    to_ask = pairs[~same]
    if len(to_ask):
        backend = create_backend(judge.backend, concurrency)

        async def run() -> list[dict]:
            try:
                return await _judge_all(backend, sampling, to_ask, concurrency)
            finally:
                await backend.aclose()

        records += asyncio.run(run())
    columns = ["prompt_id", "repeat", "order", "verdict", "prefers", "error", "latency_s"]
    return pd.DataFrame(records, columns=columns).sort_values(["prompt_id", "repeat", "order"], ignore_index=True)


def judge_rows(judgements: pd.DataFrame, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """compare.parquet rows: B's preference rate with CI, position consistency, judge errors."""
    value = judgements["prefers"].map({"B": 1.0, "A": 0.0, "tie": 0.5})
    per_pair = value.groupby([judgements["prompt_id"], judgements["repeat"]]).mean().dropna()
    errors = int(judgements["error"].notna().sum())
    requests = int((judgements["verdict"] != "identical outputs").sum())
    rows = []
    if len(per_pair):
        clusters = per_pair.index.get_level_values(0).to_numpy()
        ci = stats.mean_ci(per_pair.to_numpy(), clusters=clusters, confidence=confidence, seed=seed)
        rate, low, high, method = ci.estimate, ci.low, ci.high, ci.method
    else:
        rate = low = high = method = None
    both = judgements.dropna(subset=["prefers"]).groupby(["prompt_id", "repeat"])["prefers"]
    consistent = both.agg(lambda s: len(s) == 2 and s.nunique() == 1)
    counted = both.size() == 2
    rows.append(
        metric_row(
            "judge_preference_b",
            "output",
            value=rate,
            ci_low=low,
            ci_high=high,
            n_pairs=len(per_pair),
            ci_method=method,
            wins=int((per_pair > 0.5).sum()),
            ties=int((per_pair == 0.5).sum()),
            losses=int((per_pair < 0.5).sum()),
            note=f"B preferred = 1, tie = 0.5, A = 0; both orders asked; {errors} judge errors in {requests} requests",
        )
    )
    rows.append(
        metric_row(
            "judge_position_consistency",
            "output",
            value=float(consistent[counted].mean()) if counted.any() else None,
            n_pairs=int(counted.sum()),
            note="share of pairs whose two verdicts (order swapped) name the same winner",
        )
    )
    rows.append(
        metric_row(
            "judge_errors",
            "output",
            value=float(errors),
            n_pairs=requests,
            note="failed judge requests or replies without a verdict (left out of the rate)",
        )
    )
    return rows
