"""``sentech-eval report PATH``: summary.parquet, a self-contained report.html and a markdown summary.

``summarize(results)`` gives one row per configuration (backend, model, dataset, every sampling
parameter) with ``n``, ``error_rate``, for each score ``<score>_mean`` / ``_ci_low`` / ``_ci_high``
(95% bootstrap clustered over prompts: repeats of one prompt are resampled together), latency
and TTFT percentiles, token counts and ``tokens_per_s``. Errored rows count in ``error_rate``
but never in a quality mean or a latency percentile.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sentech_eval import stats
from sentech_eval.errors import ResultsError
from sentech_eval.results import is_quality_score
from sentech_eval.types import SAMPLING_PARAMS

SAMPLING_COLUMNS = SAMPLING_PARAMS
CONFIG_COLUMNS = ("backend", "model", "dataset") + SAMPLING_COLUMNS
LATENCY_QS = (50, 90, 95, 99)
TTFT_QS = (50, 95)
SUMMARY_FILE = "summary.parquet"
REPORT_FILE = "report.html"
TEXT_LIMIT = 2000


# ---------------------------------------------------------------- loading

def load(path: str | Path) -> pd.DataFrame:
    """The results at PATH as one DataFrame (``sentech_eval.load_results``)."""
    from sentech_eval import load_results

    df = load_results(path)
    if df.empty:
        raise ResultsError(f"The results at {path} have no rows; nothing to report.")
    missing = [c for c in ("status", "output") if c not in df.columns]
    if missing:
        raise ResultsError(f"The results at {path} have no {missing[0]!r} column; is this a sentech-eval results file?")
    return df


def output_dir(path: str | Path) -> Path:
    """Where the report goes: the directory itself, or the directory holding a results file."""
    path = Path(path)
    return path.parent if path.is_file() else path


# ---------------------------------------------------------------- summary

def score_columns(df: pd.DataFrame) -> list[str]:
    """The quality score columns: numeric ``score_*`` columns that are not details or judge costs."""
    cols = []
    for col in df.columns:
        if not is_quality_score(col):
            continue
        if pd.api.types.is_numeric_dtype(df[col]) or df[col].isna().all():
            cols.append(col)
    return cols


def config_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration in these results."""
    if "config_id" in df.columns:
        return ["config_id"] + (["dataset"] if "dataset" in df.columns else [])
    return [c for c in CONFIG_COLUMNS if c in df.columns and c != "seed"]


def _describe(part: pd.DataFrame, col: str):
    """The configuration's value of ``col``: the value if unique, else the smallest (e.g. base seed)."""
    values = part[col].dropna().unique()
    if len(values) == 0:
        return None
    if len(values) == 1:
        return values[0]
    try:
        return min(values)
    except TypeError:
        return values[0]


def _wall_seconds(part: pd.DataFrame) -> float | None:
    """Seconds from the first request's start to the last one's end, if start times were recorded."""
    if "started_at" not in part or part["started_at"].isna().all():
        return None
    start = pd.to_datetime(part["started_at"], utc=True)
    end = start + pd.to_timedelta(part["latency_s"].fillna(0.0), unit="s")
    wall = (end.max() - start.min()).total_seconds()
    return wall if wall > 0 else None


def summarize(df: pd.DataFrame, confidence: float = 0.95, n_resamples: int = stats.DEFAULT_RESAMPLES,
              seed: int = 0) -> pd.DataFrame:
    """One row per configuration; see the module docstring for the columns."""
    keys = config_keys(df)
    scores = score_columns(df)
    has_ttft = "ttft_s" in df.columns and df["ttft_s"].notna().any()
    clusters_col = "prompt_id" if "prompt_id" in df.columns else None
    rows = []
    groups = df.groupby(keys, dropna=False, sort=False) if keys else [((), df)]
    for _, part in groups:
        ok = part[part["status"] == "ok"]
        row: dict = {}
        if "config_id" in part:
            row["config_id"] = _describe(part, "config_id")
        for col in CONFIG_COLUMNS:
            if col in part:
                row[col] = _describe(part, col)
        row["n"] = len(part)
        row["n_ok"] = len(ok)
        row["error_rate"] = stats.error_rate(part["status"].to_numpy())
        clusters = part[clusters_col].astype(str).to_numpy() if clusters_col else None
        status = part["status"].to_numpy()
        for col in scores:
            values = stats.quality_values(part[col].to_numpy(dtype=float, na_value=np.nan), status)
            mean, low, high = stats.bootstrap_ci(values, clusters=clusters, confidence=confidence,
                                                 n_resamples=n_resamples, seed=seed)
            row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = mean, low, high
            row[f"{col}_n"] = int(np.sum(~np.isnan(values)))
        latency = ok["latency_s"].to_numpy(dtype=float, na_value=np.nan) if "latency_s" in ok else np.array([])
        row["latency_s_mean"] = float(np.nanmean(latency)) if np.any(~np.isnan(latency)) else np.nan
        for q, v in stats.percentiles(latency, LATENCY_QS).items():
            row[f"latency_s_p{q}"] = v
        if has_ttft:
            for q, v in stats.percentiles(ok["ttft_s"].to_numpy(dtype=float, na_value=np.nan), TTFT_QS).items():
                row[f"ttft_s_p{q}"] = v
        completion = ok["completion_tokens"].to_numpy(dtype=float, na_value=np.nan) if "completion_tokens" in ok else np.array([np.nan])
        prompt_tokens = part["prompt_tokens"].to_numpy(dtype=float, na_value=np.nan) if "prompt_tokens" in part else np.array([np.nan])
        row["completion_tokens_mean"] = float(np.nanmean(completion)) if np.any(~np.isnan(completion)) else np.nan
        row["prompt_tokens_sum"] = int(np.nansum(prompt_tokens))
        completion_all = part["completion_tokens"].to_numpy(dtype=float, na_value=np.nan) if "completion_tokens" in part else np.array([np.nan])
        row["completion_tokens_sum"] = int(np.nansum(completion_all))
        wall = _wall_seconds(part) if "latency_s" in part else None
        if wall is None and "latency_s" in ok:
            busy = float(np.nansum(latency))
            wall = busy if busy > 0 else None
        row["wall_s"] = wall if wall is not None else np.nan
        row["tokens_per_s"] = row["completion_tokens_sum"] / wall if wall else np.nan
        row["requests_per_s"] = len(part) / wall if wall else np.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    sort_cols = [c for c in ("backend", "model", "dataset") + SAMPLING_COLUMNS if c in summary]
    if sort_cols:
        summary = summary.sort_values(sort_cols, na_position="first", kind="stable").reset_index(drop=True)
    return summary


def swept_parameters(summary: pd.DataFrame) -> list[str]:
    """Configuration columns that take more than one value across the summary rows."""
    return [c for c in CONFIG_COLUMNS if c in summary and summary[c].nunique(dropna=False) > 1]


def config_labels(summary: pd.DataFrame) -> list[str]:
    """A short label per summary row naming only what differs between configurations."""
    swept = swept_parameters(summary)
    if not swept:
        swept = [c for c in ("model",) if c in summary]
    labels = []
    for _, row in summary.iterrows():
        parts = [f"{c}={_fmt_value(row[c])}" if c in SAMPLING_COLUMNS else str(row[c]) for c in swept]
        labels.append(" ".join(parts) or "all")
    return labels


def _fmt_value(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


# ---------------------------------------------------------------- markdown

def _fmt_num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def markdown_summary(summary: pd.DataFrame, title: str) -> str:
    """A GitHub-flavoured markdown table of the summary (for stdout / a CI job summary)."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.startswith("score_") and c.endswith("_mean")]
    labels = config_labels(summary)
    header = ["configuration", "n", "errors"] + [s.removeprefix("score_") + " (95% CI)" for s in scores]
    header += ["latency p50 / p95 (s)", "tokens/s"]
    lines = [f"## sentech-eval report: {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for label, (_, row) in zip(labels, summary.iterrows()):
        cells = [label.replace("|", "\\|"), str(int(row["n"])), f"{100 * row['error_rate']:.1f}%"]
        for s in scores:
            cells.append(f"{_fmt_num(row[f'{s}_mean'])} [{_fmt_num(row[f'{s}_ci_low'])}, {_fmt_num(row[f'{s}_ci_high'])}]")
        cells.append(f"{_fmt_num(row['latency_s_p50'])} / {_fmt_num(row['latency_s_p95'])}")
        cells.append(_fmt_num(row["tokens_per_s"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

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
        text = _fmt_num(v, 4)
    else:
        text = "–" if v is None else str(v)
    cls = ' class="text"' if col in TEXT_COLUMNS else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f'<th{" class=text" if c in TEXT_COLUMNS else ""}>{html.escape(str(c))}</th>' for c in frame.columns)
    body = "".join("<tr>" + "".join(_cell(c, row[c]) for c in frame.columns) + "</tr>" for _, row in frame.iterrows())
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _summary_table_html(summary: pd.DataFrame, labels: Sequence[str]) -> str:
    """A compact table (scores with CI, latency, throughput) plus every summary column in a <details>."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.startswith("score_") and c.endswith("_mean")]
    compact = pd.DataFrame({"configuration": list(labels), "n": summary["n"].to_numpy(),
                            "error_rate": summary["error_rate"].to_numpy()})
    for s in scores:
        compact[s.removeprefix("score_") + " (95% CI)"] = [
            f"{_fmt_num(m)} [{_fmt_num(lo)}, {_fmt_num(hi)}]"
            for m, lo, hi in zip(summary[f"{s}_mean"], summary[f"{s}_ci_low"], summary[f"{s}_ci_high"])
        ]
    compact["latency p50 / p95 (s)"] = [f"{_fmt_num(a)} / {_fmt_num(b)}" for a, b in zip(summary["latency_s_p50"], summary["latency_s_p95"])]
    if "ttft_s_p50" in summary:
        compact["ttft p50 (s)"] = [_fmt_num(v) for v in summary["ttft_s_p50"]]
    compact["tokens/s"] = [_fmt_num(v, 1) for v in summary["tokens_per_s"]]
    full = summary.loc[:, [c for c in summary.columns if summary[c].notna().any()]].copy()
    full.insert(0, "configuration", list(labels))
    return (_table(compact, "summary")
            + "<details><summary>All summary columns (as in summary.parquet; empty columns hidden)</summary>"
            + _table(full, "summary-full") + "</details>")


def _short(text, limit: int = TEXT_LIMIT) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " …"


def worst_examples(df: pd.DataFrame, scores: Sequence[str], top: int = 10) -> pd.DataFrame:
    """The ok rows with the lowest mean over the [0, 1] scores (all scores if none is in [0, 1])."""
    ok = df[df["status"] == "ok"]
    unit = [s for s in scores if ok[s].dropna().between(0, 1).all() and ok[s].notna().any()]
    use = unit or [s for s in scores if ok[s].notna().any()]
    if not use or ok.empty:
        return ok.iloc[0:0]
    ranked = ok.assign(_rank=ok[use].astype(float).mean(axis=1, skipna=True)).dropna(subset=["_rank"])
    sort_cols = ["_rank"] + [c for c in ("prompt_id", "repeat") if c in ranked]
    return ranked.sort_values(sort_cols, kind="stable").head(top)


def _examples_html(examples: pd.DataFrame, scores: Sequence[str], label_of: dict) -> str:
    if examples.empty:
        return '<p class="muted">No scored rows.</p>'
    head = ["configuration", "prompt_id", "repeat"] + [s.removeprefix("score_") for s in scores] + ["prompt", "reference", "output"]
    rows = []
    for _, r in examples.iterrows():
        cells = [html.escape(label_of.get(r["_config"], "")), html.escape(str(r.get("prompt_id", ""))),
                 html.escape(str(r.get("repeat", "")))]
        first = f'<td class="text">{cells.pop(0)}</td>'
        for s in scores:
            detail = r.get(f"{s}_detail")
            title = f' title="{html.escape(str(detail), quote=True)}"' if isinstance(detail, str) else ""
            cells.append(f"<span{title}>{html.escape(_fmt_num(r[s]))}</span>")
        tds = first + "".join(f"<td>{c}</td>" for c in cells)
        for col in ("prompt", "reference", "output"):
            tds += f'<td class="text"><pre>{html.escape(_short(r.get(col)))}</pre></td>'
        rows.append(f"<tr>{tds}</tr>")
    th = "".join(f'<th{" class=text" if h in ("configuration", "prompt", "reference", "output") else ""}>{html.escape(h)}</th>' for h in head)
    return f'<div class="scroll"><table id="worst"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _errors_html(df: pd.DataFrame, label_of: dict) -> str:
    errors = df[df["status"] != "ok"]
    if errors.empty:
        return '<p class="muted">No errors.</p>'
    counts = (errors.assign(error=errors.get("error", pd.Series(dtype=str)).fillna("(no message)"))
              .groupby(["_config", "error"], sort=False).size().sort_values(ascending=False).head(20))
    rows = "".join(
        f'<tr><td class="text">{html.escape(label_of.get(cfg, ""))}</td><td class="text"><pre>{html.escape(_short(err, 500))}</pre></td><td>{n}</td></tr>'
        for (cfg, err), n in counts.items()
    )
    return f'<table id="errors"><thead><tr><th class="text">configuration</th><th class="text">error</th><th>rows</th></tr></thead><tbody>{rows}</tbody></table>'


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">' if uri else ""


def build_html(df: pd.DataFrame, summary: pd.DataFrame, title: str, top: int = 10) -> str:
    """The self-contained report page (plots inline as data: URIs, no external resources)."""
    from sentech_eval import plots

    labels = config_labels(summary)
    keys = config_keys(df)
    df = df.copy()
    df["_config"] = _config_index(df, summary, keys)
    label_of = dict(enumerate(labels))
    scores = score_columns(df)
    swept = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset") or summary[p].nunique() > 1]
    sections = [f"<h1>sentech-eval report</h1><p class=\"muted\">{html.escape(title)} — {len(df)} rows, "
                f"{len(summary)} configuration(s), scores: {html.escape(', '.join(s.removeprefix('score_') for s in scores) or 'none')}</p>"]
    sections.append("<h2>Summary</h2>" + _summary_table_html(summary, labels)
                    + '<p class="muted">CI columns: 95% percentile bootstrap of the mean, resampling prompts '
                    "(repeats of one prompt stay together). Errored rows count in error_rate only.</p>")
    score_imgs = []
    if swept:
        for score in scores:
            for param in swept:
                others = [p for p in swept if p != param]
                score_imgs.append(_img(plots.score_vs_param(summary, score, param, others), f"{score} vs {param}"))
    else:
        score_imgs.append(_img(plots.score_bars(summary, scores, labels), "scores"))
    sections.append('<h2>Scores</h2><div class="plots">' + "".join(score_imgs) + "</div>")
    if len(swept) >= 2 and scores:
        imgs = "".join(_img(plots.heatmap(summary, s, swept[0], swept[1]), f"{s} heatmap") for s in scores)
        sections.append(f'<h2>Heatmap: {html.escape(swept[0])} × {html.escape(swept[1])}</h2><div class="plots">{imgs}</div>')
    sections.append('<h2>Latency</h2><div class="plots">' + _img(plots.latency_cdf(df, label_of), "latency CDF") + "</div>")
    sections.append('<h2>Tokens</h2><div class="plots">' + _img(plots.token_histograms(df, label_of), "token histograms") + "</div>")
    sections.append(f"<h2>Worst-scoring examples (top {top})</h2>" + _examples_html(worst_examples(df, scores, top), scores, label_of))
    sections.append("<h2>Errors</h2>" + _errors_html(df, label_of))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sentech-eval report: {html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")


def _config_index(df: pd.DataFrame, summary: pd.DataFrame, keys: list[str]) -> pd.Series:
    """For each results row, the index of its summary row."""
    if not keys:
        return pd.Series(0, index=df.index)
    lookup = {}
    for i, row in summary.iterrows():
        lookup[tuple(_key(row[k]) for k in keys)] = i
    return pd.Series([lookup.get(tuple(_key(v) for v in vals), -1) for vals in df[keys].itertuples(index=False)], index=df.index)


def _key(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


# ---------------------------------------------------------------- CLI

def write_report(path: str | Path, out: str | Path | None = None, top: int = 10) -> tuple[pd.DataFrame, Path, Path]:
    """Load, summarise and write summary.parquet and report.html; returns (summary, summary path, html path)."""
    df = load(path)
    summary = summarize(df)
    target = Path(out) if out else output_dir(path)
    target.mkdir(parents=True, exist_ok=True)
    summary_path, html_path = target / SUMMARY_FILE, target / REPORT_FILE
    summary.to_parquet(summary_path, index=False)
    html_path.write_text(build_html(df, summary, str(path), top=top), encoding="utf-8")
    return summary, summary_path, html_path


def main(argv: list[str] | None = None, prog: str = "sentech-eval report") -> int:
    """Entry point of ``sentech-eval report``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Summarise results: writes summary.parquet (one row per configuration: n, error_rate, "
            "<score>_mean/_ci_low/_ci_high with 95% bootstrap CIs clustered over prompts, latency and "
            "TTFT percentiles, token counts, tokens_per_s) and a self-contained report.html next to PATH, "
            "and prints a markdown summary on stdout."
        ),
    )
    parser.add_argument("path", help="a run dir, a sweep dir or a results.parquet file")
    parser.add_argument("--out", help="directory to write summary.parquet and report.html (default: PATH's directory)")
    parser.add_argument("--top", type=int, default=10, help="how many worst-scoring examples to show (default 10)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    summary, summary_path, html_path = write_report(args.path, args.out, max(0, args.top))
    print(markdown_summary(summary, str(args.path)))
    print(f"wrote {summary_path} and {html_path}", file=sys.stderr)
    return 0
