"""``sentech-eval report PATH``: summary.parquet, a self-contained report.html and a markdown summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sentech_eval.analysis import slo as load_metrics
from sentech_eval.analysis.summary import load, pass_counts, pass_score, summarize
from sentech_eval.config import parse_pass_at
from sentech_eval.engine.results import RESULTS_FILE, read_metadata
from sentech_eval.engine.rundir import holding_run_dir, prepare_run_dir
from sentech_eval.errors import ConfigError
from sentech_eval.render.load import load_html, load_markdown
from sentech_eval.render.markdown import report_markdown
from sentech_eval.render.race import load_race, race_section_html
from sentech_eval.render.report_html import build_html

SUMMARY_FILE = "summary.parquet"
LOAD_FILE = "load.parquet"
PASS_AT_FILE = "pass_at_k.parquet"
REPORT_FILE = "report.html"


def output_dir(path: str | Path) -> Path:
    """Where the report goes: the directory itself, or the directory holding a results file."""
    path = Path(path)
    return path.parent if path.is_file() else path


def write_report(
    path: str | Path,
    out: str | Path | None = None,
    top: int = 10,
    cluster: str | None = None,
    slo: load_metrics.SLO | None = None,
    pass_at: list[int] | None = None,
) -> tuple[pd.DataFrame, Path, Path]:
    """Load, summarise and write summary.parquet and report.html (and load.parquet for a load run,
    see ``analysis.slo.is_load_run``; pass_at_k.parquet when pass@k is reported); returns (summary,
    summary path, html path).

    ``cluster`` names the column whose rows form one unit of evidence (default ``prompt_id``).
    ``pass_at``: the k of pass@k (None: the run's ``report.pass_at``, else 1, 5, 10, 100 up to the repeats).
    """
    df = load(path)
    if pass_at is None:
        pass_at = run_pass_at(path)
    summary = summarize(df, cluster=cluster, pass_at=pass_at)
    target = prepare_run_dir(Path(out) if out else output_dir(path), "--out")  # an existing file: one sentence
    with holding_run_dir(target, "report"):  # a run merging into this dir meanwhile would be overwritten
        return _write_report(df, summary, path, target, top, slo)


def _write_report(
    df: pd.DataFrame, summary: pd.DataFrame, path: str | Path, target: Path, top: int, slo: load_metrics.SLO | None
) -> tuple[pd.DataFrame, Path, Path]:
    pass_path = target / PASS_AT_FILE
    if "pass_at_score" in summary.columns:  # (config, prompt_id, n, c): what every pass@k here is made of
        pass_counts(df, pass_score(df)).to_parquet(pass_path, index=False)
    else:
        pass_path.unlink(missing_ok=True)
    summary_path, html_path = target / SUMMARY_FILE, target / REPORT_FILE
    load_section = ""
    slo = slo or load_metrics.SLO()
    if load_metrics.is_load_run(df, slo):
        load_metrics.check_slo(df, slo)
        load_table = load_metrics.load_summary(df, slo)
        load_table.to_parquet(target / LOAD_FILE, index=False)
        load_section = load_html(load_table, slo, load_metrics.load_knees(load_table))
    else:
        (target / LOAD_FILE).unlink(missing_ok=True)  # not a load run (any more): no stale table
    summary.to_parquet(summary_path, index=False)
    race = load_race(output_dir(path))  # a race sweep's dir: add its race section
    extra = [race_section_html(*race)] if race is not None else []
    html_path.write_text(
        build_html(df, summary, str(path), top=top, load_section=load_section, extra_sections=extra), encoding="utf-8"
    )
    return summary, summary_path, html_path


def run_pass_at(path: str | Path) -> list[int] | None:
    """The ``report.pass_at`` the run at PATH was started with (from its results' metadata), or None.

    A sweep's combined results carry no job config: its jobs' results are read then (the first that set it).
    """
    path = Path(path)
    candidates = [path] if path.is_file() else [path / RESULTS_FILE, *sorted(path.glob(f"*/{RESULTS_FILE}"))]
    for results in candidates:
        if not results.is_file():
            continue
        try:
            config = read_metadata(results).get("config") or {}
        except (OSError, ValueError):
            continue
        section = config.get("report") if isinstance(config, dict) else None
        value = section.get("pass_at") if isinstance(section, dict) else None
        try:
            parsed = parse_pass_at(value)
        except ConfigError:
            parsed = None
        if parsed:
            return parsed
    return None


def _pass_at_arg(text: str) -> list[int]:
    try:
        return parse_pass_at(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None, prog: str = "sentech-eval report") -> int:
    """Entry point of ``sentech-eval report``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Summarise results: writes summary.parquet (one row per configuration: n, error_rate, "
            "<score>_mean/_ci_low/_ci_high with 95% CIs clustered over prompts (mid-p exact or cluster-adjusted "
            "Wilson for 0/1 scores, the clustered bootstrap otherwise; the method is in <score>_ci_method), "
            "latency and TTFT percentiles, token counts, output_tokens_per_s (throughput over all requests) "
            "and decode_tokens_per_s_p50 (per-request decode speed)) and a self-contained report.html next "
            "to PATH, and prints a markdown summary on stdout."
        ),
    )
    parser.add_argument("path", help="a run dir, a sweep dir or a results.parquet file")
    parser.add_argument(
        "slo",
        nargs="*",
        metavar="slo.KEY=VALUE",
        help="service-level objectives for goodput: slo.ttft_s, slo.tpot_s, slo.latency_s (seconds) and "
        "slo.score=NAME (quality goodput counts requests within every limit that score 1 on score_NAME); "
        "adds a load table (load.parquet, a Load section with the saturation knee) to the report",
    )
    parser.add_argument("--out", help="directory to write summary.parquet and report.html (default: PATH's directory)")
    parser.add_argument(
        "--pass-at",
        type=_pass_at_arg,
        default=None,
        metavar="K,K,…",
        help="the k of pass@k (e.g. 1,10,100; default: the run's report.pass_at, else 1, 5, 10, 100 up to the "
        "samples per prompt); writes pass_at_<k> columns and pass_at_k.parquet (config, prompt_id, n, c)",
    )
    parser.add_argument("--top", type=int, default=10, help="how many worst-scoring examples to show (default 10)")
    parser.add_argument(
        "--cluster",
        metavar="COLUMN",
        default=None,
        help="column whose rows are one unit of evidence for the CIs (default: prompt_id; "
        "rows of one prompt, e.g. repeats, are never counted as independent)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    slo = load_metrics.parse_slo(args.slo)
    summary, summary_path, html_path = write_report(
        args.path, args.out, max(0, args.top), cluster=args.cluster, slo=slo, pass_at=args.pass_at
    )
    print(report_markdown(summary, str(args.path)))
    load_path = html_path.parent / LOAD_FILE
    if load_path.exists():
        table = pd.read_parquet(load_path)
        print(load_markdown(table, slo, load_metrics.load_knees(table)))
    written = (
        f"{summary_path}, {load_path} and {html_path}" if load_path.exists() else f"{summary_path} and {html_path}"
    )
    print(f"wrote {written}", file=sys.stderr)
    return 0
