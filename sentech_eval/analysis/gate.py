"""``sentech-eval check``: the CI regression gate over a paired comparison.

Thresholds (command line or a YAML file; the command line wins):

- ``max_score_drop``: per score, the largest allowed absolute drop of the mean (baseline − candidate).
- ``max_latency_increase``: the largest allowed relative increase of latency p50 and of p95;
  ``latency_slack_ms`` adds an absolute allowance on top (for millisecond latencies, where
  scheduling noise alone changes them by whole multiples): fail when
  ``candidate > baseline × (1 + max_latency_increase) + slack``.
- ``max_error_rate``: the largest allowed share of candidate rows with ``status="error"``.
- ``require_significance``: a score drop beyond its threshold counts only when the paired-bootstrap
  CI of (candidate − baseline) lies entirely below zero.

Exit codes: 0 every threshold holds, 1 at least one regressed, 2 unusable input (raised as a
``SentechEvalError`` and printed as one sentence by the CLI).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.pairing import PairedResults, pair_results

ALL_SCORES = "*"
_YAML_KEYS = {"max_score_drop", "max_latency_increase", "latency_slack_ms", "max_error_rate", "require_significance"}
_EPS = 1e-12  # float round-off allowance when comparing an observed change with its threshold


@dataclass
class Thresholds:
    """What the gate enforces; ``None`` means not checked."""

    max_score_drop: dict[str, float] = field(default_factory=dict)  # score name or "*" -> absolute drop
    max_latency_increase: float | None = None  # relative, e.g. 0.10 = +10%
    latency_slack_ms: float = 0.0  # absolute allowance added to the latency limit
    max_error_rate: float | None = None  # share of candidate rows
    require_significance: bool = False

    def is_empty(self) -> bool:
        return not self.max_score_drop and self.max_latency_increase is None and self.max_error_rate is None


@dataclass
class CheckResult:
    """The outcome of one threshold: one JUnit test case and one line of the summary."""

    name: str
    threshold: str
    baseline: float | None
    candidate: float | None
    observed: str
    passed: bool
    message: str
    unit: str = ""  # shown after the baseline and candidate values


def _number(value: object, what: str, minimum: float = 0.0) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}.") from None
    if not number >= minimum:
        raise ConfigError(f"{what} must be at least {minimum:g}, got {value!r}.")
    return number


def parse_score_drop(spec: str) -> tuple[str, float]:
    """``SCORE=0.02`` (or a bare ``0.02`` for every score) -> (score name or "*", 0.02)."""
    if "=" in spec:
        name, _, value = spec.partition("=")
        name = name.strip()
        if not name:
            raise ConfigError(f"--max-score-drop {spec!r} has no score name; write SCORE=0.02, e.g. exact_match=0.02.")
    else:
        name, value = ALL_SCORES, spec
    if name in ("all", "*"):
        name = ALL_SCORES
    return name, _number(value, f"The max score drop for {name!r}")


def load_thresholds_file(path: str | Path) -> Thresholds:
    """Read thresholds from YAML (keys: max_score_drop, max_latency_increase, max_error_rate, require_significance)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"The thresholds file {str(p)!r} does not exist.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"The thresholds file {str(p)!r} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The thresholds file {str(p)!r} must be a mapping with keys {', '.join(sorted(_YAML_KEYS))}.")
    unknown = sorted(set(data) - _YAML_KEYS)
    if unknown:
        raise ConfigError(
            f"The thresholds file {str(p)!r} has unknown key(s) {', '.join(map(str, unknown))}; "
            f"known keys: {', '.join(sorted(_YAML_KEYS))}."
        )
    t = Thresholds()
    drops = data.get("max_score_drop")
    if isinstance(drops, dict):
        for name, value in drops.items():
            key = ALL_SCORES if str(name) in ("all", "*") else str(name)
            t.max_score_drop[key] = _number(value, f"max_score_drop.{name} in {str(p)!r}")
    elif drops is not None:
        t.max_score_drop[ALL_SCORES] = _number(drops, f"max_score_drop in {str(p)!r}")
    if data.get("max_latency_increase") is not None:
        t.max_latency_increase = _number(data["max_latency_increase"], f"max_latency_increase in {str(p)!r}")
    if data.get("latency_slack_ms") is not None:
        t.latency_slack_ms = _number(data["latency_slack_ms"], f"latency_slack_ms in {str(p)!r}")
    if data.get("max_error_rate") is not None:
        t.max_error_rate = _number(data["max_error_rate"], f"max_error_rate in {str(p)!r}")
        if t.max_error_rate > 1:
            raise ConfigError(f"max_error_rate in {str(p)!r} is a share between 0 and 1, got {t.max_error_rate}.")
    t.require_significance = bool(data.get("require_significance", False))
    return t


def resolve_scores(requested: dict[str, float], paired: PairedResults) -> dict[str, float]:
    """Map the requested names (``exact_match`` or ``score_exact_match``, or "*") to common score columns."""
    out: dict[str, float] = {}
    if ALL_SCORES in requested:
        if not paired.scores:
            raise ResultsError("--max-score-drop applies to every score, but baseline and candidate share no score column.")
        for col in paired.scores:
            out[col] = requested[ALL_SCORES]
    for name, value in requested.items():
        if name == ALL_SCORES:
            continue
        col = name if name.startswith("score_") else f"score_{name}"
        if col not in paired.scores:
            where = ""
            if col in paired.only_in_a:
                where = " (the candidate lacks it)"
            elif col in paired.only_in_b:
                where = " (the baseline lacks it)"
            known = ", ".join(c.removeprefix("score_") for c in paired.scores) or "none"
            raise ConfigError(f"Unknown score {name!r}{where}; scores in both results: {known}.")
        out[col] = value
    return out


def evaluate(paired: PairedResults, metrics: pd.DataFrame, thresholds: Thresholds) -> list[CheckResult]:
    """Apply every threshold to the comparison metrics; one CheckResult per threshold."""
    results: list[CheckResult] = []
    by_metric = {(r["metric"], r["column"]): r for _, r in metrics.iterrows()}
    for col, max_drop in resolve_scores(thresholds.max_score_drop, paired).items():
        r = by_metric[("score", col)]
        name = f"score_drop[{col.removeprefix('score_')}]"
        if pd.isna(r["diff"]):
            # Errored rows carry no score: no scored pair at all is a regression, not unusable input.
            results.append(CheckResult(
                name, f"drop ≤ {max_drop:g}", None, None, "n/a", False,
                f"no pair has {col} on both sides (every paired row errored on one side?)",
            ))
            continue
        drop = -float(r["diff"])
        beyond = drop > max_drop + _EPS
        significant = float(r["ci_high"]) < 0
        failed = beyond and (significant or not thresholds.require_significance)
        ci = f"CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        if failed:
            msg = f"{col} dropped by {drop:.4f} (> {max_drop:g}), {ci}"
        elif beyond:
            msg = f"{col} dropped by {drop:.4f} (> {max_drop:g}) but the paired {ci} includes 0: not significant"
        else:
            msg = f"{col} changed by {float(r['diff']):+.4f} (allowed drop {max_drop:g}), {ci}"
        results.append(CheckResult(
            name, f"drop ≤ {max_drop:g}" + (" (significant only)" if thresholds.require_significance else ""),
            float(r["value_a"]), float(r["value_b"]), f"{float(r['diff']):+.4f}", not failed, msg,
        ))
    if thresholds.max_latency_increase is not None:
        limit = thresholds.max_latency_increase
        slack_s = thresholds.latency_slack_ms / 1000.0
        slack = f" + {thresholds.latency_slack_ms:g} ms" if slack_s else ""
        for q in ("p50", "p95"):
            r = by_metric.get((f"latency_{q}", "latency_s"))
            if r is None:
                raise ResultsError("--max-latency-increase needs latency_s on both sides for pairs where both succeeded; none found.")
            a, b = float(r["value_a"]), float(r["value_b"])
            ratio = b / a if a > 0 else (1.0 if b <= 0 else float("inf"))
            allowed = a * (1 + limit) + slack_s
            failed = b > allowed + _EPS
            msg = (f"latency {q} {a * 1000:.1f} ms → {b * 1000:.1f} ms (×{ratio:.2f}; allowed up to "
                   f"{allowed * 1000:.1f} ms = ×{1 + limit:.2f}{slack})")
            results.append(CheckResult(f"latency_{q}_increase", f"increase ≤ {limit:.0%}{slack}", a * 1000, b * 1000,
                                       f"{ratio - 1:+.1%}", not failed, msg, unit=" ms"))
    if thresholds.max_error_rate is not None:
        r = by_metric[("error_rate", "status")]
        rate = float(r["value_b"])
        failed = rate > thresholds.max_error_rate + _EPS
        msg = (f"{rate:.2%} of {int(r['n_b'])} candidate rows failed (allowed {thresholds.max_error_rate:.2%}; "
               f"baseline {float(r['value_a']):.2%})")
        results.append(CheckResult("error_rate", f"≤ {thresholds.max_error_rate:.2%}", float(r["value_a"]), rate,
                                   f"{rate:.2%}", not failed, msg))
    return results


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:,.1f}{unit}" if unit == " ms" else f"{value:.4g}{unit}"


def markdown_report(results: list[CheckResult], paired: PairedResults, thresholds: Thresholds) -> str:
    """The gate's verdict as markdown (fit for a PR comment or $GITHUB_STEP_SUMMARY)."""
    failed = [r for r in results if not r.passed]
    verdict = "❌ FAILED" if failed else "✅ PASSED"
    lines = [
        f"## sentech-eval check: {verdict}",
        "",
        f"{len(results) - len(failed)} of {len(results)} thresholds hold. Baseline: {paired.label_a}; "
        f"candidate: {paired.label_b}; {paired.n_pairs} pairs on {', '.join(paired.keys)}.",
    ]
    if paired.unpaired_a or paired.unpaired_b:
        lines.append(
            f"⚠️ Unpaired rows (not in the score checks): {paired.unpaired_a} of the baseline, "
            f"{paired.unpaired_b} of the candidate."
        )
    from sentech_eval.compare import comparison_warnings

    lines += [f"⚠️ {w}" for w in comparison_warnings(paired)]
    if thresholds.require_significance:
        lines.append("Score drops count only when the paired 95% CI of the difference excludes zero.")
    lines += ["", "| check | threshold | baseline | candidate | change | result |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        base, cand = _value_text(r.baseline, r.unit), _value_text(r.candidate, r.unit)
        lines.append(f"| {r.name} | {r.threshold} | {base} | {cand} | {r.observed} | {'pass' if r.passed else '**FAIL**'} |")
    if failed:
        lines += ["", "Regressions:"] + [f"- {r.name}: {r.message}" for r in failed]
    tolerated = [r for r in results if r.passed and "not significant" in r.message]
    if tolerated:
        lines += ["", "Drops beyond the threshold that are not significant (tolerated):"]
        lines += [f"- {r.name}: {r.message}" for r in tolerated]
    return "\n".join(lines) + "\n"


def junit_xml(results: list[CheckResult], summary: str) -> ET.ElementTree:
    """JUnit XML: one testcase per threshold, a <failure> for each regression."""
    failures = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", name="sentech-eval check", tests=str(len(results)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="sentech-eval check", tests=str(len(results)),
                          failures=str(failures), errors="0", skipped="0")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="sentech_eval.check", name=r.name)
        if r.passed:
            ET.SubElement(case, "system-out").text = r.message
        else:
            failure = ET.SubElement(case, "failure", message=r.message, type="regression")
            failure.text = f"{r.name}: {r.message} (threshold {r.threshold})"
    ET.SubElement(suite, "system-out").text = summary
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    return tree


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="CI regression gate: compare a candidate run with a baseline run (paired rows) and exit 1 "
                    "when a threshold regresses, 2 when the input is unusable, 0 otherwise.",
    )
    parser.add_argument("--baseline", required=True, help="baseline results (file, run dir or sweep dir)")
    parser.add_argument("--candidate", required=True, help="candidate results (file, run dir or sweep dir)")
    parser.add_argument("--thresholds", metavar="FILE", help="YAML file with thresholds (the command line wins)")
    parser.add_argument("--max-score-drop", action="append", default=[], metavar="SCORE=DROP",
                        help="largest allowed absolute drop of a score's mean, e.g. exact_match=0.02 "
                             "(repeatable; a bare number applies to every score)")
    parser.add_argument("--max-latency-increase", type=float, metavar="REL",
                        help="largest allowed relative increase of latency p50 and p95, e.g. 0.10")
    parser.add_argument("--latency-slack-ms", type=float, metavar="MS",
                        help="absolute allowance added to the latency limit (default: 0)")
    parser.add_argument("--max-error-rate", type=float, metavar="SHARE",
                        help="largest allowed share of candidate rows with status 'error', e.g. 0.01")
    parser.add_argument("--require-significance", action="store_true", default=None,
                        help="a score drop counts only when its paired 95%% CI excludes zero")
    parser.add_argument("--junit", metavar="PATH", help="write JUnit XML (one testcase per threshold)")
    parser.add_argument("--summary", metavar="PATH", help="also append the markdown summary to PATH "
                        "(e.g. $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--out", metavar="DIR", help="also write compare.parquet and compare.html into DIR")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    return parser


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """Thresholds from --thresholds FILE overlaid with the command-line options."""
    t = load_thresholds_file(args.thresholds) if args.thresholds else Thresholds()
    for spec in args.max_score_drop:
        name, value = parse_score_drop(spec)
        t.max_score_drop[name] = value
    if args.max_latency_increase is not None:
        t.max_latency_increase = _number(args.max_latency_increase, "--max-latency-increase")
    if args.latency_slack_ms is not None:
        t.latency_slack_ms = _number(args.latency_slack_ms, "--latency-slack-ms")
    if args.max_error_rate is not None:
        t.max_error_rate = _number(args.max_error_rate, "--max-error-rate")
        if t.max_error_rate > 1:
            raise ConfigError(f"--max-error-rate is a share between 0 and 1, got {t.max_error_rate}.")
    if args.require_significance:
        t.require_significance = True
    if t.is_empty():
        raise ConfigError("No thresholds given; pass --max-score-drop, --max-latency-increase, --max-error-rate "
                          "or --thresholds FILE.")
    return t


def main(argv: list[str], prog: str = "sentech-eval check") -> int:
    """Run the gate; 0 pass, 1 regression (2 comes from SentechEvalError via the CLI)."""
    from sentech_eval.compare import compare, default_label, disagreements

    args = build_parser(prog).parse_args(argv)
    thresholds = thresholds_from_args(args)
    paired = pair_results(args.baseline, args.candidate, "baseline", "candidate")
    paired.label_a = f"{default_label(paired.a, 'baseline')} ({args.baseline})"
    paired.label_b = f"{default_label(paired.b, 'candidate')} ({args.candidate})"
    metrics = compare(paired, seed=args.seed)
    results = evaluate(paired, metrics, thresholds)
    summary = markdown_report(results, paired, thresholds)
    sys.stdout.write(summary)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as fh:
            fh.write(summary + "\n")
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        junit_xml(results, summary).write(args.junit, encoding="utf-8", xml_declaration=True)
    if args.out:
        from sentech_eval.compare_html import render_html

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        metrics.to_parquet(out / "compare.parquet", index=False)
        (out / "compare.html").write_text(render_html(paired, metrics, disagreements(paired)), encoding="utf-8")
    return 1 if any(not r.passed for r in results) else 0
