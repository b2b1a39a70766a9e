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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sentech_eval.engine.evaluation import RunResult
from sentech_eval.engine.results import read_parquet
from sentech_eval.escaping import terminal_text
from sentech_eval.normalize import one_line

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


def read_outcome(results: Path) -> RunOutcome:
    """Row counts and the error breakdown (most frequent first) of a results.parquet."""
    table = read_parquet(results, columns=["status", "http_status", "error"])
    errors = table.filter(pc.equal(table.column("status"), "error"))
    kinds = Counter(
        zip(
            errors.column("http_status").to_pylist(),
            (terminal_text(one_line(e, MESSAGE_LIMIT)) for e in errors.column("error").to_pylist()),  # escaped
        )
    )
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


def result_lines(result: RunResult, resume: Callable[[dict[str, str] | None], str]) -> list[str]:
    """What a run prints when it ends, before the result: counts, cost, the cache's part, why it stopped
    early and how to send the rest (``resume(replace)`` is the command), open-loop rates, warnings."""
    summary = result.summary
    line = f"sentech-eval run: {summary.ok} ok, {summary.errors} errors"
    if summary.skipped:
        line += f", {summary.skipped} skipped (already done)"
    if result.cached is not None:
        line += f", {result.cached} from cache"
    if summary.retries:
        line += f", {summary.retries} retries"
    if summary.lowest_concurrency is not None:
        line += f" (429s lowered the concurrency to as low as {summary.lowest_concurrency} of {result.concurrency})"
    line += f" in {summary.elapsed_s:.2f} s -> {result.results}"
    if result.scores:
        line += "  " + " ".join(f"{k}={v:.3f}" for k, v in sorted(result.scores.items()))
    if result.cost_usd is not None:
        line += f"  cost ${result.cost_usd:.4f}"
    lines = [line, *cache_lines(result)]
    if result.batching:
        lines.append(f"sentech-eval run: the local model decoded requests together: {result.batching}")
    if summary.stop_reason:
        # the stop that ended the run would end a resumed one at once: the command lifts it
        lift: dict[str, str] = {}
        if result.cost_ceiling is not None:
            lift["runner.max_cost_usd"] = f"{2 * result.cost_ceiling:g}"
        if result.precision_reached:
            lift["runner.stop_at_ci_half_width"] = "null"
        how = " and ".join(
            (["with the ceiling doubled"] if result.cost_ceiling is not None else [])
            + (["without the precision stop"] if result.precision_reached else [])
        )
        lines.append(
            f"sentech-eval run: stopped early: {summary.stop_reason}. The rest can still be sent (rows already ok "
            f"are skipped{'; here ' + how if how else ''}) with:\n  {resume(lift)}"
        )
    if summary.requested_rps is not None and summary.achieved_rps is not None:
        lines.append(
            f"sentech-eval run: open loop ({result.arrival}) at {summary.requested_rps:g} req/s: achieved "
            f"{summary.achieved_rps:.2f} req/s, p99 send lag {1000 * (summary.send_lag_p99_s or 0):.1f} ms"
        )
    if summary.schedule_warning:
        lines.append(f"sentech-eval run: warning: {summary.schedule_warning}.")
    if result.server_capacity is not None:
        lines.append(
            f"sentech-eval run: warning: the server answers {result.server_capacity} request(s) at a time (its "
            f"X-Sentech-Capacity header) but runner.concurrency={result.concurrency}: the other requests waited "
            "inside the server, so latency_s and ttft_s include that queueing; for per-request latency run with "
            f"runner.concurrency={result.server_capacity}."
        )
    if result.idle_server_slots is not None:
        capacity = result.concurrency + result.idle_server_slots
        lines.append(
            f"sentech-eval run: note: the server answers {capacity} requests at a time (its X-Sentech-Capacity "
            f"header, e.g. `serve --engine llama --parallel {capacity}`) but runner.concurrency={result.concurrency} "
            f"left {result.idle_server_slots} of them idle; runner.concurrency={capacity} uses them all."
        )
    if summary.interrupted:
        lines.append(
            f"sentech-eval run: interrupted; {summary.ok + summary.errors} rows are saved in {result.results}. "
            f"Resume (rows already ok are skipped, errors retried) with:\n  {resume(None)}"
        )
    return lines


def cache_lines(result: RunResult) -> list[str]:
    """What the response cache did to this run's measurements (no line when it did nothing)."""
    lines, ok, cached = [], result.summary.ok, result.cached or 0
    if ok and cached == ok:
        lines.append(
            f"sentech-eval run: all {ok} ok rows came from the response cache: this run measured no latency "
            "(their latency_s/ttft_s are the original requests')."
        )
    elif cached:
        lines.append(
            f"sentech-eval run: {cached} of {ok} ok rows came from the response cache; latency figures in "
            f"reports use the {ok - cached} fresh rows only."
        )
    if result.refused_unseeded:
        lines.append(
            f"sentech-eval run: {result.refused_unseeded} seedless requests at temperature > 0 were not served "
            "from the cache (set a seed that is sent, or runner.cache_unseeded=true)."
        )
    return lines
