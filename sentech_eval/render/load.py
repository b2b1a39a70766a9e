"""The load table of ``sentech-eval report`` as markdown (stdout) and as the report's Load section."""

from __future__ import annotations

import html
import math

import pandas as pd

from sentech_eval.analysis.slo import METRICS, SLO
from sentech_eval.escaping import markdown_text
from sentech_eval.render import plots

TABLE_COLUMNS = (
    "config_id",
    "arrival",
    "request_rate",
    "n",
    "achieved_rps",
    "throughput_rps",
    "goodput_rps",
    "quality_goodput_rps",
    "slo_attainment",
    "send_lag_s_p99",
    "schedule_kept",
)
TEXT_COLUMNS = ("config_id", "arrival", "schedule_kept")
NOTE = (
    "achieved_rps: requests sent per second; throughput_rps: answers per second of the run; goodput_rps: "
    "requests meeting every SLO per second; quality_goodput_rps: those that also score 1; itl_s percentiles pool "
    "every inter-token gap; schedule_kept is false when the client's p99 send lag exceeded 10 ms or it sent "
    "below 98% of the requested rate."
)


def _columns(load: pd.DataFrame) -> list[str]:
    metrics = [f"{m}_p{q}" for m in METRICS for q in (50, 99) if f"{m}_p{q}" in load]
    return [c for c in TABLE_COLUMNS if c in load] + metrics


def _text(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in TEXT_COLUMNS or not isinstance(value, (int, float)):
        return str(value)
    if column == "n":
        return str(int(value))
    return f"{float(value):.4f}" if "_s_p" in column or column.endswith("_s") else f"{float(value):.2f}"


def _warnings(load: pd.DataFrame) -> list[str]:
    lines = []
    late = load[load["schedule_kept"] == False] if "schedule_kept" in load else load.iloc[:0]  # noqa: E712 (None: closed loop)
    for _, row in late.iterrows():
        lines.append(
            f"at request_rate={_text('request_rate', row.get('request_rate'))} the client fell behind its "
            f"schedule (achieved {row['achieved_rps']:.1f}/s, p99 send lag {1000 * row['send_lag_s_p99']:.1f} ms): "
            "these numbers describe the client, not the server."
        )
    return lines


def load_markdown(load: pd.DataFrame, slo: SLO, knees: dict) -> str:
    """The load table in markdown, each configuration's knee and any schedule warning."""
    cols = _columns(load)
    lines = [
        f"### Load (SLO: {slo.describe()})",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join([" ---: "] * len(cols)) + "|",
    ]
    lines += ["| " + " | ".join(markdown_text(_text(c, row[c])) for c in cols) + " |" for _, row in load.iterrows()]
    for config, rate in knees.items():
        lines.append(
            f"\nsaturation knee of {markdown_text(config)}: {rate:.1f} requests/s "
            "(p99 latency grows faster than the rate after it)"
        )
    lines += [f"\nwarning: {markdown_text(w)}" for w in _warnings(load)]
    return "\n".join(lines) + "\n"


def load_html(load: pd.DataFrame, slo: SLO, knees: dict) -> str:
    """The report's Load section: the knee, the curves against achieved rate, the table."""
    cols = _columns(load)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(c, row[c]))}</td>" for c in cols) + "</tr>"
        for _, row in load.iterrows()
    )
    knee_note = "".join(
        f"<p>Saturation knee of <code>{html.escape(str(c))}</code>: <b>{r:.1f} requests/s</b> "
        "(after it, p99 latency grows faster than the rate).</p>"
        for c, r in knees.items()
    )
    warnings = "".join(f'<p class="muted"><b>warning:</b> {html.escape(w)}</p>' for w in _warnings(load))
    uri = plots.load_curves(load, knees)
    img = f'<img src="{uri}" alt="latency and goodput against achieved rate">' if uri else ""
    return (
        f"<h2>Load (SLO: {html.escape(slo.describe())})</h2>{knee_note}{warnings}"
        f'<div class="plots">{img}</div><div class="scroll"><table id="load"><thead><tr>{head}</tr></thead>'
        f'<tbody>{body}</tbody></table></div><p class="muted">{html.escape(NOTE)}</p>'
    )
