"""HTML building blocks of the viewer's pages: escaping, the page frame, tables, links, forms.

Every value that comes from results (outputs, prompts, ids, model names, errors, paths) goes
through ``esc``; the pages load one stylesheet and one script from /static and carry no inline
script or style, so the Content-Security-Policy can forbid both.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe inside an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals, '–' when missing."""
    if is_missing(value):
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def interval(mean: Any, low: Any, high: Any) -> str:
    """``0.800 [0.650, 0.900]`` or '–'."""
    if is_missing(mean):
        return "–"
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def run_url(kind: str, run_id: str, **params: Any) -> str:
    """``/run/<id>``, ``/sweep/<id>``, ``/row/<id>`` … with the id's parts URL-quoted and the query given."""
    url = f"/{kind}/" + "/".join(quote(p, safe="") for p in run_id.split("/"))
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return url + ("?" + urlencode(query, doseq=True) if query else "")


def link(href: str, text: Any, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href)}"{klass}>{esc(text)}</a>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "", text_columns: Sequence[int] = ()
) -> str:
    """A table of pre-escaped cell HTML (``headers`` are plain text and escaped here)."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th{' class=text' if i in text_columns else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=text' if i in text_columns else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def select(name: str, options: Sequence[tuple[str, str]], chosen: str, label: str) -> str:
    """A labelled ``<select>`` (options are (value, text) pairs, escaped here)."""
    opts = "".join(
        f'<option value="{esc(v)}"{" selected" if str(v) == str(chosen) else ""}>{esc(t)}</option>' for v, t in options
    )
    return f'<label>{esc(label)} <select name="{esc(name)}">{opts}</select></label>'


def page(title: str, body: str, note: str = "", refresh: bool = False) -> str:
    """A whole page: the navigation, ``body`` (already HTML) and the static stylesheet and script.

    ``refresh`` marks the page as waiting for a digest: the script reloads it every two seconds.
    """
    waiting = '<p id="pending" class="muted">Computing… this page reloads when the numbers are ready.</p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · sentech-eval view</title>"
        '<link rel="stylesheet" href="/static/view.css"><script src="/static/view.js" defer></script></head>'
        '<body><nav><a href="/" id="nav-runs">Runs</a> <a href="/history" id="nav-history">History</a>'
        f'<span class="muted"> sentech-eval view</span></nav><main><h1>{esc(title)}</h1>'
        + (f'<p class="muted">{esc(note)}</p>' if note else "")
        + (waiting if refresh else "")
        + body
        + "</main></body></html>\n"
    )
