"""What the viewer knows about a run, computed once per file identity (in the viewer's worker process).

``run_digest`` reads a run's files (the text columns left out), checks which are damaged, and returns
plain JSON-able data: the runs-page line and the summary rows of ``analysis.summary.summarize`` (the
numbers of ``report``, never recomputed here). ``run_plots`` adds the pictures of ``render.plots``
(and the load and race sections of ``render``); ``sweep_extras`` the heatmap and the score against
cost and latency with the Pareto front (``analysis.pareto``); ``compare_digest`` the paired statistics
of ``analysis.compare`` and the rows that flipped; ``history_plot`` a score over a series of runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sentech_eval.analysis import slo as load_metrics
from sentech_eval.analysis.compare import compare, comparison_warnings, default_label
from sentech_eval.analysis.pairing import pair_frames
from sentech_eval.analysis.pareto import pareto_front
from sentech_eval.analysis.summary import (
    CONFIG_COLUMNS,
    cache_note,
    cached_mask,
    config_keys,
    config_labels,
    interval_notes,
    score_columns,
    summarize,
    swept_parameters,
)
from sentech_eval.engine.results import METADATA_KEY, keep_latest_per_key
from sentech_eval.render import plots
from sentech_eval.render.load import load_html
from sentech_eval.render.pass_at_k import pass_at_k_html
from sentech_eval.render.race import load_race, race_section_html

# Columns the summary and the plots do not need: left out so a large run's digest stays small.
TEXT_COLUMNS = ("output", "prompt", "reference", "error", "messages", "system")
UNUSED_COLUMNS = (
    "run_id",
    "finish_reason",
    "response_model",
    "total_tokens",
    "http_status",
    "attempts",
    "queue_s",
    "usage_source",
    "cache_key",
    "messages_sha256",
    "cached_from",
)
# What the run page's plots read (with the score columns); a load run is read whole for its load table.
PLOT_COLUMNS = ("status", "latency_s", "cached", "prompt_tokens", "completion_tokens", "itl_s") + load_metrics.LOAD_KEYS
FLIP_TEXT_LIMIT = 4000
MAX_FLIPS = 5000


def _jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with NaN as None and numpy values as Python ones."""
    return json.loads(frame.to_json(orient="records", date_format="iso", default_handler=str))


def _open(path: str, problems: list[str]) -> pq.ParquetFile | None:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never raised
        problems.append(f"{path}: not readable Parquet ({type(exc).__name__}: {str(exc)[:200]})")
        return None


def read_frame(
    files: list[str], with_text: bool = False, only: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame | None, list[str], dict[str, Any]]:
    """The rows of a run's files as one frame (damaged files reported, not raised), and the first file's
    ``sentech_eval`` metadata. Text columns are left out unless ``with_text``; with ``only``, just those
    columns (where present) and the score columns are read.

    A frame is built one column at a time, each column's Arrow buffers given back before the next is
    read, so a million-row run costs about the frame's own size, not the frame plus the Arrow table."""
    problems: list[str] = []
    tables = []
    metadata: dict[str, Any] = {}
    for path in files:
        handle = _open(path, problems)
        if handle is None:
            continue
        names = handle.schema_arrow.names
        columns = names if with_text else [c for c in names if kept_column(c)]
        if only is not None:
            columns = [c for c in columns if c in only or c.startswith("score_")]
        if not metadata:
            raw = (handle.schema_arrow.metadata or {}).get(METADATA_KEY)
            try:
                metadata = json.loads(raw) if raw else {}
            except ValueError:
                metadata = {}
        if len(files) == 1:  # the usual case: straight from the file into pandas, column by column
            try:
                return _frame_by_column(handle, columns), problems, metadata
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
                return None, problems, metadata
            finally:
                handle.close()
                release_memory()
        try:
            table = handle.read(columns=columns)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        finally:
            handle.close()
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        return None, problems, metadata
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    if all(k in table.column_names for k in ("config_id", "prompt_id", "repeat")):
        table = keep_latest_per_key(table)
    frame = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    while table.num_columns:
        frame[table.column_names[0]] = _to_pandas(table.column(0))
        table = table.remove_column(0)
    del table
    release_memory()
    return frame, problems, metadata


def _frame_by_column(handle: pq.ParquetFile, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(index=pd.RangeIndex(handle.metadata.num_rows))
    for name in columns:
        column = handle.read(columns=[name], use_threads=False).column(0)
        frame[name] = _to_pandas(column)  # a new block per column: no consolidation copy of the frame
        del column
        pa.default_memory_pool().release_unused()
    return frame


def _to_pandas(column: pa.ChunkedArray) -> pd.Series:
    # strings stay Arrow-backed (pandas' "string[pyarrow]"): a million rows would otherwise be millions
    # of Python str objects, gigabytes for columns such as prompt_id, status or model
    return column.to_pandas(types_mapper=_arrow_strings)


def kept_column(name: str) -> bool:
    """Whether the summary and the plots read column ``name`` (text, details and bookkeeping are left out)."""
    return name not in TEXT_COLUMNS + UNUSED_COLUMNS and not name.endswith("_detail")


def release_memory() -> None:
    """Hand freed memory back to the system: Arrow's pool and the C allocator keep it otherwise, and the
    worker's resident size would stay at its peak between digests."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def setup_worker_memory() -> None:
    """Make freed memory go back to the system at once in the worker process (its initializer).

    Arrow allocates from the C allocator instead of its own pool (which keeps freed blocks), and glibc's
    mmap threshold is fixed, so large blocks (a column, a configuration's rows) are mapped and unmapped
    rather than left in the heap after a digest."""
    pa.set_memory_pool(pa.system_memory_pool())
    if _LIBC is not None:
        _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _arrow_strings(type_: pa.DataType):
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return pd.StringDtype("pyarrow")
    return None


def _first(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna().unique()})[:5]


def run_digest(files: list[str]) -> dict[str, Any]:
    """The runs-page line and the summary of a run's files (see the module docstring)."""
    df, problems, metadata = read_frame(files)
    digest: dict[str, Any] = {"problems": problems, "status": "ok"}
    if df is None:
        digest["status"] = "damaged" if problems else "empty"
        return digest
    digest["columns"] = list(df.columns)
    digest["n_rows"] = len(df)
    if "status" not in df.columns or "prompt_id" not in df.columns:
        digest["status"] = "foreign"
        return digest
    if df.empty:
        digest["status"] = "empty"
        return digest
    status = df["status"].astype(str)
    digest["n_ok"] = int((status == "ok").sum())
    digest["n_error"] = int((status != "ok").sum())
    for col in ("dataset", "backend", "model", "config_id"):
        digest[col] = _first(df[col]) if col in df.columns else []
    if "started_at" in df.columns and df["started_at"].notna().any():
        digest["started_at"] = pd.to_datetime(df["started_at"], utc=True).min().isoformat()
    digest["git_commit"] = metadata.get("git_commit")
    summary = summarize(df)
    labels = config_labels(summary)
    scores = score_columns(df)
    digest["scores"] = scores
    digest["labels"] = labels
    digest["summary"] = _jsonable(summary)
    digest["swept"] = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset")]
    digest["interval_notes"] = interval_notes(summary)
    digest["cache_note"] = cache_note(summary)
    digest["is_load"] = bool(load_metrics.is_load_run(df, load_metrics.SLO()))
    digest["sampling_values"] = {
        c: sorted(float(v) for v in df[c].dropna().unique())[:50]
        for c in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "max_tokens")
        if c in df.columns and pd.api.types.is_numeric_dtype(df[c]) and df[c].nunique() > 1
    }
    digest["repeats"] = int(df["repeat"].max()) + 1 if "repeat" in df.columns and df["repeat"].notna().any() else 1
    digest["cost_usd"] = float(summary["cost_usd"].sum()) if "cost_usd" in summary else None
    return digest


def _config_index(df: pd.DataFrame, summary: pd.DataFrame) -> pd.Series:
    """For each row, the position of its configuration in the summary (-1 if none).

    Keys are compared as text (missing as None); only each column's distinct values are turned into
    text, so a million rows cost a few integer arrays, not a million tuples."""
    keys = config_keys(df)
    if not keys:
        return pd.Series(0, index=df.index)

    def text(v) -> str | None:
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)

    lookup = {tuple(text(v) for v in row): i for i, row in enumerate(summary[keys].itertuples(index=False))}
    codes, distinct = [], []
    for col in keys:
        code, values = pd.factorize(df[col], use_na_sentinel=True)
        codes.append(code)
        distinct.append([text(v) for v in values])
    combos, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    positions = np.array(
        [lookup.get(tuple(None if c < 0 else distinct[j][c] for j, c in enumerate(combo)), -1) for combo in combos],
        dtype=np.int64,
    )
    return pd.Series(positions[np.asarray(inverse).reshape(-1)], index=df.index)


def run_plots(files: list[str], run_dir: str, summary_records: list[dict[str, Any]], labels: list[str]) -> dict:
    """The run page's pictures (``render.plots``), its load section and race section (``render``),
    from the files and the summary ``run_digest`` already made of them."""
    df, problems, _ = read_frame(files, only=PLOT_COLUMNS)
    if df is not None and "config_id" not in df.columns:
        del df
        df, problems, _ = read_frame(files, only=PLOT_COLUMNS + CONFIG_COLUMNS)  # the configuration's keys
    if df is not None and load_metrics.is_load_run(df, load_metrics.SLO()):
        del df
        df, problems, _ = read_frame(files)  # the load table reads every timing column
    out: dict[str, Any] = {
        "plots": [],
        "load_html": None,
        "race_html": None,
        "pass_at_html": None,
        "problems": problems,
    }
    if df is None or "status" not in df.columns or df.empty or not summary_records:
        return out
    summary = pd.DataFrame(summary_records)
    scores = score_columns(df)
    swept = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset")]
    images: list[tuple[str, str | None]] = []
    if swept:
        for score in scores:
            for param in swept:
                others = [p for p in swept if p != param]
                images.append((f"{score} vs {param}", plots.score_vs_param(summary, score, param, others)))
    else:
        images.append(("scores", plots.score_bars(summary, scores, labels)))
    df["_config"] = _config_index(df, summary)
    label_of = dict(enumerate(labels))
    if "latency_s" in df.columns:
        fresh = ~cached_mask(df)
        narrow = df[["status", "latency_s", "_config"]]
        images.append(("latency CDF", plots.latency_cdf(narrow if fresh.all() else narrow[fresh], label_of)))
        del narrow, fresh
    tokens = [c for c in ("status", "prompt_tokens", "completion_tokens", "_config") if c in df.columns]
    images.append(("token histograms", plots.token_histograms(df[tokens], label_of)))
    out["plots"] = [(alt, uri) for alt, uri in images if uri]
    slo = load_metrics.SLO()
    if load_metrics.is_load_run(df, slo):
        table = load_metrics.load_summary(df, slo)
        out["load_html"] = load_html(table, slo, load_metrics.load_knees(table))
    race = load_race(Path(run_dir))
    if race is not None:
        out["race_html"] = race_section_html(*race)
    out["pass_at_html"] = pass_at_k_html(summary) or None  # with repeats: pass@k and the best temperature per k
    return out


def sweep_extras(summary_records: list[dict[str, Any]], labels: list[str], score: str, x: str, y: str) -> dict:
    """The sweep page's heatmap over ``x`` × ``y`` for ``score`` and ``score`` against cost and latency
    with the Pareto front marked."""
    summary = pd.DataFrame(summary_records)
    out: dict[str, Any] = {"heatmap": None, "tradeoffs": []}
    if x and y and x != y and x in summary and y in summary:
        out["heatmap"] = plots.heatmap(summary, score, x, y)
    mean = f"{score}_mean"
    if mean not in summary:
        return out
    for column, label in (
        ("cost_usd", "total cost (USD)"),
        ("latency_s_p50", "latency p50 (s)"),
        ("latency_s_p95", "latency p95 (s)"),
    ):
        if column in summary and summary[column].notna().any():
            front = pareto_front(summary[mean], summary[column])
            uri = plots.score_tradeoff(summary, score, column, label, front, labels)
            if uri:
                on_front = [labels[i] for i in np.flatnonzero(front)]
                out["tradeoffs"].append({"column": column, "label": label, "uri": uri, "front": on_front})
    return out


def _select(df: pd.DataFrame, config_id: str | None) -> pd.DataFrame:
    if config_id and "config_id" in df.columns:
        return df[df["config_id"].astype(str) == config_id]
    return df


def _clip(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if len(text) <= FLIP_TEXT_LIMIT else text[:FLIP_TEXT_LIMIT] + " …"


def compare_digest(
    a_files: list[str], a_config: str | None, b_files: list[str], b_config: str | None
) -> dict[str, Any]:
    """``analysis.compare``'s metrics of B against A and the rows whose pass/fail flipped."""
    frames = []
    for role, files, config in (("A", a_files, a_config), ("B", b_files, b_config)):
        df, problems, _ = read_frame(files, with_text=True)
        if df is None or "prompt_id" not in df.columns or "repeat" not in df.columns:
            return {"error": f"{role} has no readable sentech-eval rows" + (f": {problems[0]}" if problems else ".")}
        df = _select(df, config).copy()
        if df.empty:
            return {"error": f"{role} has no rows of configuration {config}."}
        df["prompt_id"] = df["prompt_id"].astype(str)
        df["repeat"] = pd.to_numeric(df["repeat"], errors="coerce").fillna(0).astype("int64")
        frames.append(df)
    a, b = frames
    try:
        paired = pair_frames(a, b, "A", "B")
    except Exception as exc:  # noqa: BLE001 - the refusal sentences of analysis.pairing, shown on the page
        return {"error": str(exc)}
    paired.label_a = default_label(a, "A")
    paired.label_b = default_label(b, "B")
    metrics = compare(paired)
    pairs = paired.pairs
    flips = []
    for score in paired.scores:
        sa = pd.to_numeric(pairs[f"{score}_a"], errors="coerce")
        sb = pd.to_numeric(pairs[f"{score}_b"], errors="coerce")
        for direction, mask in (("pass→fail", (sa == 1) & (sb == 0)), ("fail→pass", (sa == 0) & (sb == 1))):
            for _, row in pairs[mask].head(MAX_FLIPS).iterrows():
                flips.append(
                    {
                        "score": score,
                        "direction": direction,
                        "prompt_id": str(row["prompt_id"]),
                        "repeat": int(row["repeat"]),
                        "keys": {k: _clip(row[k]) for k in paired.keys if k not in ("prompt_id", "repeat")},
                        "prompt": _clip(row.get("prompt_a", row.get("prompt"))),
                        "reference": _clip(row.get("reference_a", row.get("reference"))),
                        "output_a": _clip(row.get("output_a")),
                        "output_b": _clip(row.get("output_b")),
                        "detail_a": _clip(row.get(f"{score}_detail_a")),
                        "detail_b": _clip(row.get(f"{score}_detail_b")),
                    }
                )
    return {
        "label_a": paired.label_a,
        "label_b": paired.label_b,
        "metrics": _jsonable(metrics),
        "warnings": comparison_warnings(paired),
        "keys": paired.keys,
        "flips": flips,
        "n_pairs": paired.n_pairs,
    }


def history_plot(points: list[dict[str, Any]], score: str) -> str | None:
    """``render.plots.score_history`` of one score over the runs in ``points``."""
    return plots.score_history(pd.DataFrame(points), score)
