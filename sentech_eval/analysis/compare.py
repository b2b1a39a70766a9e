"""``sentech-eval compare A B``: paired comparison of two results (e.g. remote vs local).

For every score present on both sides: mean A, mean B, difference B − A with a paired-bootstrap
95% CI (clustered by prompt when there are repeats), wins/ties/losses from B's side and an exact
McNemar p-value when both sides are pass/fail (0/1). For performance: latency and TTFT p50/p95
ratios B/A, completion-token ratio and error rates. Output agreement: the share of pairs whose
outputs are identical after normalisation (case, whitespace, punctuation). With ``--judge`` a
backend also says which output it prefers (see ``pairwise_judge``).

Writes ``compare.parquet`` (one row per metric) and ``compare.html`` into ``--out`` (default: the
current directory) and prints a markdown summary. ``check_main`` (the CI gate) lives in ``gate``.
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from sentech_eval.errors import ConfigError
from sentech_eval.pairing import PairedResults, pair_results

METRIC_COLUMNS = [
    "metric", "column", "value", "value_a", "value_b", "diff", "ratio", "ci_low", "ci_high", "p_value",
    "n_pairs", "wins", "ties", "losses", "n_a", "n_b", "note",
]
_INT_COLUMNS = ("n_pairs", "wins", "ties", "losses", "n_a", "n_b")
_FLOAT_COLUMNS = ("value", "value_a", "value_b", "diff", "ratio", "ci_low", "ci_high", "p_value")

_WS = re.compile(r"\s+")


def normalise_output(text: object) -> str | None:
    """Case-folded text without punctuation and with single spaces; None for a missing output."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
    return _WS.sub(" ", s).strip()


def _ok(pairs: pd.DataFrame, side: str) -> pd.Series:
    col = f"status_{side}"
    if col not in pairs.columns:
        return pd.Series(True, index=pairs.index)
    return pairs[col].astype(str).eq("ok")


def _is_binary(values: np.ndarray) -> bool:
    return values.size > 0 and bool(np.isin(values, (0.0, 1.0)).all())


def _row(metric: str, column: str | None = None, **values) -> dict:
    row = {name: None for name in METRIC_COLUMNS}
    row.update(metric=metric, column=column, **values)
    return row


def score_rows(paired: PairedResults, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """One row per common score: means, paired-bootstrap CI of B − A, wins/ties/losses, McNemar."""
    from sentech_eval import stats

    rows = []
    pairs = paired.pairs
    clusters = pairs["prompt_id"].to_numpy() if pairs["repeat"].nunique() > 1 else None
    for score in paired.scores:
        a = pd.to_numeric(pairs[f"{score}_a"], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(pairs[f"{score}_b"], errors="coerce").to_numpy(dtype=float)
        both = ~(np.isnan(a) | np.isnan(b))
        a, b = a[both], b[both]
        n = int(both.sum())
        skipped = len(both) - n
        note = f"{skipped} pairs without this score on one side" if skipped else ""
        if n == 0:
            rows.append(_row("score", score, n_pairs=0, note=note or "no pair has this score on both sides"))
            continue
        cl = clusters[both] if clusters is not None else None
        # stats.paired_bootstrap_ci returns mean(first - second): pass B first for B − A.
        diff, low, high = stats.paired_bootstrap_ci(b, a, clusters=cl, confidence=confidence, seed=seed)
        p_value = None
        if _is_binary(a) and _is_binary(b):
            p_value = float(stats.mcnemar_exact(a.astype(bool), b.astype(bool)))
        rows.append(_row(
            "score", score, value_a=float(a.mean()), value_b=float(b.mean()), diff=float(diff),
            ci_low=float(low), ci_high=float(high), p_value=p_value, n_pairs=n,
            wins=int((b > a).sum()), ties=int((b == a).sum()), losses=int((b < a).sum()), note=note,
        ))
    return rows


def _percentile_rows(pairs: pd.DataFrame, column: str, name: str) -> list[dict]:
    from sentech_eval import stats

    col_a, col_b = f"{column}_a", f"{column}_b"
    if col_a not in pairs.columns or col_b not in pairs.columns:
        return []
    ok = _ok(pairs, "a") & _ok(pairs, "b")
    a = pd.to_numeric(pairs.loc[ok, col_a], errors="coerce")
    b = pd.to_numeric(pairs.loc[ok, col_b], errors="coerce")
    both = a.notna() & b.notna()
    if not both.any():
        return []
    a, b = a[both].to_numpy(dtype=float), b[both].to_numpy(dtype=float)
    rows = []
    pct_a, pct_b = stats.percentiles(a, (50, 95)), stats.percentiles(b, (50, 95))
    for q in (50, 95):
        pa, pb = pct_a[q], pct_b[q]
        rows.append(_row(
            f"{name}_p{q}", column, value_a=pa, value_b=pb, diff=pb - pa,
            ratio=(pb / pa) if pa > 0 else None, n_pairs=int(both.sum()),
            note="pairs where both requests succeeded",
        ))
    return rows


def performance_rows(paired: PairedResults) -> list[dict]:
    """Latency and TTFT p50/p95 (ratio B/A), completion tokens (ratio of means), error rates."""
    pairs = paired.pairs
    rows = _percentile_rows(pairs, "latency_s", "latency") + _percentile_rows(pairs, "ttft_s", "ttft")
    if "completion_tokens_a" in pairs.columns and "completion_tokens_b" in pairs.columns:
        ok = _ok(pairs, "a") & _ok(pairs, "b")
        a = pd.to_numeric(pairs.loc[ok, "completion_tokens_a"], errors="coerce")
        b = pd.to_numeric(pairs.loc[ok, "completion_tokens_b"], errors="coerce")
        both = a.notna() & b.notna()
        if both.any():
            ma, mb = float(a[both].mean()), float(b[both].mean())
            rows.append(_row(
                "completion_tokens_mean", "completion_tokens", value_a=ma, value_b=mb, diff=mb - ma,
                ratio=(mb / ma) if ma > 0 else None, n_pairs=int(both.sum()),
                note="pairs where both requests succeeded",
            ))
    ea = _error_rate(paired.a)
    eb = _error_rate(paired.b)
    rows.append(_row(
        "error_rate", "status", value_a=ea, value_b=eb, diff=eb - ea, n_a=len(paired.a), n_b=len(paired.b),
        note="share of all rows (paired or not) with status 'error'",
    ))
    return rows


def _error_rate(df: pd.DataFrame) -> float:
    if "status" not in df.columns or len(df) == 0:
        return 0.0
    return float(df["status"].astype(str).eq("error").mean())


def agreement_row(paired: PairedResults) -> dict:
    """Share of pairs (both ok) whose outputs are identical after normalisation."""
    pairs = paired.pairs
    ok = _ok(pairs, "a") & _ok(pairs, "b")
    if "output_a" not in pairs.columns or "output_b" not in pairs.columns or not ok.any():
        return _row("output_agreement", "output", n_pairs=0, note="no pair with two successful outputs")
    na = pairs.loc[ok, "output_a"].map(normalise_output)
    nb = pairs.loc[ok, "output_b"].map(normalise_output)
    same = (na == nb) & na.notna()
    exact = pairs.loc[ok, "output_a"].astype(str) == pairs.loc[ok, "output_b"].astype(str)
    return _row(
        "output_agreement", "output", value=float(same.mean()), n_pairs=int(ok.sum()),
        note=f"{int(same.sum())} of {int(ok.sum())} identical after normalising case, whitespace and punctuation "
             f"({int(exact.sum())} byte-identical)",
    )


def pairing_rows(paired: PairedResults) -> list[dict]:
    """How many rows paired, and how many of each side did not (never silently dropped)."""
    keys = ", ".join(paired.keys)
    return [
        _row("pairs", None, value=float(paired.n_pairs), n_pairs=paired.n_pairs, n_a=len(paired.a), n_b=len(paired.b), note=f"paired on {keys}"),
        _row("unpaired_a", None, value=float(paired.unpaired_a), n_a=len(paired.a),
             note="rows of A without a partner in B"),
        _row("unpaired_b", None, value=float(paired.unpaired_b), n_b=len(paired.b),
             note="rows of B without a partner in A"),
    ]


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a DataFrame with stable column types (the compare.parquet schema)."""
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in _INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("metric", "column", "note"):
        df[col] = df[col].astype("string")
    df["note"] = df["note"].fillna("")
    return df


def compare(paired: PairedResults, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """All paired metrics of A vs B (without the judge) as one DataFrame."""
    rows = pairing_rows(paired) + score_rows(paired, confidence, seed) + performance_rows(paired)
    rows.append(agreement_row(paired))
    return metrics_frame(rows)


def disagreements(paired: PairedResults, limit: int = 10) -> pd.DataFrame:
    """The pairs where A and B differ most: largest total |score difference|, then differing outputs."""
    pairs = paired.pairs.copy()
    total = pd.Series(0.0, index=pairs.index)
    for score in paired.scores:
        d = pd.to_numeric(pairs[f"{score}_b"], errors="coerce") - pd.to_numeric(pairs[f"{score}_a"], errors="coerce")
        total = total + d.abs().fillna(0.0)
    if "output_a" in pairs.columns and "output_b" in pairs.columns:
        differ = pairs["output_a"].map(normalise_output) != pairs["output_b"].map(normalise_output)
    else:
        differ = pd.Series(False, index=pairs.index)
    status_differ = pd.Series(False, index=pairs.index)
    if "status_a" in pairs.columns and "status_b" in pairs.columns:
        status_differ = pairs["status_a"].astype(str) != pairs["status_b"].astype(str)
    pairs["_score_gap"] = total
    pairs["_differ"] = differ.astype(int) + status_differ.astype(int)
    ranked = pairs[(pairs["_score_gap"] > 0) | (pairs["_differ"] > 0)]
    ranked = ranked.sort_values(["_score_gap", "_differ", "prompt_id", "repeat"], ascending=[False, False, True, True])
    return ranked.head(limit).drop(columns=["_score_gap", "_differ"])


def comparison_warnings(paired: PairedResults) -> list[str]:
    """Things a reader must know before trusting the numbers: differing sampling, one-sided scores."""
    out = []
    if paired.sampling_differences:
        out.append("A and B used different sampling (" + "; ".join(paired.sampling_differences)
                   + "): differences mix the systems with their settings.")
    one_sided = paired.only_in_a + paired.only_in_b
    if one_sided:
        out.append(f"Scores on one side only, not compared: {', '.join(one_sided)}.")
    return out


def markdown_summary(metrics: pd.DataFrame, label_a: str = "A", label_b: str = "B",
                     warnings: list[str] | None = None) -> str:
    """A markdown summary of the metrics, fit for a terminal or a pull-request comment."""
    from sentech_eval.compare_html import fmt

    m = metrics.set_index("metric", drop=False)
    lines = [f"## sentech-eval compare: {label_a} (A) vs {label_b} (B)", ""]
    pairs = m.loc["pairs"]
    lines.append(
        f"{int(pairs['n_pairs'])} pairs ({pairs['note']}); unpaired: {int(m.loc['unpaired_a', 'value'])} of A, "
        f"{int(m.loc['unpaired_b', 'value'])} of B."
    )
    for warning in warnings or []:
        lines.append(f"⚠️ {warning}")
    scores = metrics[metrics["metric"] == "score"]
    if len(scores):
        lines += ["", "| score | A | B | B − A | 95% CI | W/T/L (B) | McNemar p | pairs |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for _, r in scores.iterrows():
            lines.append(
                f"| {r['column']} | {fmt(r['value_a'])} | {fmt(r['value_b'])} | {fmt(r['diff'], signed=True)} | "
                f"[{fmt(r['ci_low'], signed=True)}, {fmt(r['ci_high'], signed=True)}] | "
                f"{fmt(r['wins'])}/{fmt(r['ties'])}/{fmt(r['losses'])} | {fmt(r['p_value'])} | {fmt(r['n_pairs'])} |"
            )
    perf = metrics[metrics["metric"].str.match(r"^(latency|ttft|completion_tokens|error_rate)")]
    if len(perf):
        lines += ["", "| performance | A | B | B/A |", "|---|---:|---:|---:|"]
        for _, r in perf.iterrows():
            lines.append(f"| {r['metric']} | {fmt(r['value_a'])} | {fmt(r['value_b'])} | {fmt(r['ratio'])} |")
    agree = m.loc["output_agreement"]
    lines += ["", f"Output agreement: {fmt(agree['value'])} ({agree['note']})."]
    if "judge_preference_b" in m.index:
        j = m.loc["judge_preference_b"]
        lines.append(
            f"Judge prefers B in {fmt(j['value'])} of {fmt(j['n_pairs'])} judged pairs "
            f"(95% CI [{fmt(j['ci_low'])}, {fmt(j['ci_high'])}]; {j['note']})."
        )
    return "\n".join(lines) + "\n"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Paired comparison of two results (files, run dirs or sweep dirs): scores with paired-bootstrap "
                    "CIs and McNemar p-values, latency/TTFT/token ratios, error rates and output agreement.",
        epilog="Writes compare.parquet and compare.html into --out (default: the current directory) and prints a "
               "markdown summary. Put --judge last: every argument after it is a Hydra override.",
    )
    parser.add_argument("a", help="results A (the reference, e.g. the remote run)")
    parser.add_argument("b", help="results B (e.g. the local run); differences are B − A")
    parser.add_argument("--out", default=".", help="directory for compare.parquet and compare.html (default: .)")
    parser.add_argument("--examples", type=int, default=10, help="disagreeing pairs shown in the HTML (default: 10)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--label-a", default=None, help="name for A in the outputs (default: its backend/model)")
    parser.add_argument("--label-b", default=None, help="name for B in the outputs")
    parser.add_argument("--judge", nargs="+", metavar="OVERRIDE", default=None,
                        help="pairwise LLM judge: Hydra overrides such as backend=local or backend=remote "
                             "backend.base_url=... (asks twice, order swapped)")
    parser.add_argument("--judge-limit", type=int, default=None, help="judge at most this many pairs")
    return parser


def default_label(df: pd.DataFrame, fallback: str) -> str:
    """``backend/model`` of a results frame when it has a single one, else ``fallback``."""
    parts = []
    for col in ("backend", "model"):
        if col in df.columns and df[col].nunique() == 1:
            parts.append(str(df[col].iloc[0]))
    return "/".join(parts) or fallback


def main(argv: list[str], prog: str = "sentech-eval compare") -> int:
    """Compare two results and write compare.parquet, compare.html and a markdown summary."""
    args = build_parser(prog).parse_args(argv)
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be between 0 and 1, got {args.confidence}.")
    paired = pair_results(args.a, args.b, "A", "B")
    paired.label_a = args.label_a or default_label(paired.a, "A")
    paired.label_b = args.label_b or default_label(paired.b, "B")
    metrics = compare(paired, args.confidence, args.seed)
    judgements = None
    if args.judge:
        from sentech_eval.pairwise_judge import judge_pairs, judge_rows

        judgements = judge_pairs(paired, args.judge, limit=args.judge_limit)
        metrics = pd.concat([metrics, metrics_frame(judge_rows(judgements, args.confidence, args.seed))],
                            ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_parquet(out / "compare.parquet", index=False)
    if judgements is not None:
        judgements.to_parquet(out / "judge.parquet", index=False)
    from sentech_eval.compare_html import render_html

    html = render_html(paired, metrics, disagreements(paired, args.examples), judgements)
    (out / "compare.html").write_text(html, encoding="utf-8")
    sys.stdout.write(markdown_summary(metrics, paired.label_a, paired.label_b, comparison_warnings(paired)))
    written = ["compare.parquet", "compare.html"] + (["judge.parquet"] if judgements is not None else [])
    sys.stdout.write(f"\nWrote {', '.join(str(out / name) for name in written)}.\n")
    return 0


def check_main(argv: list[str], prog: str = "sentech-eval check") -> int:
    """The CI regression gate (see ``sentech_eval.gate``)."""
    from sentech_eval.gate import main as gate_main

    return gate_main(argv, prog)
