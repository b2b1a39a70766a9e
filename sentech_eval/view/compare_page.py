"""The Compare page: ``analysis.compare``'s paired statistics of two runs (or two configurations of a
sweep) and the rows whose pass/fail flipped, both outputs side by side, filterable and paged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sentech_eval.view.discovery import RunDir
from sentech_eval.view.html import esc, is_missing, link, num, page, run_url, select, table

FLIPS_PER_PAGE = 50
DIRECTIONS = {"pass-fail": "pass→fail", "fail-pass": "fail→pass"}  # query value -> shown


@dataclass(frozen=True)
class FlipFilter:
    direction: str = ""
    score: str = ""
    text: str = ""


def flip_filter(query) -> FlipFilter:
    direction = query.get("direction", "")
    return FlipFilter(
        direction=direction if direction in DIRECTIONS else "",
        score=query.get("fscore", "")[:200],
        text=query.get("q", "")[:200],
    )


def _side(run: RunDir, config: str) -> str:
    return run.name + (f" (config {config})" if config else "")


def _p(value: Any) -> str:
    if is_missing(value):
        return "–"
    return f"{value:.3g}"


def metrics_table(metrics: list[dict]) -> str:
    score_rows = []
    other_rows = []
    for m in metrics:
        if m["metric"] == "score":
            ci = "" if is_missing(m.get("ci_low")) else f" [{num(m['ci_low'])}, {num(m['ci_high'])}]"
            score_rows.append(
                [
                    esc(str(m["column"]).removeprefix("score_")),
                    esc(num(m.get("value_a"))),
                    esc(num(m.get("value_b"))),
                    esc(num(m.get("diff")) + ci),
                    esc(_p(m.get("p_value"))),
                    esc(m.get("test") or m.get("ci_method") or ""),
                    esc(f"{m.get('wins')}/{m.get('ties')}/{m.get('losses')}" if m.get("wins") is not None else "–"),
                    esc(m.get("n_pairs")),
                    esc(m.get("note") or ""),
                ]
            )
        else:
            value = m.get("value")
            other_rows.append(
                [
                    esc(m["metric"]),
                    esc(m.get("column") or ""),
                    esc(num(value, 4) if not is_missing(value) else "–"),
                    esc(num(m.get("value_a"), 4)),
                    esc(num(m.get("value_b"), 4)),
                    esc(num(m.get("ratio"), 3)),
                    esc(m.get("note") or ""),
                ]
            )
    return (
        "<h2>Scores (B − A, paired 95% CI)</h2>"
        + table(
            ["score", "A", "B", "B − A [95% CI]", "p", "test", "wins/ties/losses (B)", "pairs", "note"],
            score_rows,
            "compare-scores",
            text_columns=(0, 5, 8),
        )
        + "<h2>Pairing, latency, tokens, errors, cost, agreement</h2>"
        + table(["metric", "column", "value", "A", "B", "B/A", "note"], other_rows, "compare-other", (0, 1, 6))
    )


def flips_section(result: dict, flt: FlipFilter, offset: int, base_params: dict[str, str]) -> str:
    flips = result.get("flips") or []
    scores = sorted({f["score"] for f in flips})
    needle = flt.text.lower()
    chosen = [
        f
        for f in flips
        if (not flt.direction or f["direction"] == flt.direction)
        and (not flt.score or f["score"] == flt.score)
        and (
            not needle
            or any(
                needle in str(f.get(k) or "").lower()
                for k in ("prompt_id", "prompt", "output_a", "output_b", "reference")
            )
        )
    ]
    form = (
        '<form method="get" action="/compare" id="flip-filter" class="bar">'
        + "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in base_params.items() if v)
        + select("direction", [("", "both")] + list(DIRECTIONS.items()), flt.direction, "flipped")
        + select("fscore", [("", "any")] + [(s, s.removeprefix("score_")) for s in scores], flt.score, "score")
        + f'<label>text <input type="search" name="q" value="{esc(flt.text)}"></label> <button id="apply-flips">apply</button></form>'
    )
    shown = chosen[offset : offset + FLIPS_PER_PAGE]
    label_a, label_b = result.get("label_a", "A"), result.get("label_b", "B")
    rows = []
    for f in shown:
        keys = " ".join(f"{k}={v}" for k, v in (f.get("keys") or {}).items())
        rows.append(
            [
                esc(f["prompt_id"]) + (f' <span class="muted">{esc(keys)}</span>' if keys else ""),
                esc(f["repeat"]),
                esc(f["score"].removeprefix("score_")),
                f'<span class="flip">{esc(f["direction"])}</span>',
                f"<pre>{esc(f.get('prompt') or '')}</pre>",
                f"<pre>{esc(f.get('reference') or '')}</pre>",
                f'<pre class="out-a">{esc(f.get("output_a") or "")}</pre>',
                f'<pre class="out-b">{esc(f.get("output_b") or "")}</pre>',
            ]
        )
    nav = []
    params = {**base_params, "direction": flt.direction, "fscore": flt.score, "q": flt.text}
    query = "&".join(f"{k}={esc_q(v)}" for k, v in params.items() if v)
    if offset > 0:
        nav.append(link(f"/compare?{query}&offset={max(0, offset - FLIPS_PER_PAGE)}", "← previous", "prev"))
    if offset + FLIPS_PER_PAGE < len(chosen):
        nav.append(link(f"/compare?{query}&offset={offset + FLIPS_PER_PAGE}", "next →", "next"))
    counts = {d: sum(1 for f in flips if f["direction"] == d) for d in DIRECTIONS.values()}
    return (
        f'<h2 id="flips">Flipped rows</h2><p id="flip-counts">{counts["pass→fail"]} pass→fail, '
        f"{counts['fail→pass']} fail→pass (per score; A = {esc(label_a)}, B = {esc(label_b)}). "
        f"Showing {len(shown)} of {len(chosen)}. {' '.join(nav)}</p>"
        + form
        + table(
            ["prompt_id", "repeat", "score", "flip", "prompt", "reference", f"A: {label_a}", f"B: {label_b}"],
            rows,
            "flips-table",
            text_columns=(0, 4, 5, 6, 7),
        )
    )


def esc_q(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def compare_page(
    a: RunDir,
    ca: str,
    b: RunDir,
    cb: str,
    result: dict | None,
    flt: FlipFilter,
    offset: int,
    others: list[RunDir],
) -> str:
    title = "Compare"
    head = (
        f'<p id="compare-sides">A: {link(run_url("run", a.id), _side(a, ca))} · '
        f"B: {link(run_url('run', b.id), _side(b, cb))} · "
        f"{link(f'/compare?a={esc_q(b.id)}&b={esc_q(a.id)}&ca={esc_q(cb)}&cb={esc_q(ca)}', 'swap A and B')}</p>"
    )
    if others:
        head += (
            "<p>Also: "
            + " · ".join(link(f"/compare?a={esc_q(a.id)}&b={esc_q(o.id)}", f"A vs {o.name}") for o in others)
            + "</p>"
        )
    if result is None:
        return page(title, head, refresh=True)
    if result.get("error"):
        return page(title, head + f'<p class="problem" id="compare-error">{esc(result["error"])}</p>')
    warnings = "".join(f"<li>{esc(w)}</li>" for w in result.get("warnings") or [])
    body = head + (f'<ul class="problem" id="compare-warnings">{warnings}</ul>' if warnings else "")
    body += (
        f'<p class="muted">{esc(result.get("n_pairs"))} pairs on {esc(", ".join(result.get("keys") or []))}; '
        "the same numbers as <code>sentech-eval compare</code> (analysis/compare).</p>"
    )
    body += metrics_table(result.get("metrics") or [])
    body += flips_section(result, flt, offset, {"a": a.id, "b": b.id, "ca": ca, "cb": cb})
    return page(title, body)
