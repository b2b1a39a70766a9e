"""``sentech-eval report PATH``: summary.parquet, a self-contained report.html and a markdown summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sentech_eval.analysis.summary import load, summarize
from sentech_eval.render.markdown import report_markdown
from sentech_eval.render.report_html import build_html

SUMMARY_FILE = "summary.parquet"
REPORT_FILE = "report.html"


def output_dir(path: str | Path) -> Path:
    """Where the report goes: the directory itself, or the directory holding a results file."""
    path = Path(path)
    return path.parent if path.is_file() else path


def write_report(path: str | Path, out: str | Path | None = None, top: int = 10,
                 cluster: str | None = None) -> tuple[pd.DataFrame, Path, Path]:
    """Load, summarise and write summary.parquet and report.html; returns (summary, summary path, html path).

    ``cluster`` names the column whose rows form one unit of evidence (default ``prompt_id``).
    """
    df = load(path)
    summary = summarize(df, cluster=cluster)
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
            "<score>_mean/_ci_low/_ci_high with 95% CIs clustered over prompts (Wilson or cluster-adjusted "
            "Wilson for 0/1 scores, the clustered bootstrap otherwise; the method is in <score>_ci_method), "
            "latency and TTFT percentiles, token counts, output_tokens_per_s (throughput over all requests) "
            "and decode_tokens_per_s_p50 (per-request decode speed)) and a self-contained report.html next "
            "to PATH, and prints a markdown summary on stdout."
        ),
    )
    parser.add_argument("path", help="a run dir, a sweep dir or a results.parquet file")
    parser.add_argument("--out", help="directory to write summary.parquet and report.html (default: PATH's directory)")
    parser.add_argument("--top", type=int, default=10, help="how many worst-scoring examples to show (default 10)")
    parser.add_argument("--cluster", metavar="COLUMN", default=None,
                        help="column whose rows are one unit of evidence for the CIs (default: prompt_id; "
                             "rows of one prompt, e.g. repeats, are never counted as independent)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    summary, summary_path, html_path = write_report(args.path, args.out, max(0, args.top), cluster=args.cluster)
    print(report_markdown(summary, str(args.path)))
    print(f"wrote {summary_path} and {html_path}", file=sys.stderr)
    return 0
