"""The race section of report.html: each cell's interval narrowing over the rounds, where each was cut.

Input: ``race.parquet`` (one row per round × cell, written by the race sweeper) and ``race.json``
(settings, winner, spend). Output: an HTML fragment with a plot (data URI) and a table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from sentech_eval.render.plots import plt, to_data_uri

RACE_FILE = "race.parquet"
RACE_JSON = "race.json"


def load_race(directory: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """``race.parquet`` and ``race.json`` of a sweep dir, or None when it holds no race."""
    path = Path(directory) / RACE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads((Path(directory) / RACE_JSON).read_text())
    except (OSError, ValueError):
        record = {}
    return pd.read_parquet(path), record


def race_plot(race: pd.DataFrame, score: str) -> str | None:
    """Mean and interval of every cell at each round's prompt count; an x where a cell was cut."""
    rated = race.dropna(subset=["mean"])
    if rated.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.8))
    cells = sorted(rated["cell"].unique())
    offsets = {c: (i - (len(cells) - 1) / 2) * 0.012 for i, c in enumerate(cells)}
    for cell in cells:
        part = rated[rated["cell"] == cell].sort_values("round")
        x = part["n"] * (1 + offsets[cell])  # spread the cells a little so the bars do not overlap
        final = part.iloc[-1]
        style = "-" if final["status"] == "winner" else ":"
        line = ax.errorbar(
            x,
            part["mean"],
            yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
            fmt=style,
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=2.2 if style == "-" else 1,
            label=f"{cell}: {final['overrides']}"[:60],
        )
        if final["status"] == "eliminated":
            ax.plot([x.iloc[-1]], [final["mean"]], marker="x", markersize=9, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("prompts per cell (round)")
    ax.set_ylabel(f"{score.removeprefix('score_')} (anytime interval)")
    ax.set_title("Race: intervals by round (x = cut, solid = winner)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_data_uri(fig)


def race_section_html(race: pd.DataFrame, record: dict[str, Any]) -> str:
    """The ``<h2>Race</h2>`` section: winner line, plot, and each cell's last round."""
    score = str(record.get("score") or "score")
    parts = ["<h2>Race</h2>"]
    if record.get("line"):
        parts.append(f"<p><b>{html.escape(str(record['line']).removeprefix('sentech-eval race: '))}</b></p>")
    settings = record.get("settings") or {}
    if settings:
        parts.append(
            '<p class="muted">'
            + html.escape(
                f"confidence {settings.get('confidence')}, min_effect {settings.get('min_effect')}, keep {settings.get('keep')}, "
                f"rounds {record.get('rounds')} prompts (start {settings.get('start')}, growth {settings.get('growth')}), "
                f"dataset.shuffle_seed {record.get('shuffle_seed')}. Intervals are anytime-valid (betting confidence "
                "sequences); a cell is cut when its paired difference to the leader is surely above 0, the error "
                "split over the cells (docs/sweeps.md)."
            )
            + "</p>"
        )
    uri = race_plot(race, score)
    if uri:
        parts.append(f'<div class="plots"><img src="{uri}" alt="race intervals"></div>')
    last = (
        race.sort_values("round")
        .groupby("cell", sort=True)
        .tail(1)
        .sort_values(["status", "mean"], ascending=[False, False])
    )
    head = (
        '<tr><th>cell</th><th class="text">overrides</th><th>last round</th><th>prompts</th><th>mean</th>'
        '<th>interval</th><th>leader − cell</th><th>requests</th><th class="text">status</th>'
        '<th class="text">reason</th></tr>'
    )
    rows = []
    for _, r in last.iterrows():
        interval = "" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        diff = (
            ""
            if pd.isna(r["diff_to_leader"])
            else f"{r['diff_to_leader']:.3f} [{r['diff_low']:.3f}, {r['diff_high']:.3f}]"
        )
        mean = "" if pd.isna(r["mean"]) else f"{r['mean']:.3f}"
        rows.append(
            f'<tr><td>{r["cell"]}</td><td class="text">{html.escape(str(r["overrides"]))}</td><td>{r["round"]}</td>'
            f"<td>{r['n']}</td><td>{mean}</td><td>{interval}</td><td>{diff}</td><td>{r['requests']}</td>"
            f'<td class="text">{html.escape(str(r["status"]))}</td><td class="text">{html.escape(str(r["reason"]))}</td></tr>'
        )
    parts.append(f'<table id="race"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>')
    return "".join(parts)
