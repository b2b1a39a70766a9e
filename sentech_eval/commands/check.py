"""``sentech-eval check``: the CI regression gate. Exit 0 when every threshold holds, 1 when one
regressed, 2 for unusable input (a ``SentechEvalError``, printed as one sentence by the CLI).
The thresholds and their evaluation are ``analysis.gate``'s. The verdict is also left beside the
candidate's results as ``check.json`` (``sentech-eval export`` tags the run with it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sentech_eval.analysis.compare import compare, default_label, disagreements
from sentech_eval.analysis.gate import Thresholds, evaluate, load_thresholds_file, number, parse_score_drop
from sentech_eval.analysis.pairing import pair_results
from sentech_eval.engine.rundir import prepare_run_dir
from sentech_eval.errors import ConfigError
from sentech_eval.render.compare_html import render_html
from sentech_eval.render.junit import junit_xml
from sentech_eval.render.markdown import check_markdown

CHECK_FILE = "check.json"  # the verdict beside the candidate's results (read by `sentech-eval export`)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="CI regression gate: compare a candidate run with a baseline run (paired rows) and exit 1 "
        "when a threshold regresses, 2 when the input is unusable, 0 otherwise.",
    )
    parser.add_argument("--baseline", required=True, help="baseline results (file, run dir or sweep dir)")
    parser.add_argument("--candidate", required=True, help="candidate results (file, run dir or sweep dir)")
    parser.add_argument("--thresholds", metavar="FILE", help="YAML file with thresholds (the command line wins)")
    parser.add_argument(
        "--max-score-drop",
        action="append",
        default=[],
        metavar="SCORE=DROP",
        help="largest allowed absolute drop of a score's mean, e.g. exact_match=0.02 "
        "(repeatable; a bare number applies to every score)",
    )
    parser.add_argument(
        "--max-latency-increase",
        type=float,
        metavar="REL",
        help="largest allowed relative increase of latency p50 and p95, e.g. 0.10",
    )
    parser.add_argument(
        "--latency-slack-ms",
        type=float,
        metavar="MS",
        help="absolute allowance added to the latency limit (default: 0)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        metavar="SHARE",
        help="largest allowed share of candidate rows with status 'error', e.g. 0.01",
    )
    parser.add_argument(
        "--require-significance",
        action="store_true",
        default=None,
        help="a score drop counts only when its paired 95%% CI excludes zero (Newcombe for 0/1 "
        "scores, cluster-adjusted when a prompt has several pairs; the clustered bootstrap "
        "otherwise)",
    )
    parser.add_argument("--junit", metavar="PATH", help="write JUnit XML (one testcase per threshold)")
    parser.add_argument(
        "--summary", metavar="PATH", help="also append the markdown summary to PATH (e.g. $GITHUB_STEP_SUMMARY)"
    )
    parser.add_argument("--out", metavar="DIR", help="also write compare.parquet and compare.html into DIR")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--cluster",
        metavar="COLUMN",
        default=None,
        help="column whose pairs are one unit of evidence for the CIs (default: prompt_id)",
    )
    return parser


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """Thresholds from --thresholds FILE overlaid with the command-line options."""
    t = load_thresholds_file(args.thresholds) if args.thresholds else Thresholds()
    for spec in args.max_score_drop:
        name, value = parse_score_drop(spec)
        t.max_score_drop[name] = value
    if args.max_latency_increase is not None:
        t.max_latency_increase = number(args.max_latency_increase, "--max-latency-increase")
    if args.latency_slack_ms is not None:
        t.latency_slack_ms = number(args.latency_slack_ms, "--latency-slack-ms")
    if args.max_error_rate is not None:
        t.max_error_rate = number(args.max_error_rate, "--max-error-rate")
        if t.max_error_rate > 1:
            raise ConfigError(f"--max-error-rate is a share between 0 and 1, got {t.max_error_rate}.")
    if args.require_significance:
        t.require_significance = True
    if t.is_empty():
        raise ConfigError(
            "No thresholds given; pass --max-score-drop, --max-latency-increase, --max-error-rate or --thresholds FILE."
        )
    return t


def main(argv: list[str], prog: str = "sentech-eval check") -> int:
    """Run the gate; 0 pass, 1 regression (2 comes from SentechEvalError via the CLI)."""
    args = build_parser(prog).parse_args(argv)
    thresholds = thresholds_from_args(args)
    paired = pair_results(args.baseline, args.candidate, "baseline", "candidate")
    paired.label_a = f"{default_label(paired.a, 'baseline')} ({args.baseline})"
    paired.label_b = f"{default_label(paired.b, 'candidate')} ({args.candidate})"
    metrics = compare(paired, seed=args.seed, cluster=args.cluster)
    results = evaluate(paired, metrics, thresholds)
    summary = check_markdown(results, paired, thresholds)
    sys.stdout.write(summary)
    try:
        if args.summary:
            with open(args.summary, "a", encoding="utf-8") as fh:
                fh.write(summary + "\n")
        if args.junit:
            prepare_run_dir(Path(args.junit).parent, "--junit's directory")
            junit_xml(results, summary).write(args.junit, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot write {exc.filename} ({exc.strerror}); give --summary / --junit a writable file path."
        ) from None
    if args.out:
        out = prepare_run_dir(args.out, "--out")
        metrics.to_parquet(out / "compare.parquet", index=False)
        (out / "compare.html").write_text(render_html(paired, metrics, disagreements(paired)), encoding="utf-8")
    record_verdict(args.candidate, args.baseline, results)
    return 1 if any(not r.passed for r in results) else 0


def record_verdict(candidate: str, baseline: str, results: list) -> None:
    """Leave the verdict beside the candidate's results (``check.json``: passed, baseline, one entry per
    threshold), so ``sentech-eval export`` can tag the run as gated. A dir that cannot be written is skipped:
    the verdict is the exit code; this file is a convenience."""
    target = Path(candidate)
    target = target.parent if target.is_file() else target
    record = {
        "passed": all(r.passed for r in results),
        "baseline": str(baseline),
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "thresholds": [
            {"name": r.name, "threshold": r.threshold, "observed": r.observed, "passed": r.passed} for r in results
        ],
    }
    tmp = target / (CHECK_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, target / CHECK_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)
