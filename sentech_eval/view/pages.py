"""The viewer's pages as HTML, from digests (``view.digest``) and row pages (``view.rows``).

Runs, Run (summary, plots, rows), Row, Sweep, Compare and History; plus the pages for a run that is
gone and for a file that cannot be read. Every value from results is escaped (``view.html.esc``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sentech_eval.view.discovery import RunDir
from sentech_eval.view.html import esc, interval, is_missing, link, num, page, run_url, select, table
from sentech_eval.view.rows import SAMPLING_COLUMNS, RowFilter, preview

PAGE_SIZE = 50
STATE_TEXT = {
    "finished": "finished",
    "running": "running (rows still arriving)",
    "partial": "partial (results.parts/ left by a stopped run)",
    "empty": "no rows yet",
}


def _score_name(column: str) -> str:
    return column.removeprefix("score_")


def _best_index(digest: dict, score: str) -> int | None:
    summary = digest.get("summary") or []
    best, best_value = None, -math.inf
    for i, row in enumerate(summary):
        value = row.get(f"{score}_mean")
        if not is_missing(value) and value > best_value:
            best, best_value = i, value
    return best


def problems_html(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return f'<div class="problem" id="problems"><b>Some files cannot be read; showing what can be.</b><ul>{items}</ul></div>'


# --------------------------------------------------------------------------------------- runs
def runs_page(runs: list[tuple[RunDir, dict | None]], roots: Sequence[str], query: str = "") -> str:
    """One line per run or sweep; sortable, filterable, with checkboxes to compare."""
    scores: list[str] = []
    for _, digest in runs:
        for s in (digest or {}).get("scores", []):
            if s not in scores:
                scores.append(s)
    headers = ["", "run", "kind", "state", "dataset", "backend", "model", "when", "ok", "errors"]
    headers += [f"{_score_name(s)} (95% CI)" for s in scores]
    headers += ["latency p50 / p95 (s)", "cost", "git"]
    rows = []
    pending = False
    needle = query.lower()
    for run, digest in runs:
        href = run_url("sweep" if run.kind != "run" else "run", run.id)
        base = [
            f'<input type="checkbox" name="run" value="{esc(run.id)}" class="pick">',
            link(href, run.name, "run-link"),
            esc(run.kind),
            esc(STATE_TEXT.get(run.state, run.state)),
        ]
        if digest is None:
            pending = True
            cells = base + ['<span class="muted">computing…</span>'] + [""] * (len(headers) - 5)
        elif digest.get("status") != "ok":
            status = digest.get("status")
            text = {
                "damaged": "damaged: not readable Parquet",
                "foreign": "not sentech-eval results",
                "empty": "no rows",
            }.get(status, status)
            cells = base + [f'<span class="problem">{esc(text)}</span>'] + [""] * (len(headers) - 5)
        else:
            summary = digest.get("summary") or []
            score_cells = []
            for s in scores:
                index = _best_index(digest, s)
                if index is None:
                    score_cells.append("–")
                    continue
                row = summary[index]
                text = interval(row.get(f"{s}_mean"), row.get(f"{s}_ci_low"), row.get(f"{s}_ci_high"))
                if len(summary) > 1:
                    text += f" best of {len(summary)}: {digest['labels'][index]}"
                score_cells.append(esc(text))
            first = summary[0] if summary else {}
            latency = "–"
            if len(summary) == 1:
                latency = f"{num(first.get('latency_s_p50'))} / {num(first.get('latency_s_p95'))}"
            cost = digest.get("cost_usd")
            cells = (
                base
                + [
                    esc(", ".join(digest.get("dataset", []))),
                    esc(", ".join(digest.get("backend", []))),
                    esc(", ".join(digest.get("model", []))),
                    esc((digest.get("started_at") or "")[:19].replace("T", " ")),
                    str(digest.get("n_ok", "")),
                    str(digest.get("n_error", "")),
                ]
                + score_cells
                + [
                    esc(latency),
                    esc(f"${cost:.4f}" if cost is not None and not is_missing(cost) else "–"),
                    esc((digest.get("git_commit") or "")[:10]),
                ]
            )
        if needle and needle not in " ".join(str(c) for c in cells).lower():
            continue
        rows.append(cells)
    form = (
        '<form method="get" action="/" class="bar"><label>filter <input type="search" name="q" id="runs-filter" '
        f'value="{esc(query)}" placeholder="text in any column"></label> <button>filter</button></form>'
    )
    compare = (
        '<form method="get" action="/compare" id="compare-form">'
        + table(headers, rows, "runs", text_columns=(1, 2, 3, 4, 5, 6, 7))
        + '<p><button id="compare-button">compare selected</button> '
        '<span class="muted">tick two runs (or more: the first is A, each other one B)</span></p></form>'
    )
    where = ", ".join(roots)
    empty = (
        "" if runs else f'<p id="no-runs">No results.parquet found under {esc(where)} yet; new runs appear here.</p>'
    )
    return page("Runs", form + empty + compare, note=f"{len(runs)} runs and sweeps under {where}", refresh=pending)


# --------------------------------------------------------------------------------------- run
def summary_section(digest: dict) -> str:
    """The summary table of ``report``'s numbers, every column in a <details> below it."""
    summary = digest.get("summary") or []
    labels = digest.get("labels") or []
    scores = digest.get("scores") or []
    headers = ["configuration", "n", "ok", "error rate"] + [f"{_score_name(s)} (95% CI)" for s in scores]
    headers += ["latency p50 / p95 (s)", "ttft p50 (s)", "output tok/s", "cost"]
    rows = []
    for label, row in zip(labels, summary):
        rows.append(
            [esc(label), esc(row.get("n")), esc(row.get("n_ok")), esc(f"{100 * (row.get('error_rate') or 0):.1f}%")]
            + [esc(interval(row.get(f"{s}_mean"), row.get(f"{s}_ci_low"), row.get(f"{s}_ci_high"))) for s in scores]
            + [
                esc(f"{num(row.get('latency_s_p50'))} / {num(row.get('latency_s_p95'))}"),
                esc(num(row.get("ttft_s_p50"))),
                esc(num(row.get("output_tokens_per_s"), 1)),
                esc(f"${row['cost_usd']:.4f}" if not is_missing(row.get("cost_usd")) else "–"),
            ]
        )
    columns = [c for c in (summary[0].keys() if summary else []) if any(not is_missing(r.get(c)) for r in summary)]
    full = table(
        ["configuration"] + columns,
        (
            [esc(label)] + [esc(num(r.get(c), 4) if isinstance(r.get(c), float) else r.get(c)) for c in columns]
            for label, r in zip(labels, summary)
        ),
        "summary-full",
        text_columns=(0,),
    )
    notes = " · ".join(digest.get("interval_notes") or []) or "no scores"
    cache = digest.get("cache_note")
    return (
        "<h2>Summary</h2>"
        + table(headers, rows, "summary", text_columns=(0,))
        + f'<p class="muted">95% CIs with the prompt as the unit (as <code>sentech-eval report</code>): {esc(notes)}.</p>'
        + (f'<p id="cache-note">{esc(cache)}</p>' if cache else "")
        + "<details><summary>All summary columns (as in summary.parquet)</summary>"
        + full
        + "</details>"
    )


def plots_section(extras: dict | None) -> str:
    if extras is None:
        return '<h2>Plots</h2><p class="muted" id="plots-pending">Drawing the plots…</p>'
    images = "".join(f'<img src="{esc(uri)}" alt="{esc(alt)}">' for alt, uri in extras.get("plots", []))
    out = f'<h2>Plots</h2><div class="plots" id="plots">{images or "<p class=muted>nothing to draw</p>"}</div>'
    # the load and race sections come from render/ (render.load, render.race), which escape their values
    if extras.get("load_html"):
        out += f'<section id="load-section">{extras["load_html"]}</section>'
    if extras.get("race_html"):
        out += f'<section id="race-section">{extras["race_html"]}</section>'
    if extras.get("pass_at_html"):  # render.pass_at_k, which escapes its values
        out += f'<section id="pass-at-k-section">{extras["pass_at_html"]}</section>'
    return out


def row_filter_form(run: RunDir, digest: dict, flt: RowFilter, columns: Sequence[str]) -> str:
    scores = [c for c in (digest.get("scores") or []) if c in columns]
    fields = [
        select("status", [("", "any"), ("ok", "ok"), ("error", "error")], flt.status, "status"),
        select("score", [("", "—")] + [(s, _score_name(s)) for s in scores], flt.score, "score"),
        select(
            "outcome",
            [("", "any"), ("pass", "pass (= 1)"), ("fail", "fail (< 1)"), ("missing", "missing")],
            flt.outcome,
            "is",
        ),
    ]
    repeats = int(digest.get("repeats") or 1)
    if repeats > 1:
        fields.append(
            select(
                "repeat",
                [("", "any")] + [(str(r), str(r)) for r in range(repeats)],
                "" if flt.repeat is None else str(flt.repeat),
                "repeat",
            )
        )
    configs = digest.get("config_id") or []
    if len(configs) > 1:
        labels = dict(zip([r.get("config_id") for r in digest.get("summary", [])], digest.get("labels", [])))
        fields.append(
            select("config", [("", "any")] + [(c, labels.get(c, c)) for c in configs], flt.config_id, "config")
        )
    chosen = dict(flt.sampling)
    for column, values in (digest.get("sampling_values") or {}).items():
        fields.append(
            select(
                column,
                [("", "any")] + [(f"{v:g}", f"{v:g}") for v in values],
                f"{chosen[column]:g}" if column in chosen else "",
                column,
            )
        )
    fields.append(
        f'<label>text <input type="search" name="q" value="{esc(flt.text)}" placeholder="prompt, output, reference, error"></label>'
    )
    action = run_url("run", run.id)
    return (
        f'<form method="get" action="{esc(action)}" id="row-filter" class="bar">'
        + " ".join(fields)
        + ' <button id="apply-filter">apply</button> '
        + link(action + "#rows", "clear")
        + "</form>"
    )


def filter_params(flt: RowFilter) -> dict[str, Any]:
    """The query parameters that give ``flt`` back (for paging links)."""
    params: dict[str, Any] = {
        "status": flt.status,
        "score": flt.score,
        "outcome": flt.outcome,
        "repeat": "" if flt.repeat is None else flt.repeat,
        "config": flt.config_id,
        "q": flt.text,
    }
    for column, value in flt.sampling:
        params[column] = f"{value:g}"
    return params


def rows_section(
    run: RunDir, digest: dict, flt: RowFilter, total: int | None, offset: int, rows: list[dict], columns: list[str]
) -> str:
    scores = [c for c in (digest.get("scores") or []) if c in columns]
    varied = [c for c in SAMPLING_COLUMNS if c in (digest.get("sampling_values") or {})]
    headers = ["#", "prompt_id", "repeat"] + varied + ["status"] + [_score_name(s) for s in scores]
    headers += ["latency (s)", "output", "error"]
    body = []
    for row in rows:
        href = run_url("row", run.id, n=row["_row"])
        body.append(
            [link(href, row["_row"], "row-link"), esc(row.get("prompt_id")), esc(row.get("repeat"))]
            + [esc(row.get(c)) for c in varied]
            + [f'<span class="status-{esc(row.get("status"))}">{esc(row.get("status"))}</span>']
            + [esc(num(row.get(s), 2)) for s in scores]
            + [esc(num(row.get("latency_s")))]
            + [f"<pre>{esc(preview(row.get('output')))}</pre>", f"<pre>{esc(preview(row.get('error')))}</pre>"]
        )
    params = filter_params(flt)
    nav = []
    if offset > 0:
        nav.append(
            link(run_url("run", run.id, **params, offset=max(0, offset - PAGE_SIZE)) + "#rows", "← previous", "prev")
        )
    if total is None or offset + PAGE_SIZE < total:
        nav.append(link(run_url("run", run.id, **params, offset=offset + PAGE_SIZE) + "#rows", "next →", "next"))
    if total is None:  # a text search that found this page before reading every row group
        shown = f"rows {offset + 1}–{offset + len(rows)} of more (the search reads on as you page)"
    else:
        shown = f"rows {offset + 1}–{offset + len(rows)} of {total}" if rows else f"no rows match (of {total})"
    note = "filtered" if flt.active else "all rows"
    text_cols = tuple(range(len(headers) - 2, len(headers)))
    return (
        '<h2 id="rows">Rows</h2>'
        + row_filter_form(run, digest, flt, columns)
        + f'<p id="row-count">{esc(shown)} <span class="muted">({esc(note)})</span> {" ".join(nav)}</p>'
        + table(headers, body, "rows-table", text_columns=(1,) + text_cols)
    )


def run_header(run: RunDir, digest: dict | None, problems: Sequence[str]) -> str:
    parts = [
        f'<p class="muted" id="run-path">{esc(run.path)} — {esc(run.kind)}, {esc(STATE_TEXT.get(run.state, run.state))}'
    ]
    if run.kind != "run":
        parts.append(" · " + link(run_url("sweep", run.id), "sweep page", "sweep-link"))
    if digest and digest.get("git_commit"):
        parts.append(f" · git {esc(str(digest['git_commit'])[:10])}")
    parts.append("</p>")
    return "".join(parts) + problems_html(problems)


def run_page(
    run: RunDir,
    digest: dict | None,
    extras: dict | None,
    flt: RowFilter,
    total: int | None,
    offset: int,
    rows: list[dict],
    columns: list[str],
    problems: Sequence[str],
) -> str:
    if digest is None:
        return page(run.name, run_header(run, None, problems), refresh=True)
    status = digest.get("status")
    body = run_header(run, digest, problems)
    if status == "foreign":
        body += (
            '<p class="problem" id="foreign">This Parquet file is not sentech-eval results (no status or prompt_id '
            "column): no summary; its rows are shown as they are.</p>"
        )
        body += raw_rows_section(run, total, offset, rows, columns)
        return page(run.name, body)
    if status in ("damaged", "empty"):
        text = "No file of this run can be read." if status == "damaged" else "This run has no rows yet."
        return page(
            run.name, body + f'<p class="problem" id="unreadable">{esc(text)}</p>', refresh=run.state == "running"
        )
    body += (
        summary_section(digest) + plots_section(extras) + rows_section(run, digest, flt, total, offset, rows, columns)
    )
    return page(run.name, body, refresh=extras is None)


def raw_rows_section(run: RunDir, total: int | None, offset: int, rows: list[dict], columns: list[str]) -> str:
    shown = columns[:12]
    body = [[esc(row["_row"])] + [f"<pre>{esc(preview(row.get(c)))}</pre>" for c in shown] for row in rows]
    nav = []
    if offset > 0:
        nav.append(link(run_url("run", run.id, offset=max(0, offset - PAGE_SIZE)), "← previous", "prev"))
    if offset + PAGE_SIZE < total:
        nav.append(link(run_url("run", run.id, offset=offset + PAGE_SIZE), "next →", "next"))
    return f'<h2 id="rows">Rows</h2><p id="row-count">{esc(total)} rows {" ".join(nav)}</p>' + table(
        ["#"] + shown, body, "rows-table", text_columns=tuple(range(1, len(shown) + 1))
    )


# --------------------------------------------------------------------------------------- row
ROW_GROUPS = (
    ("Identity", ("prompt_id", "repeat", "run_id", "config_id", "backend", "model", "response_model", "dataset")),
    ("Sampling", SAMPLING_COLUMNS + ("seed",)),
    (
        "Timing",
        ("latency_s", "ttft_s", "tpot_s", "queue_s", "started_at", "scheduled_s", "send_lag_s", "e2e_from_schedule_s"),
    ),
    ("Tokens", ("prompt_tokens", "completion_tokens", "total_tokens", "usage_source")),
    ("Request", ("status", "http_status", "finish_reason", "attempts", "error", "arrival", "request_rate")),
    ("Cache and cost", ("cached", "cached_from", "cache_key", "messages_sha256", "cost_usd")),
)
LONG_TEXT = ("messages", "system", "prompt", "output", "reference")


def _value(value: Any) -> str:
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "\n\n".join(f"[{v.get('role', '?')}]\n{v.get('content', '')}" for v in value)
        if len(value) > 20:
            return (
                f"{len(value)} values: "
                + ", ".join(num(v, 4) if isinstance(v, float) else str(v) for v in value[:20])
                + ", …"
            )
        return ", ".join(num(v, 4) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return num(value, 4)
    return "" if value is None else str(value)


def row_page(run: RunDir, row: dict | None, number: int, total: int, problems: Sequence[str]) -> str:
    title = f"{run.name} · row {number}"
    back = link(run_url("run", run.id) + "#rows", "← rows of this run")
    if row is None:
        return page(
            title, back + problems_html(problems) + f'<p class="problem">There is no row {number} that can be read.</p>'
        )
    nav = []
    if number > 0:
        nav.append(link(run_url("row", run.id, n=number - 1), "← previous row", "prev"))
    if number + 1 < total:
        nav.append(link(run_url("row", run.id, n=number + 1), "next row →", "next"))
    shown: set[str] = {"_row", "_file"}
    sections = []
    for name in LONG_TEXT:
        if name in row and not is_missing(row[name]):
            sections.append(
                f'<h2>{esc(name)}</h2><pre class="block" id="row-{esc(name)}">{esc(_value(row[name]))}</pre>'
            )
        shown.add(name)
    scores = [c for c in row if c.startswith("score_") and not c.endswith("_detail")]
    score_rows = [
        [esc(_score_name(s)), esc(_value(row.get(s))), f"<pre>{esc(_value(row.get(s + '_detail')))}</pre>"]
        for s in scores
    ]
    shown.update(scores)
    shown.update(s + "_detail" for s in scores)
    if score_rows:
        sections.append(
            "<h2>Scores</h2>" + table(["score", "value", "detail"], score_rows, "row-scores", text_columns=(0, 2))
        )
    for heading, columns in ROW_GROUPS:
        present = [c for c in columns if c in row]
        shown.update(present)
        if present:
            cells = [[esc(c), f"<pre>{esc(_value(row[c]))}</pre>"] for c in present]
            sections.append(
                f"<h2>{esc(heading)}</h2>"
                + table(["column", "value"], cells, f"row-{heading.split()[0].lower()}", (0, 1))
            )
    if "itl_s" in row:
        shown.add("itl_s")
        sections.append("<h2>Inter-token latencies</h2>" + f"<pre>{esc(_value(row['itl_s']))}</pre>")
    rest = [c for c in row if c not in shown]
    if rest:
        cells = [[esc(c), f"<pre>{esc(_value(row[c]))}</pre>"] for c in rest]
        sections.append("<h2>Other columns</h2>" + table(["column", "value"], cells, "row-other", (0, 1)))
    head = f'<p>{back} {" ".join(nav)} <span class="muted">{esc(row.get("_file"))}</span></p>'
    return page(title, head + problems_html(problems) + "".join(sections))


# --------------------------------------------------------------------------------------- gone
def gone_page(path: str) -> str:
    return page(
        "Run not found",
        f'<p id="gone">The run dir {esc(path)} does not exist (any more): it was deleted or moved. '
        f"{link('/', 'Back to the runs')} (the list is rescanned).</p>",
    )


def not_found_page() -> str:
    return page("Not found", f'<p id="not-found">Nothing to show here. {link("/", "Back to the runs")}</p>')


def error_page(message: str) -> str:
    return page(
        "Something went wrong",
        f'<p class="problem" id="server-error">{esc(message)}</p><p>The viewer keeps running; '
        f"{link('/', 'back to the runs')}.</p>",
    )
