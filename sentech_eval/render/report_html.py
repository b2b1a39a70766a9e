"""The self-contained ``report.html`` of ``sentech-eval report``: summary tables, plots inline as
data: URIs, the worst-scoring examples and the errors. Every value taken from results is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sentech_eval.analysis import cost
from sentech_eval.analysis.summary import (
    cache_note,
    cached_mask,
    config_keys,
    config_labels,
    interval_notes,
    score_columns,
    swept_parameters,
    worst_examples,
)
from sentech_eval.render import plots
from sentech_eval.render.markdown import cost_explanation, fmt_fixed
from sentech_eval.render.pass_at_k import pass_at_k_html

TEXT_LIMIT = 2000


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:right;vertical-align:top} th{background:#f3f3f3}
td.text,th.text{text-align:left} td.text{max-width:420px}
details{margin-top:8px} summary{cursor:pointer;color:#555} pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px}
.plots img{margin:6px;border:1px solid #eee;max-width:100%} .muted{color:#777}
"""
TEXT_COLUMNS = ("configuration", "config_id", "backend", "model", "dataset")


def _cell(col: str, v) -> str:
    if col == "error_rate":
        text = f"{100 * float(v):.1f}%"
    elif isinstance(v, (float, np.floating)):
        text = fmt_fixed(v, 4)
    else:
        text = "–" if v is None else str(v)
    cls = ' class="text"' if col in TEXT_COLUMNS else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th{' class=text' if c in TEXT_COLUMNS else ''}>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(_cell(c, row[c]) for c in frame.columns) + "</tr>" for _, row in frame.iterrows())
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _summary_table_html(summary: pd.DataFrame, labels: Sequence[str]) -> str:
    """A compact table (scores with CI, latency, throughput) plus every summary column in a <details>."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.startswith("score_") and c.endswith("_mean")]
    compact = pd.DataFrame(
        {"configuration": list(labels), "n": summary["n"].to_numpy(), "error_rate": summary["error_rate"].to_numpy()}
    )
    for s in scores:
        compact[s.removeprefix("score_") + " (95% CI)"] = [
            f"{fmt_fixed(m)} [{fmt_fixed(lo)}, {fmt_fixed(hi)}]"
            for m, lo, hi in zip(summary[f"{s}_mean"], summary[f"{s}_ci_low"], summary[f"{s}_ci_high"])
        ]
    compact["latency p50 / p95 (s)"] = [
        f"{fmt_fixed(a)} / {fmt_fixed(b)}" for a, b in zip(summary["latency_s_p50"], summary["latency_s_p95"])
    ]
    if "ttft_s_p50" in summary:
        compact["ttft p50 (s)"] = [fmt_fixed(v) for v in summary["ttft_s_p50"]]
    compact["output tok/s (all requests)"] = [fmt_fixed(v, 1) for v in summary["output_tokens_per_s"]]
    if "decode_tokens_per_s_p50" in summary and summary["decode_tokens_per_s_p50"].notna().any():
        compact["decode tok/s p50 (per request)"] = [fmt_fixed(v, 1) for v in summary["decode_tokens_per_s_p50"]]
    full = summary.loc[:, [c for c in summary.columns if summary[c].notna().any()]].copy()
    full.insert(0, "configuration", list(labels))
    return (
        _table(compact, "summary")
        + "<details><summary>All summary columns (as in summary.parquet; empty columns hidden)</summary>"
        + _table(full, "summary-full")
        + "</details>"
    )


def _cost_html(summary: pd.DataFrame, labels: Sequence[str]) -> str:
    """The Cost section (total, per 1,000 requests, per correct answer with CI), '' without ``cost_usd``."""
    if cost.COST_COLUMN not in summary.columns:
        return ""
    per_correct = cost.cost_per_correct_names(summary)
    table = pd.DataFrame(
        {
            "configuration": list(labels),
            "total cost": [cost.money(v) for v in summary[cost.COST_COLUMN]],
            "per 1,000 requests": [cost.money(v) for v in summary["cost_per_1k_requests"]],
        }
    )
    for c in per_correct:
        table[f"per correct answer: {c.removeprefix('cost_per_correct_')} (95% CI)"] = [
            cost.interval_text(m, lo, hi)
            for m, lo, hi in zip(summary[c], summary[f"{c}_ci_low"], summary[f"{c}_ci_high"])
        ]
    note = f'<p class="muted">{html.escape(cost_explanation())}</p>' if per_correct else ""
    return "<h2>Cost</h2>" + _table(table, "cost") + note


def _pre_text(text, limit: int = TEXT_LIMIT) -> str:
    """A cell's text for a ``<pre>`` (line breaks kept, unlike ``normalize.one_line``), cut to ``limit``;
    a missing value (None, NaN) is empty."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " …"


def _examples_html(examples: pd.DataFrame, scores: Sequence[str], label_of: dict) -> str:
    if examples.empty:
        return '<p class="muted">No scored rows.</p>'
    head = (
        ["configuration", "prompt_id", "repeat"]
        + [s.removeprefix("score_") for s in scores]
        + ["prompt", "reference", "output"]
    )
    rows = []
    for _, r in examples.iterrows():
        cells = [
            html.escape(label_of.get(r["_config"], "")),
            html.escape(str(r.get("prompt_id", ""))),
            html.escape(str(r.get("repeat", ""))),
        ]
        first = f'<td class="text">{cells.pop(0)}</td>'
        for s in scores:
            detail = r.get(f"{s}_detail")
            title = f' title="{html.escape(str(detail), quote=True)}"' if isinstance(detail, str) else ""
            cells.append(f"<span{title}>{html.escape(fmt_fixed(r[s]))}</span>")
        tds = first + "".join(f"<td>{c}</td>" for c in cells)
        for col in ("prompt", "reference", "output"):
            tds += f'<td class="text"><pre>{html.escape(_pre_text(r.get(col)))}</pre></td>'
        rows.append(f"<tr>{tds}</tr>")
    th = "".join(
        f"<th{' class=text' if h in ('configuration', 'prompt', 'reference', 'output') else ''}>{html.escape(h)}</th>"
        for h in head
    )
    return f'<div class="scroll"><table id="worst"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _errors_html(df: pd.DataFrame, label_of: dict) -> str:
    errors = df[df["status"] != "ok"]
    if errors.empty:
        return '<p class="muted">No errors.</p>'
    counts = (
        errors.assign(error=errors.get("error", pd.Series(dtype=str)).fillna("(no message)"))
        .groupby(["_config", "error"], sort=False)
        .size()
        .sort_values(ascending=False)
        .head(20)
    )
    rows = "".join(
        f'<tr><td class="text">{html.escape(label_of.get(cfg, ""))}</td><td class="text"><pre>{html.escape(_pre_text(err, 500))}</pre></td><td>{n}</td></tr>'
        for (cfg, err), n in counts.items()
    )
    return f'<table id="errors"><thead><tr><th class="text">configuration</th><th class="text">error</th><th>rows</th></tr></thead><tbody>{rows}</tbody></table>'


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">' if uri else ""


def build_html(
    df: pd.DataFrame,
    summary: pd.DataFrame,
    title: str,
    top: int = 10,
    load_section: str = "",
    extra_sections: Sequence[str] = (),
) -> str:
    """The self-contained report page (plots inline as data: URIs, no external resources)."""
    labels = config_labels(summary)
    keys = config_keys(df)
    df = df.copy()
    df["_config"] = _config_index(df, summary, keys)
    label_of = dict(enumerate(labels))
    scores = score_columns(df)
    swept = [
        p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset") or summary[p].nunique() > 1
    ]
    sections = [
        f'<h1>sentech-eval report</h1><p class="muted">{html.escape(title)} — {len(df)} rows, '
        f"{len(summary)} configuration(s), scores: {html.escape(', '.join(s.removeprefix('score_') for s in scores) or 'none')}</p>"
    ]
    note = cache_note(summary)
    sections.append(
        "<h2>Summary</h2>"
        + _summary_table_html(summary, labels)
        + '<p class="muted">95% CIs with the prompt as the unit (rows of one prompt are never counted as '
        "independent): "
        + html.escape(" · ".join(interval_notes(summary)) or "no scores")
        + ". Errored rows count in error_rate only. output tok/s is throughput over all requests in "
        "flight; decode tok/s is the median per-request speed after the first token.</p>"
        + (f'<p id="cache-note">{html.escape(note)}</p>' if note else "")
    )
    cost_section = _cost_html(summary, labels)
    if cost_section:
        sections.append(cost_section)
    score_imgs = []
    if swept:
        for score in scores:
            for param in swept:
                others = [p for p in swept if p != param]
                score_imgs.append(_img(plots.score_vs_param(summary, score, param, others), f"{score} vs {param}"))
    else:
        score_imgs.append(_img(plots.score_bars(summary, scores, labels), "scores"))
    sections.append('<h2>Scores</h2><div class="plots">' + "".join(score_imgs) + "</div>")
    pass_section = pass_at_k_html(summary)  # with repeats: pass@k and its best temperature per k
    if pass_section:
        sections.append(pass_section)
    if len(swept) >= 2 and scores:
        imgs = "".join(_img(plots.heatmap(summary, s, swept[0], swept[1]), f"{s} heatmap") for s in scores)
        sections.append(
            f'<h2>Heatmap: {html.escape(swept[0])} × {html.escape(swept[1])}</h2><div class="plots">{imgs}</div>'
        )
    if load_section:  # render.load.load_html: the load table, its curves and the knee
        sections.append(load_section)
    sections.extend(extra_sections)  # e.g. the race section of a race sweep (render/race.py)
    fresh = df[~cached_mask(df)]  # rows answered from the cache measured no latency in these runs
    sections.append(
        '<h2>Latency</h2><div class="plots">' + _img(plots.latency_cdf(fresh, label_of), "latency CDF") + "</div>"
    )
    sections.append(
        '<h2>Tokens</h2><div class="plots">' + _img(plots.token_histograms(df, label_of), "token histograms") + "</div>"
    )
    sections.append(
        f"<h2>Worst-scoring examples (top {top})</h2>"
        + _examples_html(worst_examples(df, scores, top), scores, label_of)
    )
    sections.append("<h2>Errors</h2>" + _errors_html(df, label_of))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sentech-eval report: {html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def _config_index(df: pd.DataFrame, summary: pd.DataFrame, keys: list[str]) -> pd.Series:
    """For each results row, the index of its summary row."""
    if not keys:
        return pd.Series(0, index=df.index)
    lookup = {}
    for i, row in summary.iterrows():
        lookup[tuple(_key(row[k]) for k in keys)] = i
    return pd.Series(
        [lookup.get(tuple(_key(v) for v in vals), -1) for vals in df[keys].itertuples(index=False)], index=df.index
    )


def _key(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v
