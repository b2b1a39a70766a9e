"""The Sweep page: score against each swept setting (with CIs), a heatmap over two settings the user
picks, score against cost and latency with the Pareto front, the race's rounds, the load table and
knee, and the configurations with links to their rows and to compare two of them."""

from __future__ import annotations

from sentech_eval.view.discovery import RunDir
from sentech_eval.view.html import esc, link, page, run_url, select, table
from sentech_eval.view.pages import STATE_TEXT, problems_html, summary_section


def sweep_page(run: RunDir, digest: dict | None, extras: dict | None, picked: dict | None, jobs: list[RunDir]) -> str:
    title = f"{run.name} (sweep)"
    head = (
        f'<p class="muted" id="run-path">{esc(run.path)} — {esc(run.kind)}, {esc(STATE_TEXT.get(run.state, run.state))}'
        f" · {link(run_url('run', run.id), 'rows and plots', 'rows-link')}</p>"
    )
    job_list = ""
    if jobs:
        items = "".join(
            f"<li>{link(run_url('run', j.id), j.name)} ({esc(STATE_TEXT.get(j.state, j.state))})</li>" for j in jobs
        )
        job_list = f'<h2>Jobs</h2><ul id="jobs">{items}</ul>'
    if digest is None:
        return page(title, head + job_list, refresh=True)
    if digest.get("status") != "ok":
        text = (
            "This sweep has no combined results.parquet yet; its jobs are listed below."
            if digest.get("status") == "empty"
            else "The sweep's results cannot be read as sentech-eval results."
        )
        return page(
            title, head + problems_html(digest.get("problems") or []) + f'<p class="problem">{esc(text)}</p>' + job_list
        )
    swept = digest.get("swept") or []
    scores = digest.get("scores") or []
    body = head + problems_html(digest.get("problems") or [])
    body += f'<p id="swept">Swept: {esc(", ".join(swept) or "nothing (one configuration)")}</p>'
    body += summary_section(digest)
    if extras is None:
        body += '<p class="muted" id="plots-pending">Drawing the plots…</p>'
    else:
        vs = [(alt, uri) for alt, uri in extras.get("plots", []) if " vs " in alt]
        imgs = "".join(f'<img src="{esc(uri)}" alt="{esc(alt)}">' for alt, uri in vs)
        body += f'<h2>Score against each swept setting</h2><div class="plots" id="vs-plots">{imgs}</div>'
    if picked:
        form = (
            f'<form method="get" action="{esc(run_url("sweep", run.id))}" id="heatmap-form" class="bar">'
            + select("score", [(s, s.removeprefix("score_")) for s in scores], picked["score"], "score")
            + select("x", [("", "—")] + [(p, p) for p in swept], picked["x"], "rows")
            + select("y", [("", "—")] + [(p, p) for p in swept], picked["y"], "columns")
            + ' <button id="draw-heatmap">draw</button></form>'
        )
        result = picked.get("result")
        body += "<h2>Heatmap</h2>" + form
        if result is None:
            body += '<p class="muted" id="heatmap-pending">Drawing…</p>'
        elif result.get("heatmap"):
            body += f'<div class="plots"><img id="heatmap" src="{esc(result["heatmap"])}" alt="heatmap"></div>'
        else:
            body += '<p class="muted" id="heatmap-none">Pick two different swept settings (a heatmap needs two).</p>'
        if result and result.get("tradeoffs"):
            body += '<h2>Score against cost and latency</h2><div class="plots" id="tradeoffs">'
            for t in result["tradeoffs"]:
                body += f'<figure><img src="{esc(t["uri"])}" alt="{esc(t["label"])}"><figcaption>Pareto front: {esc("; ".join(t["front"]))}</figcaption></figure>'
            body += "</div>"
    if extras:
        if extras.get("race_html"):
            body += f'<section id="race-section">{extras["race_html"]}</section>'
        if extras.get("load_html"):
            body += f'<section id="load-section">{extras["load_html"]}</section>'
        if extras.get("pass_at_html"):  # render.pass_at_k: pass@k against temperature, best per k
            body += f'<section id="pass-at-k-section">{extras["pass_at_html"]}</section>'
    summary = digest.get("summary") or []
    labels = digest.get("labels") or []
    configs = [(str(r.get("config_id")), label) for r, label in zip(summary, labels) if r.get("config_id")]
    if configs:
        rows = [
            [esc(label), link(run_url("run", run.id, config=cid) + "#rows", "rows", "config-rows")]
            for cid, label in configs
        ]
        body += "<h2>Configurations</h2>" + table(["configuration", ""], rows, "configs", text_columns=(0,))
        if len(configs) > 1:
            body += (
                '<form method="get" action="/compare" id="compare-configs" class="bar">'
                f'<input type="hidden" name="a" value="{esc(run.id)}"><input type="hidden" name="b" value="{esc(run.id)}">'
                + select("ca", configs, configs[0][0], "A")
                + select("cb", configs, configs[1][0], "B")
                + ' <button id="compare-configs-button">compare these two configurations</button></form>'
            )
    waiting = extras is None or (picked is not None and picked.get("result") is None)
    return page(title, body + job_list, refresh=waiting)
