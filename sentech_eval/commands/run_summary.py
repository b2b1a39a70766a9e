"""What ``sentech-eval run`` prints when it ends: the result, not only where it went.

    sentech-eval run: 150 rows in 168.08 s: 150 ok, 0 errors -> results/capitals/…/results.parquet
      score_contains   0.373  95% CI [0.300, 0.447]  (n=150)
      latency p50 0.52 s, p95 1.31 s; tokens 4512 prompt + 1290 completion (8.6 per answer)
      report: results/capitals/…/report.html

Scores and their CIs come from ``report.summarize`` (the summary behind ``sentech-eval report``),
so the numbers printed here and those in report.html are the same. Errors are broken down by
HTTP status and first message, so "0 ok, 3 errors" says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sentech_eval.engine.results import read_parquet
from sentech_eval.escaping import terminal_text

MESSAGE_LIMIT = 160


@dataclass
class RunOutcome:
    """Counts over every row of a results file (resumed rows included)."""

    rows: int
    ok: int
    errors: int
    error_kinds: list[tuple[int | None, str, int]] = field(default_factory=list)  # (status, message, count)

    @property
    def error_rate(self) -> float:
        return self.errors / self.rows if self.rows else 0.0


def _short(text: str | None) -> str:
    text = terminal_text(" ".join((text or "").split()))  # a server's message: control characters shown escaped
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def read_outcome(results: Path) -> RunOutcome:
    """Row counts and the error breakdown (most frequent first) of a results.parquet."""
    table = read_parquet(results, columns=["status", "http_status", "error"])
    errors = table.filter(pc.equal(table.column("status"), "error"))
    kinds = Counter(zip(errors.column("http_status").to_pylist(), map(_short, errors.column("error").to_pylist())))
    return RunOutcome(
        rows=table.num_rows,
        ok=table.num_rows - errors.num_rows,
        errors=errors.num_rows,
        error_kinds=[(status, message, n) for (status, message), n in kinds.most_common()],
    )


def error_lines(outcome: RunOutcome, limit: int = 3) -> list[str]:
    """One line per kind of error: ``HTTP 404 × 3: Not Found``."""
    lines = []
    for status, message, n in outcome.error_kinds[:limit]:
        where = f"HTTP {status}" if status is not None else "no HTTP answer"
        lines.append(f"  errors: {where} × {n}: {message or '(no message)'}")
    rest = sum(n for _, _, n in outcome.error_kinds[limit:])
    if rest:
        lines.append(
            f"  errors: {rest} more of {len(outcome.error_kinds) - limit} other kind(s); see the 'error' column"
        )
    return lines


def _fmt_s(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if v != v:  # NaN
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def summary_lines(summary_row: dict[str, Any], scores: list[str]) -> list[str]:
    """Score means with their 95% CI, latency p50/p95 and tokens of one configuration's summary row."""
    lines = []
    width = max((len(s) for s in scores), default=0)
    for score in scores:
        mean = summary_row.get(f"{score}_mean")
        low, high = summary_row.get(f"{score}_ci_low"), summary_row.get(f"{score}_ci_high")
        n = summary_row.get(f"{score}_n")
        if mean is None or mean != mean:
            lines.append(f"  {score:<{width}}  -  (no scored row)")
            continue
        lines.append(f"  {score:<{width}}  {mean:.3f}  95% CI [{low:.3f}, {high:.3f}]  (n={int(n)})")
    prompt_tokens = summary_row.get("prompt_tokens_sum")
    completion = summary_row.get("completion_tokens_sum")
    per_answer = summary_row.get("completion_tokens_mean")
    prompt_known = prompt_tokens is not None and prompt_tokens == prompt_tokens
    if prompt_known or completion:
        tokens = (
            f"tokens {int(prompt_tokens)} prompt + {int(completion or 0)} completion"
            if prompt_known
            else (f"tokens {int(completion)} completion")
        )
        if per_answer is not None and per_answer == per_answer:
            tokens += f" ({per_answer:.1f} per answer)"
        if not prompt_known:  # no row has a prompt count: say so rather than print 0
            tokens += ", no prompt count from the server"
    else:
        tokens = ""
    lines.append(
        f"  latency p50 {_fmt_s(summary_row.get('latency_s_p50'))}, "
        f"p95 {_fmt_s(summary_row.get('latency_s_p95'))}" + (f"; {tokens}" if tokens else "")
    )
    return lines


def pass_at_lines(summary_row: dict[str, Any], ks: list[int]) -> list[str]:
    """One line of pass@k with 95% CIs for one configuration (``pass@1 0.120 [0.08, 0.17] · pass@5 …``)."""
    parts = []
    for k in ks:
        value = summary_row.get(f"pass_at_{k}")
        if value is None or value != value:
            parts.append(f"pass@{k} -")
            continue
        low, high = summary_row.get(f"pass_at_{k}_ci_low"), summary_row.get(f"pass_at_{k}_ci_high")
        parts.append(f"pass@{k} {value:.3f} [{low:.3f}, {high:.3f}]")
    if not parts:
        return []
    problems = summary_row.get("pass_at_problems")
    return ["  " + " · ".join(parts) + (f"  ({int(problems)} prompts)" if problems else "")]


def end_of_run(results: Path, *, scored: bool) -> tuple[RunOutcome, list[str]]:
    """The outcome of a finished run and the lines to print after its one-line count.

    With scorers this also writes summary.parquet and report.html next to the results (what
    ``sentech-eval report`` writes) and prints the scores with their 95% CIs; without, latency and
    tokens. Errors are always broken down.
    """
    outcome = read_outcome(results)
    lines: list[str] = []
    if outcome.ok:
        if scored:
            from sentech_eval.analysis.summary import pass_at_list, pass_at_notes  # pandas: only for scored runs
            from sentech_eval.commands.report import write_report

            summary, _, html_path = write_report(results.parent)
            scores = [
                c.removesuffix("_ci_low") for c in summary.columns if c.startswith("score_") and c.endswith("_ci_low")
            ]
            ks = pass_at_list(summary)
            for row in summary.to_dict("records"):
                lines += summary_lines(row, scores)
                lines += pass_at_lines(row, ks)
            lines += [f"  {terminal_text(note)}" for note in pass_at_notes(summary)]
            lines += error_lines(outcome)
            lines.append(f"  report: {html_path}")
            return outcome, lines
        lines += _plain_lines(results)
    lines += error_lines(outcome)
    return outcome, lines


def _plain_lines(results: Path) -> list[str]:
    """Latency p50/p95 and tokens of the ok rows, without pandas (runs without scorers)."""
    table = read_parquet(results, columns=["status", "latency_s", "prompt_tokens", "completion_tokens"])
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    latency = ok.column("latency_s").drop_null()
    row: dict[str, Any] = {}
    if len(latency):
        p50, p95 = pc.quantile(latency, q=[0.5, 0.95], interpolation="linear").to_pylist()
        row.update(latency_s_p50=p50, latency_s_p95=p95)
    row["prompt_tokens_sum"] = pc.sum(table.column("prompt_tokens")).as_py()  # None: no row has a count
    row["completion_tokens_sum"] = pc.sum(table.column("completion_tokens")).as_py() or 0
    row["completion_tokens_mean"] = pc.mean(ok.column("completion_tokens")).as_py()
    return summary_lines(row, [])
