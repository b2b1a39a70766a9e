"""The numbers behind ``sentech-eval report``: one summary row per configuration.

``summarize(results)`` gives one row per configuration (backend, model, dataset, every sampling
parameter) with ``n``, ``error_rate``, for each score ``<score>_mean`` / ``_ci_low`` / ``_ci_high``
/ ``_ci_method`` / ``_n`` / ``_n_clusters`` (a 95% interval clustered over prompts, or over the
column passed as ``cluster``: mid-p exact or cluster-adjusted Wilson for 0/1 scores, the clustered
bootstrap otherwise; see ``analysis.stats``), latency and TTFT percentiles, token counts,
``output_tokens_per_s`` (throughput: all completion tokens over the wall-clock span) and
``decode_tokens_per_s_p50`` (the median per-request decode speed of streamed rows). Errored rows
count in ``error_rate`` but never in a quality mean or a latency percentile. Rows answered from the
response cache (``cached``) count in the quality figures; ``n_cached`` says how many there are, and
latency, TTFT and throughput figures use the fresh rows only (NaN when every row came from the cache).

pass@k (``pass_counts``, ``pass_at_columns``): when prompts were sampled more than once (or ``pass_at``
asks for it), each configuration also gets ``pass_at_<k>`` / ``_ci_low`` / ``_ci_high`` / ``_n`` for
the pass/fail score ``pass_score`` picks (``score_code_exec`` first): the unbiased estimator per
prompt averaged over prompts (``stats.pass_at_k_interval``). A k larger than some prompt's number of
scored samples is left NaN for that configuration and ``pass_at_notes`` says why in one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentech_eval.analysis import cost, stats
from sentech_eval.engine.results import is_quality_score, load_results
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.types import SAMPLING_PARAMS

SAMPLING_COLUMNS = SAMPLING_PARAMS
CONFIG_COLUMNS = ("backend", "model", "dataset") + SAMPLING_COLUMNS
LATENCY_QS = (50, 90, 95, 99)
DEFAULT_PASS_AT = (1, 5, 10, 100)  # the k of pass@k by default: those up to the number of samples per prompt
TTFT_QS = (50, 95)


def load(path: str | Path) -> pd.DataFrame:
    """The results at PATH as one DataFrame (``sentech_eval.load_results``)."""
    df = load_results(path)
    if df.empty:
        raise ResultsError(f"The results at {path} have no rows; nothing to report.")
    missing = [c for c in ("status", "output") if c not in df.columns]
    if missing:
        raise ResultsError(f"The results at {path} have no {missing[0]!r} column; is this a sentech-eval results file?")
    return df


def score_columns(df: pd.DataFrame) -> list[str]:
    """The quality score columns: numeric ``score_*`` columns that are not details or judge costs."""
    cols = []
    for col in df.columns:
        if not is_quality_score(col):
            continue
        if pd.api.types.is_numeric_dtype(df[col]) or df[col].isna().all():
            cols.append(col)
    return cols


def interval_columns(score: str, ci: stats.Interval) -> dict[str, Any]:
    """A score's summary columns from its interval: ``<score>_mean``, ``_ci_low``, ``_ci_high``, ``_ci_method``,
    ``_n``, ``_n_clusters``."""
    return {
        f"{score}_mean": ci.estimate,
        f"{score}_ci_low": ci.low,
        f"{score}_ci_high": ci.high,
        f"{score}_ci_method": ci.method,
        f"{score}_n": ci.n,
        f"{score}_n_clusters": ci.n_clusters,
    }


def config_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration in these results."""
    if "config_id" in df.columns:
        return ["config_id"] + (["dataset"] if "dataset" in df.columns else [])
    return [c for c in CONFIG_COLUMNS if c in df.columns and c != "seed"]


def _config_value(part: pd.DataFrame, col: str):
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


def cached_mask(df: pd.DataFrame) -> pd.Series:
    """True for rows answered from the response cache (False where the column is missing or null)."""
    if "cached" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["cached"].fillna(False).astype(bool)


def cache_note(summary: pd.DataFrame) -> str | None:
    """One sentence on rows answered from the response cache, or None when there were none."""
    if "n_cached" not in summary or not summary["n_cached"].fillna(0).any():
        return None
    cached, total = int(summary["n_cached"].sum()), int(summary["n"].sum())
    if cached == total:
        return (
            f"All {total} rows came from the response cache: these results measured no latency "
            "(latency and tokens/s are empty; the rows keep the original requests' latency_s)."
        )
    return (
        f"{cached} of {total} rows came from the response cache: scores use every row; latency and tokens/s "
        f"use the {total - cached} fresh rows only."
    )


def cluster_column(df: pd.DataFrame, cluster: str | None = None) -> str | None:
    """The column whose rows form one cluster: ``cluster`` if given (it must exist), else ``prompt_id``."""
    if cluster is None:
        return "prompt_id" if "prompt_id" in df.columns else None
    if cluster not in df.columns:
        known = ", ".join(c for c in df.columns if not c.startswith("score_"))
        raise ConfigError(f"--cluster {cluster!r} is not a column of the results; pick one of: {known}.")
    return cluster


def decode_tokens_per_s(ok: pd.DataFrame) -> np.ndarray:
    """Per-request decode speed of streamed ok rows: (completion_tokens − 1) / (latency_s − ttft_s).

    The first token arrives at TTFT; the remaining ones over the rest of the request. Rows
    without a TTFT, with fewer than two tokens or without time after the first token are left out.
    """
    if not {"ttft_s", "latency_s", "completion_tokens"} <= set(ok.columns):
        return np.array([])
    return decode_rates(
        ok["completion_tokens"].to_numpy(dtype=float, na_value=np.nan),
        ok["latency_s"].to_numpy(dtype=float, na_value=np.nan),
        ok["ttft_s"].to_numpy(dtype=float, na_value=np.nan),
    )


def decode_rates(tokens: np.ndarray, latency: np.ndarray, ttft: np.ndarray) -> np.ndarray:
    """``decode_tokens_per_s`` of float arrays (NaN where missing), row by row."""
    decode_s = latency - ttft
    usable = (tokens > 1) & (decode_s > 0)
    return (tokens[usable] - 1.0) / decode_s[usable]


def pass_score(df: pd.DataFrame, scores: Sequence[str] | None = None) -> str | None:
    """The pass/fail score pass@k counts: ``score_code_exec`` when present, else the first 0/1 score."""
    scores = score_columns(df) if scores is None else scores
    ok = df["status"] == "ok" if "status" in df else pd.Series(True, index=df.index)
    binary = [s for s in scores if stats.is_binary(df.loc[ok, s].to_numpy(dtype=float, na_value=np.nan))]
    if "score_code_exec" in binary:
        return "score_code_exec"
    return binary[0] if binary else None


def pass_counts(df: pd.DataFrame, score: str) -> pd.DataFrame:
    """One row per configuration and prompt: ``n`` scored samples (ok rows with a score), ``c`` of them passed.

    Prompts whose every row failed or went unscored are kept with n = 0 (they make a pass@k unreportable,
    they are not dropped). Columns: the configuration keys (``config_keys``), ``prompt_id``, ``n``, ``c``.
    """
    keys = config_keys(df) + ["prompt_id"]
    ok = df["status"] == "ok" if "status" in df else pd.Series(True, index=df.index)
    values = df[score].astype(float).where(ok)
    frame = df[keys].assign(_n=values.notna().astype(int), _c=(values >= 0.5).astype(int))
    counts = frame.groupby(keys, dropna=False, sort=False)[["_n", "_c"]].sum().reset_index()
    return counts.rename(columns={"_n": "n", "_c": "c"})


def pass_at_ks(counts: pd.DataFrame, pass_at: Sequence[int] | None = None) -> list[int]:
    """The k to report: ``pass_at`` if given, else 1, 5, 10, 100 up to the most samples any prompt has; [] when
    nothing asks for pass@k (no ``pass_at`` and no prompt sampled more than once)."""
    if pass_at:
        return sorted({int(k) for k in pass_at})
    most = int(counts["n"].max()) if len(counts) else 0
    if most <= 1:
        return []
    return [k for k in DEFAULT_PASS_AT if k <= most]


def pass_at_columns(counts: pd.DataFrame, ks: Sequence[int], score: str, confidence: float = 0.95) -> dict:
    """pass@k columns of one configuration from its ``pass_counts`` rows (see the module docstring)."""
    n = counts["n"].to_numpy(dtype=float)
    c = counts["c"].to_numpy(dtype=float)
    row: dict = {
        "pass_at_score": score,
        "pass_at_problems": int(n.size),
        "pass_at_min_n": int(n.min()) if n.size else 0,
    }
    for k in ks:
        enough = int((n >= k).sum())
        row[f"pass_at_{k}_n"] = enough
        if n.size and enough == n.size:
            ci = stats.pass_at_k_interval(n, c, k, confidence)
            row[f"pass_at_{k}"], row[f"pass_at_{k}_ci_low"], row[f"pass_at_{k}_ci_high"] = ci.estimate, ci.low, ci.high
        else:  # not defined for the prompts with fewer than k samples: not reported (never 1.0 from nothing)
            row[f"pass_at_{k}"] = row[f"pass_at_{k}_ci_low"] = row[f"pass_at_{k}_ci_high"] = np.nan
    return row


def pass_at_list(summary: pd.DataFrame) -> list[int]:
    """The k of the ``pass_at_<k>`` columns of a summary, in order."""
    ks = []
    for col in summary.columns:
        rest = col.removeprefix("pass_at_")
        if col.startswith("pass_at_") and rest.isdigit():
            ks.append(int(rest))
    return sorted(ks)


def pass_at_notes(summary: pd.DataFrame) -> list[str]:
    """One sentence per configuration and k whose pass@k is not reported, saying why."""
    notes = []
    ks = pass_at_list(summary)
    if not ks:
        return notes
    labels = config_labels(summary)
    several = len(summary) > 1
    for label, (_, row) in zip(labels, summary.iterrows()):
        problems = int(row.get("pass_at_problems") or 0)
        fewest = int(row.get("pass_at_min_n") or 0)
        for k in ks:
            value = row.get(f"pass_at_{k}")
            if value == value or not problems:  # reported (not NaN), or nothing to report on
                continue
            short = problems - int(row.get(f"pass_at_{k}_n") or 0)
            where = f" for {label}" if several else ""
            notes.append(
                f"pass@{k} is not reported{where}: {short} of {problems} prompts have fewer than {k} scored samples "
                f"(the fewest has {fewest}); pass@k needs k samples of every prompt (runner.repeats ≥ {k})."
            )
    return notes


def _config_parts(df: pd.DataFrame, keys: list[str]):
    """The rows of each configuration, in the order ``groupby(keys, sort=False)`` yields them.

    Each part is taken from ``df`` by its row positions: iterating the groupby itself would first copy
    the whole frame in group order (a million-row run's frame twice in memory)."""
    if not keys:
        yield df
        return
    codes = df.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max() + 2 if len(codes) else 1))
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            yield df.take(order[start:end])


def summarize(
    df: pd.DataFrame,
    confidence: float = 0.95,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    cluster: str | None = None,
    pass_at: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per configuration; see the module docstring for the columns.

    ``cluster`` names the column whose rows are one unit of evidence (default ``prompt_id``).
    ``pass_at`` lists the k of pass@k (None: 1, 5, 10, 100 up to the samples per prompt, when repeated).
    """
    keys = config_keys(df)
    scores = score_columns(df)
    # pass@k only where asked for or where some prompt has several samples (a repeat > 0, or a prompt id twice)
    repeated = "prompt_id" in df.columns and (
        bool(pass_at)
        or ("repeat" in df.columns and bool((df["repeat"].fillna(0) > 0).any()))
        or ("repeat" not in df.columns and df.duplicated(subset=config_keys(df) + ["prompt_id"]).any())
    )
    passed = pass_score(df, scores) if repeated else None
    counts = pass_counts(df, passed) if passed else None
    ks = pass_at_ks(counts, pass_at) if counts is not None else []
    has_ttft = "ttft_s" in df.columns and df["ttft_s"].notna().any()
    clusters_col = cluster_column(df, cluster)
    priced = cost.has_cost(df)
    binary = set(cost.binary_scores(df, scores)) if priced else set()
    rows = []
    for part in _config_parts(df, keys):
        ok = part[part["status"] == "ok"]
        from_cache = cached_mask(part)
        # what this run measured: latency, TTFT and throughput come from these (no copy when nothing was cached:
        # a million-row run would otherwise hold the frame twice more)
        any_cached = bool(from_cache.any())
        fresh_part = part[~from_cache] if any_cached else part
        fresh = ok[~from_cache.loc[ok.index]] if any_cached else ok
        row: dict = {}
        if "config_id" in part:
            row["config_id"] = _config_value(part, "config_id")
        for col in CONFIG_COLUMNS:
            if col in part:
                row[col] = _config_value(part, col)
        row["n"] = len(part)
        row["n_ok"] = len(ok)
        row["n_cached"] = int(from_cache.sum())
        row["error_rate"] = stats.error_rate(part["status"].to_numpy())
        clusters = part[clusters_col].astype(str).to_numpy() if clusters_col else None
        status = part["status"].to_numpy()
        accuracy: dict[str, stats.Interval] = {}
        for col in scores:
            values = stats.quality_values(part[col].to_numpy(dtype=float, na_value=np.nan), status)
            ci = stats.mean_ci(values, clusters=clusters, confidence=confidence, n_resamples=n_resamples, seed=seed)
            row.update(interval_columns(col, ci))
            if col in binary:
                accuracy[col] = ci
        if priced:
            row.update(cost.cost_columns(part, accuracy))
        latency = fresh["latency_s"].to_numpy(dtype=float, na_value=np.nan) if "latency_s" in fresh else np.array([])
        row["latency_s_mean"] = float(np.nanmean(latency)) if np.any(~np.isnan(latency)) else np.nan
        for q, v in stats.percentiles(latency, LATENCY_QS).items():
            row[f"latency_s_p{q}"] = v
        if has_ttft:
            for q, v in stats.percentiles(fresh["ttft_s"].to_numpy(dtype=float, na_value=np.nan), TTFT_QS).items():
                row[f"ttft_s_p{q}"] = v
        completion = (
            ok["completion_tokens"].to_numpy(dtype=float, na_value=np.nan)
            if "completion_tokens" in ok
            else np.array([np.nan])
        )
        prompt_tokens = (
            part["prompt_tokens"].to_numpy(dtype=float, na_value=np.nan)
            if "prompt_tokens" in part
            else np.array([np.nan])
        )
        row["completion_tokens_mean"] = float(np.nanmean(completion)) if np.any(~np.isnan(completion)) else np.nan
        # NaN when no row has a prompt count (a server that reports no usage while streaming): not 0
        row["prompt_tokens_sum"] = int(np.nansum(prompt_tokens)) if np.any(~np.isnan(prompt_tokens)) else np.nan
        completion_all = (
            part["completion_tokens"].to_numpy(dtype=float, na_value=np.nan)
            if "completion_tokens" in part
            else np.array([np.nan])
        )
        row["completion_tokens_sum"] = int(np.nansum(completion_all))
        # throughput: what the fresh rows did in the time they took (cached rows took no time here)
        wall = _wall_seconds(fresh_part) if "latency_s" in part and len(fresh_part) else None
        if wall is None and "latency_s" in fresh:
            busy = float(np.nansum(latency))
            wall = busy if busy > 0 else None
        fresh_completion = (
            fresh_part["completion_tokens"].to_numpy(dtype=float, na_value=np.nan)
            if "completion_tokens" in part
            else np.array([np.nan])
        )
        row["wall_s"] = wall if wall is not None else np.nan
        row["output_tokens_per_s"] = int(np.nansum(fresh_completion)) / wall if wall else np.nan
        decode = decode_tokens_per_s(fresh)
        row["decode_tokens_per_s_p50"] = float(np.median(decode)) if decode.size else np.nan
        row["requests_per_s"] = len(fresh_part) / wall if wall else np.nan
        if ks:
            row.update(pass_at_columns(pass_counts(part, passed), ks, passed, confidence))
        rows.append(row)
    return summary_frame(rows)


def summary_frame(rows: list[dict]) -> pd.DataFrame:
    """The summary of per-configuration rows (in the order their configurations first appear), sorted by
    backend, model, dataset and sampling parameters (missing first; ties keep their order)."""
    summary = pd.DataFrame(rows)
    sort_cols = [c for c in ("backend", "model", "dataset") + SAMPLING_COLUMNS if c in summary]
    if sort_cols:
        summary = summary.sort_values(sort_cols, na_position="first", kind="stable").reset_index(drop=True)
    return summary


def interval_notes(summary: pd.DataFrame) -> list[str]:
    """One sentence per score naming the method(s) behind its interval, e.g. for under a table."""
    notes = []
    for col in summary.columns:
        if not (col.startswith("score_") and col.endswith("_ci_method")):
            continue
        methods = [m for m in dict.fromkeys(summary[col].dropna().astype(str)) if m]
        if methods:
            name = col[: -len("_ci_method")].removeprefix("score_")
            notes.append(f"{name}: " + "; ".join(stats.METHOD_DESCRIPTIONS.get(m, m) for m in methods))
    return notes


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
