"""pass@k in the report: a table with 95% CIs, the pass@k-vs-temperature plot, the notes on unreported k.

The plot is the Codex paper's Fig. 5 picture (Chen et al. 2021): one line per k against the swept
sampling parameter (temperature when it is swept), the best setting of each k marked with a star.
Everything here reads the summary's ``pass_at_<k>`` columns (``analysis.summary``); nothing is
recomputed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sentech_eval.analysis.summary import config_labels, pass_at_list, pass_at_notes, swept_parameters
from sentech_eval.escaping import markdown_text

MAX_PANELS = 6


def fmt_fixed(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals, '–' for None/NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else f"{v:.{digits}f}"


def best_settings(summary: pd.DataFrame, param: str) -> dict[int, float]:
    """For each k, the value of ``param`` with the highest pass@k (over rows where it is reported)."""
    best = {}
    for k in pass_at_list(summary):
        values = summary[f"pass_at_{k}"].astype(float)
        if values.notna().any():
            best[k] = summary.loc[values.idxmax(), param]
    return best


def plot_parameter(summary: pd.DataFrame) -> str | None:
    """The parameter to plot pass@k against: temperature when it is swept, else the first swept sampling one."""
    swept = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset")]
    if "temperature" in swept:
        return "temperature"
    numeric = [p for p in swept if pd.api.types.is_numeric_dtype(summary[p].dropna().infer_objects())]
    return numeric[0] if numeric else None


def pass_at_k_plot(summary: pd.DataFrame) -> str | None:
    """pass@k (95% CI band) against the swept parameter, one line per k, the best setting of each k starred."""
    ks = [k for k in pass_at_list(summary) if summary[f"pass_at_{k}"].notna().any()]
    param = plot_parameter(summary)
    if not ks or param is None:
        return None
    from sentech_eval.render.plots import plt, to_data_uri

    others = [p for p in swept_parameters(summary) if p not in (param, "backend", "model", "dataset")]
    panels = list(summary.groupby(others, dropna=False, sort=True)) if others else [((), summary)]
    panels = panels[:MAX_PANELS]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 3.8), squeeze=False)
    for ax, (key, part) in zip(axes[0], panels):
        part = part.sort_values(param)
        x = part[param].to_numpy(dtype=float)
        for k in ks:
            y = part[f"pass_at_{k}"].to_numpy(dtype=float)
            if not np.isfinite(y).any():
                continue
            low = part[f"pass_at_{k}_ci_low"].to_numpy(dtype=float)
            high = part[f"pass_at_{k}_ci_high"].to_numpy(dtype=float)
            (line,) = ax.plot(x, y, marker="o", label=f"pass@{k}")
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            i = int(np.nanargmax(y))
            ax.plot(x[i], y[i], marker="*", markersize=16, color=line.get_color(), markeredgecolor="black")
            ax.annotate(f"{x[i]:g}", (x[i], y[i]), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        key = key if isinstance(key, tuple) else (key,)
        title = ", ".join(f"{o}={v}" for o, v in zip(others, key))
        ax.set_title(f"pass@k vs {param}" + (f" ({title})" if title else ""))
        ax.set_xlabel(param)
        ax.set_ylabel("pass@k (95% CI)")
        ax.set_ylim(-0.02, 1.1)  # room for the starred labels at 1.0
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return to_data_uri(fig)


def _table(summary: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame({"configuration": list(labels)})
    for k in pass_at_list(summary):
        table[f"pass@{k} (95% CI)"] = [
            "not reported" if value != value else f"{fmt_fixed(value)} [{fmt_fixed(low)}, {fmt_fixed(high)}]"
            for value, low, high in zip(
                summary[f"pass_at_{k}"], summary[f"pass_at_{k}_ci_low"], summary[f"pass_at_{k}_ci_high"]
            )
        ]
    return table


def _about(summary: pd.DataFrame) -> str:
    score = str(summary["pass_at_score"].dropna().iloc[0]) if "pass_at_score" in summary else "the score"
    problems = int(summary["pass_at_problems"].max()) if "pass_at_problems" in summary else 0
    return (
        f"pass@k of {score.removeprefix('score_')} over {problems} prompts: the unbiased estimator "
        "1 − C(n−c, k)/C(n, k) per prompt (n scored samples, c passed; Chen et al. 2021), averaged over prompts; "
        "95% CIs with the prompt as the unit."
    )


def pass_at_k_markdown(summary: pd.DataFrame) -> list[str]:
    """Markdown lines: the pass@k table, the best setting per k when swept, and the notes; [] without pass@k."""
    if not pass_at_list(summary):
        return []
    table = _table(summary, config_labels(summary))
    lines = ["", "### pass@k", "", "| " + " | ".join(table.columns) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(table.columns) - 1)) + "|")
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(markdown_text(v) for v in row) + " |")
    lines += ["", _about(summary)]
    param = plot_parameter(summary)
    if param is not None:
        best = best_settings(summary, param)
        if best:
            lines += ["", f"Best {param} per k: " + ", ".join(f"pass@{k}: {v:g}" for k, v in best.items()) + "."]
    lines += [f"- {markdown_text(note)}" for note in pass_at_notes(summary)]
    return lines


def pass_at_k_html(summary: pd.DataFrame) -> str:
    """The report's pass@k section (table, plot, notes), '' without pass@k columns."""
    if not pass_at_list(summary):
        return ""
    table = _table(summary, config_labels(summary))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    parts = [
        '<h2 id="pass-at-k">pass@k</h2>',
        f'<div class="scroll"><table id="pass-at-k-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>',
    ]
    parts.append(f'<p class="muted">{html.escape(_about(summary))}</p>')
    plot = pass_at_k_plot(summary)
    if plot:
        param = plot_parameter(summary)
        best = best_settings(summary, param)
        alt = html.escape(f"pass@k vs {param}", quote=True)
        parts.append(f'<div class="plots"><img src="{plot}" alt="{alt}"></div>')
        parts.append(
            "<p>Best "
            + html.escape(param)
            + " per k (starred): "
            + html.escape(", ".join(f"pass@{k}: {v:g}" for k, v in best.items()))
            + "</p>"
        )
    notes = pass_at_notes(summary)
    if notes:
        parts.append('<ul class="pass-at-notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)
