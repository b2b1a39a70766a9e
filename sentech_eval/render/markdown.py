"""Markdown for terminals, pull-request comments and CI job summaries: the report table, the
paired comparison and the gate's verdict; plus the two number formatters the HTML pages share.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sentech_eval.analysis import cost
from sentech_eval.analysis.compare import comparison_warnings
from sentech_eval.analysis.gate import CheckResult, Thresholds
from sentech_eval.analysis.pairing import PairedResults
from sentech_eval.analysis.stats import METHOD_DESCRIPTIONS
from sentech_eval.analysis.summary import cache_note, config_labels, interval_notes
from sentech_eval.escaping import markdown_text
from sentech_eval.render.pass_at_k import pass_at_k_markdown


def fmt(value, signed: bool = False, digits: int = 4) -> str:
    """A number for a table: '' for missing, integers as such, floats to ``digits`` significant places."""
    if value is None or value is pd.NA:
        return ""
    try:
        if isinstance(value, float) and math.isnan(value):
            return ""
    except TypeError:
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):+d}" if signed else str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):+.{digits}g}" if signed else f"{float(value):.{digits}g}"
    return str(value)


def fmt_fixed(v, digits: int = 3) -> str:
    """A number to ``digits`` decimals, "–" for missing (the report's tables)."""
    if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def report_markdown(summary: pd.DataFrame, title: str) -> str:
    """A GitHub-flavoured markdown table of the summary (for stdout / a CI job summary)."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.startswith("score_") and c.endswith("_mean")]
    labels = [markdown_text(label) for label in config_labels(summary)]  # model names come from servers
    header = ["configuration", "n", "errors"] + [markdown_text(s.removeprefix("score_")) + " (95% CI)" for s in scores]
    header += ["latency p50 / p95 (s)", "output tok/s (all requests)", "decode tok/s p50 (per request)"]
    lines = [
        f"## sentech-eval report: {markdown_text(title)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    for label, (_, row) in zip(labels, summary.iterrows()):
        cells = [label, str(int(row["n"])), f"{100 * row['error_rate']:.1f}%"]
        for s in scores:
            cells.append(
                f"{fmt_fixed(row[f'{s}_mean'])} [{fmt_fixed(row[f'{s}_ci_low'])}, {fmt_fixed(row[f'{s}_ci_high'])}]"
            )
        cells.append(f"{fmt_fixed(row['latency_s_p50'])} / {fmt_fixed(row['latency_s_p95'])}")
        cells.append(fmt_fixed(row["output_tokens_per_s"], 1))
        cells.append(fmt_fixed(row.get("decode_tokens_per_s_p50"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    notes = interval_notes(summary)
    if notes:
        lines += ["", "95% CIs, clustered over prompts: " + " · ".join(notes) + "."]
    note = cache_note(summary)
    if note:
        lines += ["", note]
    lines += cost_markdown(summary, labels)
    lines += pass_at_k_markdown(summary)
    return "\n".join(lines) + "\n"


COST_EXPLANATION = (
    "Cost per correct answer = total cost / correct answers (errored rows cost what they cost and are never "
    "correct); its 95% CI divides the cost by the bounds of that score's 95% CI above: "
    "[cost / (n × upper), cost / (n × lower)]. When the accuracy's lower bound is 0 the cost per correct "
    "answer has no upper bound."
)


def cost_markdown(summary: pd.DataFrame, labels: list[str]) -> list[str]:
    """The report's Cost table (total, per 1,000 requests, per correct answer with CI), or [] without ``cost_usd``."""
    if cost.COST_COLUMN not in summary.columns:
        return []
    per_correct = cost.cost_per_correct_names(summary)
    header = ["configuration", "total cost", "per 1,000 requests"]
    header += [
        f"per correct answer: {markdown_text(c.removeprefix('cost_per_correct_'))} (95% CI)" for c in per_correct
    ]
    lines = [
        "",
        "### Cost",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    for label, (_, row) in zip(labels, summary.iterrows()):
        cells = [label, cost.money(row[cost.COST_COLUMN]), cost.money(row["cost_per_1k_requests"])]
        cells += [cost.interval_text(row[c], row[f"{c}_ci_low"], row[f"{c}_ci_high"]) for c in per_correct]
        lines.append("| " + " | ".join(cells) + " |")
    if per_correct:
        lines += ["", cost_explanation()]
    return lines


def cost_explanation() -> str:
    """The sentence under a cost table: how the cost per correct answer and its interval are made."""
    return COST_EXPLANATION


def compare_markdown(
    metrics: pd.DataFrame, label_a: str = "A", label_b: str = "B", warnings: list[str] | None = None
) -> str:
    """A markdown summary of the metrics, fit for a terminal or a pull-request comment."""
    m = metrics.set_index("metric", drop=False)
    label_a, label_b = markdown_text(label_a), markdown_text(label_b)
    lines = [f"## sentech-eval compare: {label_a} (A) vs {label_b} (B)", ""]
    pairs = m.loc["pairs"]
    lines.append(
        f"{int(pairs['n_pairs'])} pairs ({pairs['note']}); unpaired: {int(m.loc['unpaired_a', 'value'])} of A, "
        f"{int(m.loc['unpaired_b', 'value'])} of B."
    )
    for warning in warnings or []:
        lines.append(f"⚠️ {markdown_text(warning)}")
    scores = metrics[metrics["metric"] == "score"]
    if len(scores):
        lines += [
            "",
            "| score | A | B | B − A | 95% CI | W/T/L (B) | p | pairs (prompts) |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for _, r in scores.iterrows():
            lines.append(
                f"| {markdown_text(r['column'])} | {fmt(r['value_a'])} | {fmt(r['value_b'])} | {fmt(r['diff'], signed=True)} | "
                f"[{fmt(r['ci_low'], signed=True)}, {fmt(r['ci_high'], signed=True)}] | "
                f"{fmt(r['wins'])}/{fmt(r['ties'])}/{fmt(r['losses'])} | {fmt(r['p_value'])} | "
                f"{fmt(r['n_pairs'])} ({fmt(r['n_clusters'])}) |"
            )
        lines += [""] + method_lines(scores)
    passes = metrics[metrics["metric"] == "pass_at_k"]
    if len(passes):
        lines += ["", "| pass@k | A (95% CI) | B (95% CI) | B − A | 95% CI | note |", "|---|---:|---:|---:|---|---|"]
        for _, r in passes.iterrows():
            lines.append(
                f"| {markdown_text(r['column'])} | {fmt(r['value_a'])} [{fmt(r['ci_low_a'])}, {fmt(r['ci_high_a'])}] | "
                f"{fmt(r['value_b'])} [{fmt(r['ci_low_b'])}, {fmt(r['ci_high_b'])}] | {fmt(r['diff'], signed=True)} | "
                f"[{fmt(r['ci_low'], signed=True)}, {fmt(r['ci_high'], signed=True)}] | {markdown_text(r['note'])} |"
            )
    perf = metrics[metrics["metric"].str.match(r"^(latency|ttft|completion_tokens|error_rate)")]
    if len(perf):
        lines += ["", "| performance | A | B | B/A |", "|---|---:|---:|---:|"]
        for _, r in perf.iterrows():
            lines.append(
                f"| {markdown_text(r['metric'])} | {fmt(r['value_a'])} | {fmt(r['value_b'])} | {fmt(r['ratio'])} |"
            )
    lines += compare_cost_markdown(metrics)
    agree = m.loc["output_agreement"]
    lines += ["", f"Output agreement: {fmt(agree['value'])} ({agree['note']})."]
    if "judge_preference_b" in m.index:
        j = m.loc["judge_preference_b"]
        lines.append(
            f"Judge prefers B in {fmt(j['value'])} of {fmt(j['n_pairs'])} judged pairs "
            f"(95% CI [{fmt(j['ci_low'])}, {fmt(j['ci_high'])}]; {j['note']})."
        )
    return "\n".join(lines) + "\n"


COST_METRICS = ("cost_usd", "cost_per_1k_requests", "cost_per_correct")


def compare_cost_cells(metrics: pd.DataFrame) -> tuple[list[tuple[str, str, str, str]], str]:
    """The comparison's cost lines as (figure, A, B, B/A) texts and the sentence explaining them; ([], '') without cost."""
    rows = metrics[metrics["metric"].isin(COST_METRICS)]
    if rows.empty:
        return [], ""
    cells = []
    for _, r in rows.iterrows():
        if r["metric"] == "cost_per_correct":
            name = f"per correct answer: {markdown_text(str(r['column']).removeprefix('score_'))} (95% CI)"
            a = cost.interval_text(_num(r["value_a"]), _num(r["ci_low_a"]), _num(r["ci_high_a"]))
            b = cost.interval_text(_num(r["value_b"]), _num(r["ci_low_b"]), _num(r["ci_high_b"]))
        else:
            name = "total cost" if r["metric"] == "cost_usd" else "per 1,000 requests"
            a, b = cost.money(_num(r["value_a"])), cost.money(_num(r["value_b"]))
        cells.append((name, a, b, fmt(r["ratio"])))
    note = (
        f"Cost over {rows['note'].iloc[0]}. Cost per correct answer = total cost / correct answers; its 95% CI "
        "divides the cost by the bounds of that side's accuracy interval (the interval `report` shows): "
        "[cost / (n × upper), cost / (n × lower)]; when the accuracy's lower bound is 0 it has no upper bound."
    )
    return cells, note


def compare_cost_markdown(metrics: pd.DataFrame) -> list[str]:
    """The comparison's cost table (both sides and B/A), or [] when neither side has ``cost_usd``."""
    cells, note = compare_cost_cells(metrics)
    if not cells:
        return []
    lines = ["", "| cost | A | B | B/A |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {a} | {b} | {ratio} |" for name, a, b, ratio in cells]
    return lines + ["", note]


def _num(value) -> float:
    """A metric cell as a float (NaN for missing)."""
    return float("nan") if value is None or value is pd.NA or pd.isna(value) else float(value)


def method_lines(scores: pd.DataFrame) -> list[str]:
    """Which interval and which test each score row used, and any disagreement between them."""
    lines = []
    for kind, column in (("CI", "ci_method"), ("p", "test")):
        used = [m for m in dict.fromkeys(scores[column].dropna().astype(str)) if m] if column in scores else []
        if used:
            lines.append(f"{kind}: " + "; ".join(METHOD_DESCRIPTIONS.get(m, m) for m in used) + ".")
    for _, r in scores.iterrows():
        note = str(r.get("note") or "")
        if "disagree" in note:
            lines.append(f"⚠️ {markdown_text(r['column'])}: {markdown_text(note)}.")
    return lines


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:,.1f}{unit}" if unit == " ms" else f"{value:.4g}{unit}"


def check_markdown(results: list[CheckResult], paired: PairedResults, thresholds: Thresholds) -> str:
    """The gate's verdict as markdown (fit for a PR comment or $GITHUB_STEP_SUMMARY)."""
    failed = [r for r in results if not r.passed]
    verdict = "❌ FAILED" if failed else "✅ PASSED"
    lines = [
        f"## sentech-eval check: {verdict}",
        "",
        f"{len(results) - len(failed)} of {len(results)} thresholds hold. Baseline: {markdown_text(paired.label_a)}; "
        f"candidate: {markdown_text(paired.label_b)}; {paired.n_pairs} pairs on "
        f"{markdown_text(', '.join(paired.keys))}.",
    ]
    if paired.unpaired_a or paired.unpaired_b:
        lines.append(
            f"⚠️ Unpaired rows (not in the score checks): {paired.unpaired_a} of the baseline, "
            f"{paired.unpaired_b} of the candidate."
        )
    lines += [f"⚠️ {markdown_text(w)}" for w in comparison_warnings(paired)]
    if thresholds.require_significance:
        lines.append(
            "Score drops count only when the paired 95% CI of the difference excludes zero "
            "(the prompt is the unit of evidence; each score names its interval and test)."
        )
    lines += ["", "| check | threshold | baseline | candidate | change | result |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        base, cand = _value_text(r.baseline, r.unit), _value_text(r.candidate, r.unit)
        lines.append(
            f"| {markdown_text(r.name)} | {markdown_text(r.threshold)} | {base} | {cand} | {markdown_text(r.observed)} "
            f"| {'pass' if r.passed else '**FAIL**'} |"
        )
    if failed:
        lines += ["", "Regressions:"] + [f"- {markdown_text(r.name)}: {markdown_text(r.message)}" for r in failed]
    tolerated = [r for r in results if r.passed and "not significant" in r.message]
    if tolerated:
        lines += ["", "Drops beyond the threshold that are not significant (tolerated):"]
        lines += [f"- {markdown_text(r.name)}: {markdown_text(r.message)}" for r in tolerated]
    return "\n".join(lines) + "\n"
