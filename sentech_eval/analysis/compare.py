"""The metrics of a paired comparison of two results (e.g. remote vs local).

For every score present on both sides: mean A, mean B, difference B − A with a 95% CI, and for
pass/fail (0/1) scores a McNemar-type p-value, wins/ties/losses from B's side. The prompt is the
unit of evidence (``pairing.cluster_ids``): with one pair per prompt the CI is Newcombe's and
the test the exact McNemar; with several (repeats, sweep points) both are cluster-adjusted (the
clustered McNemar is an exact sign-flip test over prompts); see ``analysis.stats``. When the
p-value and the CI disagree on significance the row's note says so. For performance: latency and
TTFT p50/p95 ratios B/A, completion-token ratio and error rates. Output agreement: the share of
pairs whose outputs are identical after normalisation (``normalize_text``: case, whitespace,
punctuation, symbols). Cost (when a side's rows carry ``cost_usd``): each side's total cost, cost
per 1,000 requests and, per 0/1 score, cost per correct answer with its interval
(``ci_low_a``/``ci_high_a``, ``_b``: ``analysis.cost``), over all of that side's rows, and B/A. With ``--judge`` a backend also says which output it prefers (see
``analysis.judge``).

Every metric is one row built with ``metric_row`` (the ``compare.parquet`` schema, ``METRIC_COLUMNS``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sentech_eval.analysis import cost, stats
from sentech_eval.analysis.pairing import PairedResults, cluster_ids
from sentech_eval.analysis.summary import pass_at_ks, pass_counts, pass_score
from sentech_eval.normalize import normalize_text

METRIC_COLUMNS = [
    "metric",
    "column",
    "value",
    "value_a",
    "value_b",
    "diff",
    "ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "n_pairs",
    "wins",
    "ties",
    "losses",
    "n_a",
    "n_b",
    "note",
    "ci_method",
    "test",
    "n_clusters",
    "ci_low_a",
    "ci_high_a",
    "ci_low_b",
    "ci_high_b",
]
_INT_COLUMNS = ("n_pairs", "wins", "ties", "losses", "n_a", "n_b", "n_clusters")
_FLOAT_COLUMNS = (
    "value",
    "value_a",
    "value_b",
    "diff",
    "ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "ci_low_a",
    "ci_high_a",
    "ci_low_b",
    "ci_high_b",
)


def normalise_output(text: object) -> str | None:
    """An output as ``exact_match`` sees it (``normalize_text``); None for a missing output."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    return normalize_text(text)


def _ok(pairs: pd.DataFrame, side: str) -> pd.Series:
    col = f"status_{side}"
    if col not in pairs.columns:
        return pd.Series(True, index=pairs.index)
    return pairs[col].astype(str).eq("ok")


def metric_row(metric: str, column: str | None = None, **values) -> dict:
    """One compare.parquet row: every metric column present, None where it does not apply."""
    row = {name: None for name in METRIC_COLUMNS}
    row.update(metric=metric, column=column, **values)
    return row


def score_rows(
    paired: PairedResults, confidence: float = 0.95, seed: int = 0, cluster: str | None = None
) -> list[dict]:
    """One row per common score: means, CI of B − A, wins/ties/losses, McNemar-type test (0/1 scores).

    ``cluster`` names the column whose pairs form one unit of evidence (default: the prompt).
    """
    rows = []
    pairs = paired.pairs
    clusters = cluster_ids(paired, cluster)
    for score in paired.scores:
        a = pd.to_numeric(pairs[f"{score}_a"], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(pairs[f"{score}_b"], errors="coerce").to_numpy(dtype=float)
        both = ~(np.isnan(a) | np.isnan(b))
        a, b = a[both], b[both]
        n = int(both.sum())
        skipped = len(both) - n
        notes = [f"{skipped} pairs without this score on one side"] if skipped else []
        if n == 0:
            rows.append(
                metric_row(
                    "score", score, n_pairs=0, note=notes[0] if notes else "no pair has this score on both sides"
                )
            )
            continue
        cl = clusters[both]
        ci = stats.paired_difference_ci(a, b, clusters=cl, confidence=confidence, seed=seed)
        p_value, test = None, None
        if stats.is_binary(a) and stats.is_binary(b):
            p_value, test = stats.paired_test(a, b, clusters=cl)
            disagreement = significance_disagreement(p_value, ci, confidence)
            if disagreement:
                notes.append(disagreement)
        rows.append(
            metric_row(
                "score",
                score,
                value_a=float(a.mean()),
                value_b=float(b.mean()),
                diff=ci.estimate,
                ci_low=ci.low,
                ci_high=ci.high,
                p_value=p_value,
                n_pairs=n,
                wins=int((b > a).sum()),
                ties=int((b == a).sum()),
                losses=int((b < a).sum()),
                note="; ".join(notes),
                ci_method=ci.method,
                test=test,
                n_clusters=ci.n_clusters,
            )
        )
    return rows


def pass_at_rows(paired: PairedResults, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """pass@k of A and B on the prompts both sides have, when some prompt was sampled more than once.

    One row per k (``metric="pass_at_k"``, ``column="pass@k"``): each side's pass@k with its interval
    (``stats.pass_at_k_interval``), B − A with the interval of the per-prompt differences (the prompt
    as the unit). A k above some common prompt's samples on either side is not reported: its row
    says why in ``note`` (never 1.0 from nothing).
    """
    score = pass_score(paired.a) if "prompt_id" in paired.a.columns else None
    if score is None or score not in paired.scores or "prompt_id" not in paired.b.columns:
        return []
    sides = []
    for frame in (paired.a, paired.b):
        counts = pass_counts(frame.assign(config_id="side"), score).groupby("prompt_id")[["n", "c"]].sum()
        sides.append(counts)
    common = sides[0].index.intersection(sides[1].index)
    if common.empty:
        return []
    a, b = sides[0].loc[common], sides[1].loc[common]
    ks = pass_at_ks(pd.concat([a, b]).reset_index())
    rows = []
    for k in ks:
        fewest = int(min(a["n"].min(), b["n"].min()))
        if fewest < k:
            short_a, short_b = int((a["n"] < k).sum()), int((b["n"] < k).sum())
            rows.append(
                metric_row(
                    "pass_at_k",
                    f"pass@{k}",
                    n_clusters=len(common),
                    note=f"not reported: {short_a} prompts of A and {short_b} of B have fewer than {k} scored "
                    f"samples (the fewest has {fewest}); pass@k needs k samples of every prompt",
                )
            )
            continue
        ci_a = stats.pass_at_k_interval(a["n"], a["c"], k, confidence)
        ci_b = stats.pass_at_k_interval(b["n"], b["c"], k, confidence)
        per_a = stats.pass_at_k(a["n"].to_numpy(), a["c"].to_numpy(), k)
        per_b = stats.pass_at_k(b["n"].to_numpy(), b["c"].to_numpy(), k)
        diff = stats.paired_difference_ci(per_a, per_b, confidence=confidence, seed=seed)
        rows.append(
            metric_row(
                "pass_at_k",
                f"pass@{k}",
                value_a=ci_a.estimate,
                value_b=ci_b.estimate,
                ci_low_a=ci_a.low,
                ci_high_a=ci_a.high,
                ci_low_b=ci_b.low,
                ci_high_b=ci_b.high,
                diff=diff.estimate,
                ci_low=diff.low,
                ci_high=diff.high,
                ci_method=diff.method,
                n_clusters=len(common),
                wins=int((per_b > per_a).sum()),
                ties=int((per_b == per_a).sum()),
                losses=int((per_b < per_a).sum()),
                note=f"of {score.removeprefix('score_')}, over the {len(common)} prompts both sides have",
            )
        )
    return rows


def significance_disagreement(p_value: float, ci: stats.Interval, confidence: float = 0.95) -> str:
    """A sentence when the test and the CI disagree on significance at 1 − confidence, else ""."""
    by_test = p_value < 1.0 - confidence
    by_ci = ci.low > 0 or ci.high < 0
    if by_test == by_ci:
        return ""
    level = f"{1.0 - confidence:.0%}"
    if by_ci:
        return (
            f"the CI excludes 0 but p = {p_value:.3g} ≥ {level}: the interval and the test are different methods "
            "and disagree near the boundary, so treat the difference as borderline (the gate decides by the CI)"
        )
    return (
        f"p = {p_value:.3g} < {level} but the CI includes 0: the interval and the test are different methods "
        "and disagree near the boundary, so treat the difference as borderline (the gate decides by the CI)"
    )


def _percentile_rows(pairs: pd.DataFrame, column: str, name: str) -> list[dict]:
    col_a, col_b = f"{column}_a", f"{column}_b"
    if col_a not in pairs.columns or col_b not in pairs.columns:
        return []
    ok = _ok(pairs, "a") & _ok(pairs, "b")
    # a row answered from the response cache measured nothing in its run: timings use fresh pairs only
    from_cache = ok & (_cached(pairs, "a") | _cached(pairs, "b"))
    ok &= ~from_cache
    a = pd.to_numeric(pairs.loc[ok, col_a], errors="coerce")
    b = pd.to_numeric(pairs.loc[ok, col_b], errors="coerce")
    both = a.notna() & b.notna()
    n_cached = int(from_cache.sum())
    cache_note = f"; {n_cached} pairs with a row from the response cache left out" if n_cached else ""
    if not both.any():
        if n_cached:
            return [
                metric_row(
                    f"{name}_p50",
                    column,
                    n_pairs=0,
                    note=f"no latency measured: all {n_cached} ok pairs have a row from the response cache",
                )
            ]
        return []
    a, b = a[both].to_numpy(dtype=float), b[both].to_numpy(dtype=float)
    rows = []
    pct_a, pct_b = stats.percentiles(a, (50, 95)), stats.percentiles(b, (50, 95))
    for q in (50, 95):
        pa, pb = pct_a[q], pct_b[q]
        rows.append(
            metric_row(
                f"{name}_p{q}",
                column,
                value_a=pa,
                value_b=pb,
                diff=pb - pa,
                ratio=(pb / pa) if pa > 0 else None,
                n_pairs=int(both.sum()),
                note="pairs where both requests succeeded" + cache_note,
            )
        )
    return rows


def _cached(pairs: pd.DataFrame, side: str) -> pd.Series:
    """True where that side's row was answered from the response cache."""
    col = f"cached_{side}"
    if col not in pairs.columns:
        return pd.Series(False, index=pairs.index)
    return pairs[col].fillna(False).astype(bool)


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
            rows.append(
                metric_row(
                    "completion_tokens_mean",
                    "completion_tokens",
                    value_a=ma,
                    value_b=mb,
                    diff=mb - ma,
                    ratio=(mb / ma) if ma > 0 else None,
                    n_pairs=int(both.sum()),
                    note="pairs where both requests succeeded",
                )
            )
    ea = _error_rate(paired.a)
    eb = _error_rate(paired.b)
    rows.append(
        metric_row(
            "error_rate",
            "status",
            value_a=ea,
            value_b=eb,
            diff=eb - ea,
            n_a=len(paired.a),
            n_b=len(paired.b),
            note="share of all rows (paired or not) with status 'error'",
        )
    )
    return rows


def _side_clusters(df: pd.DataFrame, cluster: str | None) -> np.ndarray | None:
    """One side's cluster per row for its own intervals: ``cluster`` if that side has it, else the prompt."""
    column = cluster if cluster and cluster in df.columns else "prompt_id"
    if column not in df.columns:
        return None
    if column == "prompt_id" and "dataset" in df.columns:
        return (df["dataset"].astype(str) + "\x1f" + df["prompt_id"].astype(str)).to_numpy()
    return df[column].astype(str).to_numpy()


COST_NOTE = "all rows of each side (paired or not), errored rows included"


def cost_rows(paired: PairedResults, confidence: float = 0.95, cluster: str | None = None) -> list[dict]:
    """Each side's total cost, cost per 1,000 requests and cost per correct answer (per 0/1 score
    common to both sides) with its interval, and the ratio B/A; no rows when neither side has ``cost_usd``."""
    priced = {side: cost.has_cost(getattr(paired, side)) for side in ("a", "b")}
    if not any(priced.values()):
        return []
    scores = cost.binary_scores(paired.a, paired.scores) if priced["a"] else paired.scores
    if priced["b"]:
        scores = [s for s in scores if s in cost.binary_scores(paired.b, paired.scores)]
    figures = {
        side: cost.side_costs(getattr(paired, side), scores, _side_clusters(getattr(paired, side), cluster), confidence)
        if priced[side]
        else {}
        for side in ("a", "b")
    }
    missing = [label for side, label in (("a", paired.label_a), ("b", paired.label_b)) if not priced[side]]
    note = COST_NOTE + (f"; {' and '.join(missing)} has no cost_usd (no backend.price)" if missing else "")

    def row(metric: str, column: str, key: str, **extra) -> dict:
        va, vb = figures["a"].get(key, np.nan), figures["b"].get(key, np.nan)
        finite = np.isfinite(va) and np.isfinite(vb)
        return metric_row(
            metric,
            column,
            value_a=va,
            value_b=vb,
            diff=vb - va if finite else None,
            ratio=vb / va if finite and va > 0 else None,
            n_a=len(paired.a),
            n_b=len(paired.b),
            note=note,
            **extra,
        )

    rows = [row("cost_usd", "cost_usd", "cost_usd"), row("cost_per_1k_requests", "cost_usd", "cost_per_1k_requests")]
    for score in scores:
        key = f"cost_per_correct_{score.removeprefix('score_')}"
        rows.append(
            row(
                "cost_per_correct",
                score,
                key,
                ci_low_a=figures["a"].get(f"{key}_ci_low"),
                ci_high_a=figures["a"].get(f"{key}_ci_high"),
                ci_low_b=figures["b"].get(f"{key}_ci_low"),
                ci_high_b=figures["b"].get(f"{key}_ci_high"),
            )
        )
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
        return metric_row("output_agreement", "output", n_pairs=0, note="no pair with two successful outputs")
    na = pairs.loc[ok, "output_a"].map(normalise_output)
    nb = pairs.loc[ok, "output_b"].map(normalise_output)
    same = (na == nb) & na.notna()
    exact = pairs.loc[ok, "output_a"].astype(str) == pairs.loc[ok, "output_b"].astype(str)
    return metric_row(
        "output_agreement",
        "output",
        value=float(same.mean()),
        n_pairs=int(ok.sum()),
        note=f"{int(same.sum())} of {int(ok.sum())} identical after normalising case, whitespace, punctuation and symbols "
        f"({int(exact.sum())} byte-identical)",
    )


def pairing_rows(paired: PairedResults) -> list[dict]:
    """How many rows paired, and how many of each side did not (never silently dropped)."""
    keys = ", ".join(paired.keys)
    return [
        metric_row(
            "pairs",
            None,
            value=float(paired.n_pairs),
            n_pairs=paired.n_pairs,
            n_a=len(paired.a),
            n_b=len(paired.b),
            note=f"paired on {keys}",
        ),
        metric_row(
            "unpaired_a",
            None,
            value=float(paired.unpaired_a),
            n_a=len(paired.a),
            note="rows of A without a partner in B",
        ),
        metric_row(
            "unpaired_b",
            None,
            value=float(paired.unpaired_b),
            n_b=len(paired.b),
            note="rows of B without a partner in A",
        ),
    ]


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a DataFrame with stable column types (the compare.parquet schema)."""
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in _INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("metric", "column", "note", "ci_method", "test"):
        df[col] = df[col].astype("string")
    df["note"] = df["note"].fillna("")
    return df


def compare(paired: PairedResults, confidence: float = 0.95, seed: int = 0, cluster: str | None = None) -> pd.DataFrame:
    """All paired metrics of A vs B (without the judge) as one DataFrame (``cluster``: see ``score_rows``)."""
    rows = pairing_rows(paired) + score_rows(paired, confidence, seed, cluster) + performance_rows(paired)
    rows += pass_at_rows(paired, confidence, seed)
    rows += cost_rows(paired, confidence, cluster)
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


# A side whose requests overlapped at least this much (sum of latencies / wall span) and whose
# median seconds per completion token are at least this many times its fastest (5th percentile) is
# measuring a queue: a server that answers fewer requests at a time than were sent.
QUEUE_OVERLAP = 2.0
QUEUE_SLOWDOWN = 3.0


def queueing_factor(df: pd.DataFrame) -> tuple[float, float] | None:
    """(overlap, slowdown) of one side's ok rows, or None when its latency is not queue-dominated."""
    needed = {"status", "latency_s", "started_at", "completion_tokens"}
    if not needed <= set(df.columns):
        return None
    ok = df[(df["status"] == "ok") & df["latency_s"].notna() & df["started_at"].notna()]
    if len(ok) < 4:
        return None
    start = pd.to_datetime(ok["started_at"], utc=True)
    end = start + pd.to_timedelta(ok["latency_s"].astype(float), unit="s")
    span = (end.max() - start.min()).total_seconds()
    if span <= 0:
        return None
    overlap = float(ok["latency_s"].sum()) / span
    per_token = ok["latency_s"].astype(float) / ok["completion_tokens"].fillna(0).clip(lower=1).astype(float)
    fastest = float(per_token.quantile(0.05))
    slowdown = float(per_token.median()) / fastest if fastest > 0 else 0.0
    if overlap >= QUEUE_OVERLAP and slowdown >= QUEUE_SLOWDOWN:
        return overlap, slowdown
    return None


def comparison_warnings(paired: PairedResults) -> list[str]:
    """Things a reader must know before trusting the numbers: differing sampling, one-sided scores,
    latency that measures a server's queue rather than its model."""
    out = []
    for side, label in (("a", paired.label_a), ("b", paired.label_b)):
        queued = queueing_factor(getattr(paired, side))
        if queued:
            overlap, slowdown = queued
            out.append(
                f"{label}: latency is dominated by queueing — {overlap:.1f} requests were in flight on average and "
                f"the median time per token is {slowdown:.1f}× the fastest, so the server answered fewer requests at "
                "a time than were sent. Re-run it with runner.concurrency equal to the server's capacity "
                "(1 for `sentech-eval serve --engine llama`) to compare models, not queues."
            )
    if paired.sampling_differences:
        out.append(
            "A and B used different sampling ("
            + "; ".join(paired.sampling_differences)
            + "): differences mix the systems with their settings."
        )
    one_sided = paired.only_in_a + paired.only_in_b
    if one_sided:
        out.append(f"Scores on one side only, not compared: {', '.join(one_sided)}.")
    return out


def default_label(df: pd.DataFrame, fallback: str) -> str:
    """``backend/model`` of a results frame when it has a single one, else ``fallback``.

    The model is the one that answered (``response_model``, what the server said) when the rows
    record it, not the one requested: a server may answer for another name.
    """
    parts = []
    model_col = "response_model" if "response_model" in df.columns and df["response_model"].notna().any() else "model"
    for col in ("backend", model_col):
        if col in df.columns and df[col].dropna().nunique() == 1:
            parts.append(str(df[col].dropna().iloc[0]))
    return "/".join(parts) or fallback
