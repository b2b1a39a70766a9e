"""The History page: one dataset and configuration over time (e.g. a nightly ``check``'s runs), its
score with the CI band and its latency, run by run."""

from __future__ import annotations

from typing import Any

from sentech_eval.view.discovery import RunDir
from sentech_eval.view.html import esc, interval, link, num, page, run_url, select, table


def history_groups(listed: list[tuple[RunDir, dict | None]]) -> dict[str, dict[str, Any]]:
    """Every (dataset, configuration) seen in the runs' summaries, with one point per run."""
    groups: dict[str, dict[str, Any]] = {}
    for run, digest in listed:
        if not digest or digest.get("status") != "ok":
            continue
        for row, label in zip(digest.get("summary") or [], digest.get("labels") or []):
            key = f"{row.get('dataset')}|{row.get('config_id')}"
            group = groups.setdefault(
                key,
                {
                    "dataset": row.get("dataset"),
                    "config_id": row.get("config_id"),
                    "model": row.get("model"),
                    "backend": row.get("backend"),
                    "points": [],
                    "scores": [],
                },
            )
            for s in digest.get("scores") or []:
                if s not in group["scores"]:
                    group["scores"].append(s)
            group["points"].append({"run": run, "label": label, "row": row, "started_at": digest.get("started_at")})
    for group in groups.values():
        group["points"].sort(key=lambda p: p["started_at"] or "")
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]["points"]), kv[0])))


def history_page(groups: dict, chosen: str, score: str, plot: str | None, pending: bool) -> str:
    options = [
        (k, f"{g['dataset']} · {g['backend']}/{g['model']} · config {g['config_id']} ({len(g['points'])} runs)")
        for k, g in groups.items()
    ]
    group = groups.get(chosen)
    if not groups:
        return page("History", '<p id="no-history">No finished runs with a summary yet.</p>', refresh=pending)
    form = '<form method="get" action="/history" id="history-form" class="bar">' + select(
        "group", [("", "—")] + options, chosen, "dataset and configuration"
    )
    if group:
        form += select("score", [(s, s.removeprefix("score_")) for s in group["scores"]], score, "score")
    form += ' <button id="show-history">show</button></form>'
    body = form
    if group:
        rows = [
            [
                esc((p["started_at"] or "")[:19].replace("T", " ")),
                link(run_url("run", p["run"].id), p["run"].name),
                esc(p["row"].get("n")),
                esc(
                    interval(
                        p["row"].get(f"{score}_mean"), p["row"].get(f"{score}_ci_low"), p["row"].get(f"{score}_ci_high")
                    )
                ),
                esc(num(p["row"].get("latency_s_p50"))),
                esc(num(p["row"].get("latency_s_p95"))),
            ]
            for p in group["points"]
        ]
        if plot:
            body += f'<div class="plots"><img id="history-plot" src="{esc(plot)}" alt="history"></div>'
        elif score:
            body += '<p class="muted" id="history-pending">Drawing…</p>'
        body += table(
            ["started", "run", "n", f"{score.removeprefix('score_')} (95% CI)", "latency p50 (s)", "latency p95 (s)"],
            rows,
            "history",
            text_columns=(0, 1),
        )
    return page(
        "History",
        body,
        note="one dataset and configuration over time",
        refresh=pending or (bool(group) and not plot and bool(score)),
    )
