"""The self-contained ``compare.html``: metric tables, a paired-difference plot (PNG embedded as
base64, drawn with matplotlib's Agg backend) and side-by-side examples where A and B disagree most.
Every value taken from results is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math

import numpy as np
import pandas as pd

from sentech_eval.analysis.compare import comparison_warnings
from sentech_eval.analysis.pairing import PairedResults
from sentech_eval.render.markdown import COST_METRICS, compare_cost_cells, fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.worse{color:#b00020}.better{color:#1b7f3b}pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:18em;overflow:auto}
.small{color:#666;font-size:.9em}
"""


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in columns:
            v = row.get(c)
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cls = ""
            if c == "diff" and num and not (isinstance(v, float) and math.isnan(v)) and row.get("metric") == "score":
                cls = " better" if v > 0 else (" worse" if v < 0 else "")
            cells.append(f'<td class="{"num" if num else ""}{cls}">{html.escape(fmt(v, signed=(c == "diff")))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def difference_plot(paired: PairedResults, metrics: pd.DataFrame) -> str | None:
    """PNG (base64) with the per-score B − A difference and its CI, and per-pair latency differences."""
    from sentech_eval.render.plots import plt, png_bytes  # (matplotlib: Agg, labels are text, never maths)

    scores = metrics[(metrics["metric"] == "score") & metrics["diff"].notna()]
    pairs = paired.pairs
    lat = None
    if "latency_s_a" in pairs.columns and "latency_s_b" in pairs.columns:
        d = pd.to_numeric(pairs["latency_s_b"], errors="coerce") - pd.to_numeric(pairs["latency_s_a"], errors="coerce")
        lat = d.dropna().to_numpy(dtype=float)
        if lat.size == 0:
            lat = None
    if scores.empty and lat is None:
        return None
    panels = int(not scores.empty) + int(lat is not None)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, max(2.5, 0.5 * len(scores) + 1.5)), squeeze=False)
    axes = list(axes[0])
    if not scores.empty:
        ax = axes.pop(0)
        y = np.arange(len(scores))
        diff = scores["diff"].to_numpy(dtype=float)
        low = scores["ci_low"].to_numpy(dtype=float)
        high = scores["ci_high"].to_numpy(dtype=float)
        ax.errorbar(diff, y, xerr=[diff - low, high - diff], fmt="o", color="#1f77b4", capsize=4)
        ax.axvline(0, color="#888", linewidth=1, linestyle="--")
        ax.set_yticks(y, scores["column"].astype(str).str.removeprefix("score_").tolist())
        ax.invert_yaxis()
        ax.set_xlabel("mean score difference B − A (95% paired CI, prompts as the unit)")
        ax.set_title("Scores")
    if lat is not None:
        ax = axes.pop(0)
        ax.hist(lat * 1000.0, bins=min(40, max(5, lat.size // 2)), color="#ff7f0e", alpha=0.8)
        ax.axvline(0, color="#888", linewidth=1, linestyle="--")
        ax.set_xlabel("per-pair latency difference B − A (ms)")
        ax.set_ylabel("pairs")
        ax.set_title("Latency")
    fig.tight_layout()
    return base64.b64encode(png_bytes(fig, dpi=100)).decode("ascii")


def _examples_html(paired: PairedResults, examples: pd.DataFrame) -> str:
    if examples.empty:
        return "<p>A and B agree on every pair (same scores and same normalised output).</p>"
    parts = []
    for _, r in examples.iterrows():
        scores = ", ".join(
            f"{s.removeprefix('score_')}: {fmt(r.get(f'{s}_a'))} → {fmt(r.get(f'{s}_b'))}" for s in paired.scores
        )
        prompt = r.get("prompt_a", r.get("prompt_b", ""))
        reference = r.get("reference_a", r.get("reference_b", ""))

        def cell(side: str, r: pd.Series = r) -> str:
            status = r.get(f"status_{side}", "ok")
            text = r.get(f"output_{side}") if str(status) == "ok" else f"[error] {r.get(f'error_{side}', '')}"
            return f"<pre>{html.escape('' if text is None or (isinstance(text, float) and math.isnan(text)) else str(text))}</pre>"

        parts.append(
            "<table><tr><th colspan=2>"
            f"prompt_id {html.escape(str(r['prompt_id']))}, repeat {html.escape(str(r['repeat']))} — "
            f"{html.escape(scores)}</th></tr>"
            f"<tr><td colspan=2><b>prompt</b><pre>{html.escape(str(prompt if isinstance(prompt, str) else ''))}</pre>"
            f"<b>reference</b><pre>{html.escape(str(reference if isinstance(reference, str) else ''))}</pre></td></tr>"
            f"<tr><th>A: {html.escape(paired.label_a)}</th><th>B: {html.escape(paired.label_b)}</th></tr>"
            f"<tr><td>{cell('a')}</td><td>{cell('b')}</td></tr></table>"
        )
    return "".join(parts)


def _cost_html(metrics: pd.DataFrame) -> str:
    """The Cost section: each side's figures (per correct answer with its CI) and B/A; '' without costs."""
    cells, note = compare_cost_cells(metrics)
    if not cells:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in row) + "</tr>" for row in cells)
    return (
        f'<h2>Cost</h2><table id="cost"><thead><tr><th>cost</th><th>A</th><th>B</th><th>B/A</th></tr></thead>'
        f"<tbody>{body}</tbody></table><p class='small'>{html.escape(note)}</p>"
    )


def _judge_html(judgements: pd.DataFrame | None) -> str:
    if judgements is None or judgements.empty:
        return ""
    cols = [c for c in ("prompt_id", "repeat", "order", "verdict", "prefers", "error") if c in judgements.columns]
    return "<h2>Pairwise judge verdicts</h2>" + _table(judgements, cols)


def render_html(
    paired: PairedResults, metrics: pd.DataFrame, examples: pd.DataFrame, judgements: pd.DataFrame | None = None
) -> str:
    """The whole compare.html as one string (no external files)."""
    a, b = html.escape(paired.label_a), html.escape(paired.label_b)
    scores = metrics[metrics["metric"] == "score"]
    perf = metrics[metrics["metric"].str.match(r"^(latency|ttft|completion_tokens|error_rate)")]
    costs = metrics[metrics["metric"].isin(COST_METRICS)]
    other = metrics[
        ~metrics.index.isin(scores.index) & ~metrics.index.isin(perf.index) & ~metrics.index.isin(costs.index)
    ]
    png = difference_plot(paired, metrics)
    plot = f'<img alt="paired differences" src="data:image/png;base64,{png}">' if png else "<p>Nothing to plot.</p>"

    notes = [html.escape(w) for w in comparison_warnings(paired)]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>sentech-eval compare: {a} vs {b}</title><style>{_CSS}</style></head><body>"
        f"<h1>sentech-eval compare</h1><p>A = <b>{a}</b>, B = <b>{b}</b>. Differences are B − A; "
        "wins/ties/losses count pairs where B scored higher/equal/lower. "
        f"Rows paired on {html.escape(', '.join(paired.keys))}: {paired.n_pairs} pairs, "
        f"{paired.unpaired_a} unpaired rows of A, {paired.unpaired_b} of B.</p>"
        + "".join(f"<p class='small'>{n}</p>" for n in notes)
        + "<h2>Scores</h2>"
        + _table(
            scores,
            [
                "column",
                "value_a",
                "value_b",
                "diff",
                "ci_low",
                "ci_high",
                "wins",
                "ties",
                "losses",
                "p_value",
                "test",
                "ci_method",
                "n_pairs",
                "n_clusters",
                "note",
            ],
        )
        + "<h2>Paired differences</h2>"
        + plot
        + "<h2>Performance</h2>"
        + _table(perf, ["metric", "value_a", "value_b", "ratio", "diff", "n_pairs", "note"])
        + _cost_html(metrics)
        + "<h2>Pairing, agreement and judge</h2>"
        + _table(other, ["metric", "value", "ci_low", "ci_high", "n_pairs", "n_a", "n_b", "note"])
        + "<h2>Where A and B disagree most</h2>"
        + _examples_html(paired, examples)
        + _judge_html(judgements)
        + "</body></html>"
    )
