"""What the viewer knows about a run, computed once per file identity (in the viewer's worker process).

``run_digest`` reads a run's files a row group at a time (the columns it needs, never the text), checks
which are damaged, and returns plain JSON-able data: the runs-page line and the summary rows of
``report`` (``analysis.batched_summary``: ``analysis.summary.summarize``'s numbers without the run in
memory whole). ``run_plots`` adds the pictures of ``render.plots`` (drawn from a compact frame of the
ok rows: latency, tokens and configuration) and the load and race sections of ``render``;
``sweep_extras`` the heatmap and the score against cost and latency with the Pareto front
(``analysis.pareto``); ``compare_digest`` the paired statistics of ``analysis.compare`` and the rows
that flipped; ``history_plot`` a score over a series of runs. matplotlib and the comparison's modules
are imported by the functions that draw or compare, so a worker that only summarises does without them.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.analysis import slo as load_metrics
from sentech_eval.analysis.batched_summary import BatchedSummary, key_codes, summary_columns
from sentech_eval.analysis.summary import (
    cache_note,
    cached_mask,
    config_keys,
    config_labels,
    interval_notes,
    score_columns,
    swept_parameters,
)
from sentech_eval.engine.results import KEY_COLUMNS, METADATA_KEY, ROW_GROUP_ROWS, keep_latest_per_key
from sentech_eval.view import memory

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
# What the runs-page line reads besides the summary's columns.
SAMPLING_VALUE_COLUMNS = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "max_tokens")
LINE_COLUMNS = (
    "status",
    "dataset",
    "backend",
    "model",
    "config_id",
    "started_at",
    "repeat",
    "arrival",
    "itl_s",
    "job",
) + SAMPLING_VALUE_COLUMNS
FLIP_TEXT_LIMIT = 4000
MAX_FLIPS = 5000
BATCH_ROWS = ROW_GROUP_ROWS // 4  # a quarter of a row group decoded at a time: a few MB, whatever the run's size
LARGE_ROWS = 200_000  # after a digest of more rows the worker hands its memory back (a full collection)
ROWS_READ = [0]  # rows read since the worker's last task began (view.worker retires a worker that read many)


def _jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with NaN as None and numpy values as Python ones."""
    return json.loads(frame.to_json(orient="records", date_format="iso", default_handler=str))


def _open(path: str, problems: list[str]) -> pq.ParquetFile | None:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never raised
        problems.append(f"{path}: not readable Parquet ({type(exc).__name__}: {str(exc)[:200]})")
        return None


def _metadata(handle: pq.ParquetFile) -> dict[str, Any]:
    raw = (handle.schema_arrow.metadata or {}).get(METADATA_KEY)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class RunBatches:
    """A run's files read as record batches of some columns: one file row group by row group; several files
    (``results.parts/``) joined, the latest row of each (config_id, prompt_id, repeat) kept.

    ``schema`` is the union of the files' columns (None when no file can be read), ``metadata`` the first
    file's ``sentech_eval`` metadata, ``problems`` what could not be read (a damaged file is reported and
    skipped; a row group that fails to read ends the batches and is reported)."""

    def __init__(self, files: list[str]) -> None:
        self.problems: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.handles: list[tuple[str, pq.ParquetFile]] = []
        schemas = []
        for path in files:
            handle = _open(path, self.problems)
            if handle is None:
                continue
            if not self.handles:
                self.metadata = _metadata(handle)
            self.handles.append((path, handle))
            schemas.append(handle.schema_arrow.remove_metadata())
        self.schema: pa.Schema | None = None
        if schemas:
            try:
                self.schema = pa.unify_schemas(schemas, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                self.problems.append(f"the files' columns do not fit together ({exc})")
                self.close()

    @property
    def names(self) -> list[str]:
        return list(self.schema.names) if self.schema is not None else []

    def batches(self, columns: list[str], rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows' ``columns`` (those the run has), ``rows`` at a time."""
        if len(self.handles) == 1:
            path, handle = self.handles[0]
            try:
                for batch in handle.iter_batches(batch_size=rows, columns=columns, use_threads=False):
                    ROWS_READ[0] += batch.num_rows
                    yield batch
            except Exception as exc:  # noqa: BLE001
                self.problems.append(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
            return
        tables = []
        for path, handle in self.handles:
            try:
                present = [c for c in columns + list(KEY_COLUMNS) if c in handle.schema_arrow.names]
                tables.append(handle.read(columns=list(dict.fromkeys(present))).replace_schema_metadata(None))
            except Exception as exc:  # noqa: BLE001
                self.problems.append(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
        if not tables:
            return
        table = pa.concat_tables(tables, promote_options="permissive")
        del tables
        if all(k in table.column_names for k in KEY_COLUMNS):
            table = keep_latest_per_key(table)
        ROWS_READ[0] += table.num_rows
        yield from table.select([c for c in columns if c in table.column_names]).to_batches(rows)

    def close(self) -> None:
        for _, handle in self.handles:
            handle.close()
        self.handles = []


def read_frame(
    files: list[str], with_text: bool = False, only: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame | None, list[str], dict[str, Any]]:
    """The rows of a run's files as one frame (damaged files reported, not raised), and the first file's
    ``sentech_eval`` metadata. Text columns are left out unless ``with_text``; with ``only``, just those
    columns (where present) and the score columns are read. For what needs whole rows (a comparison's
    pairs, a load run's table); the summary and the plots read batches (``RunBatches``)."""
    run = RunBatches(files)
    try:
        if run.schema is None:
            return None, run.problems, run.metadata
        columns = [c for c in run.names if with_text or kept_column(c)]
        if only is not None:
            columns = [c for c in columns if c in only or c.startswith("score_")]
        batches = list(run.batches(columns))
        if not batches and run.problems:
            return None, run.problems, run.metadata
        schema = pa.schema([run.schema.field(c) for c in columns])
        table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        del batches
        frame = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
        while table.num_columns:  # a column at a time, each one's Arrow buffers given back before the next
            frame[table.column_names[0]] = _to_pandas(table.column(0))
            table = table.remove_column(0)
        return frame, run.problems, run.metadata
    finally:
        run.close()


def _to_pandas(column: pa.ChunkedArray) -> pd.Series:
    # strings stay Arrow-backed (pandas' "string[pyarrow]"): a million rows would otherwise be millions
    # of Python str objects, gigabytes for columns such as prompt_id, status or model
    return column.to_pandas(types_mapper=_arrow_strings)


def kept_column(name: str) -> bool:
    """Whether the summary and the plots read column ``name`` (text, details and bookkeeping are left out)."""
    return name not in TEXT_COLUMNS + UNUSED_COLUMNS and not name.endswith("_detail")


def release_memory(collect: bool = True) -> None:
    """Hand freed memory back to the system (``view.memory.release``): the idle worker gives its peak back."""
    memory.release(collect)


def setup_worker_memory() -> None:
    """The worker process's memory set-up (its initializer): Arrow on the C allocator (``view.memory``), and
    the modules every digest needs imported and frozen out of the garbage collector's reach, so that a
    collection after a large digest costs little."""
    memory.use_system_allocator()
    gc.collect()
    gc.freeze()


def _arrow_strings(type_: pa.DataType):
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return pd.StringDtype("pyarrow")
    return None


def _plain_floats(column: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


class RunLine:
    """The runs-page line of a run, fed the same batches as its summary: rows ok and in error, the first
    datasets, backends, models and configurations, the earliest start, the repeats, the sampling values
    that vary and whether it is a load run (``analysis.slo.is_load_run``'s questions)."""

    KEEP = 1000  # distinct values kept per column before the largest are dropped (only the smallest are shown)

    def __init__(self, names: list[str]) -> None:
        names = [c for c in names if c in LINE_COLUMNS]  # what it is fed: LINE_COLUMNS, where the run has them
        self.names = names
        self.n_rows = self.n_ok = 0
        self.distinct: dict[str, set] = {c: set() for c in ("dataset", "backend", "model", "config_id") if c in names}
        self.sampling: dict[str, set] = {c: set() for c in SAMPLING_VALUE_COLUMNS if c in names}
        self.sampling_several: dict[str, bool] = dict.fromkeys(self.sampling, False)
        self.started: Any = None
        self.repeat_max: float | None = None
        self.open_loop = False  # some arrival other than "closed"
        self.streamed = False  # some itl_s
        self.jobs: dict[Any, set] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        self.n_rows += batch.num_rows
        status = batch.column("status")
        if pa.types.is_dictionary(status.type):
            status = status.dictionary_decode()
        self.n_ok += int(pc.sum(pc.fill_null(pc.equal(pc.cast(status, pa.string()), "ok"), False)).as_py() or 0)
        for name, seen in self.distinct.items():
            seen.update(str(v) for v in pc.unique(batch.column(name)).to_pylist() if v is not None)
            _keep_smallest(seen, 5, self.KEEP)
        for name, seen in self.sampling.items():
            values = _plain_floats(batch.column(name))
            seen.update(float(v) for v in np.unique(values[~np.isnan(values)]))
            if len(seen) > 1:
                self.sampling_several[name] = True
            _keep_smallest(seen, 50, self.KEEP)
        if "started_at" in self.names and pa.types.is_timestamp(batch.schema.field("started_at").type):
            first = pc.min(batch.column("started_at")).as_py()
            if first is not None and (self.started is None or first < self.started):
                self.started = first
        if "repeat" in self.names:
            repeats = _plain_floats(batch.column("repeat"))
            if np.any(~np.isnan(repeats)):
                top = float(np.nanmax(repeats))
                self.repeat_max = top if self.repeat_max is None else max(self.repeat_max, top)
        if "arrival" in self.names and not self.open_loop:
            arrival = batch.column("arrival")
            if pa.types.is_dictionary(arrival.type):
                arrival = arrival.dictionary_decode()
            arrival = pc.drop_null(arrival)
            self.open_loop = bool(len(arrival)) and bool(
                pc.any(pc.not_equal(pc.cast(arrival, pa.string()), "closed")).as_py()
            )
        if "itl_s" in self.names and not self.streamed:
            self.streamed = batch.column("itl_s").null_count < batch.num_rows
        if "job" in self.names and "config_id" in self.names:
            pairs = (
                pa.table({"c": batch.column("config_id"), "j": batch.column("job")}).group_by(["c", "j"]).aggregate([])
            )
            for config, job in zip(pairs.column("c").to_pylist(), pairs.column("j").to_pylist()):
                if config is not None and job is not None:
                    self.jobs.setdefault(config, set()).add(job)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_rows": self.n_rows, "n_ok": self.n_ok, "n_error": self.n_rows - self.n_ok}
        for col in ("dataset", "backend", "model", "config_id"):
            out[col] = sorted(self.distinct[col])[:5] if col in self.distinct else []
        if self.started is not None:
            out["started_at"] = pd.Timestamp(self.started).isoformat()
        out["is_load"] = self.open_loop or self.streamed or any(len(jobs) > 1 for jobs in self.jobs.values())
        out["sampling_values"] = {
            c: sorted(values)[:50] for c, values in self.sampling.items() if self.sampling_several[c]
        }
        out["repeats"] = int(self.repeat_max) + 1 if self.repeat_max is not None else 1
        return out


def _keep_smallest(values: set, keep: int, limit: int) -> None:
    if len(values) > limit:
        for value in sorted(values)[keep:]:
            values.discard(value)


def run_digest(files: list[str]) -> dict[str, Any]:
    """The runs-page line and the summary of a run's files (see the module docstring)."""
    run = RunBatches(files)
    try:
        return _run_digest(run)
    finally:
        run.close()
        release_memory(collect=False)


def _run_digest(run: RunBatches) -> dict[str, Any]:
    digest: dict[str, Any] = {"problems": run.problems, "status": "ok"}
    if run.schema is None:
        digest["status"] = "damaged" if run.problems else "empty"
        return digest
    names = run.names
    digest["columns"] = [c for c in names if kept_column(c)]
    if "status" not in names or "prompt_id" not in names:
        digest["status"] = "foreign"
        digest["n_rows"] = sum(h.metadata.num_rows for _, h in run.handles)
        return digest
    columns = list(dict.fromkeys(summary_columns(names) + [c for c in LINE_COLUMNS if c in names]))
    summary_rows = BatchedSummary(run.schema)
    line = RunLine(names)
    for batch in run.batches(columns):
        summary_rows.add(batch)
        line.add(batch)
    if line.n_rows == 0:
        digest["status"] = "damaged" if run.problems else "empty"
        digest["n_rows"] = 0
        return digest
    fields = line.fields()
    digest.update(fields)
    digest["git_commit"] = run.metadata.get("git_commit")
    summary = summary_rows.result()
    digest["scores"] = summary_rows.scores()
    del summary_rows
    if line.n_rows >= LARGE_ROWS:
        release_memory()
    labels = config_labels(summary)
    digest["labels"] = labels
    digest["summary"] = _jsonable(summary)
    digest["swept"] = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset")]
    digest["interval_notes"] = interval_notes(summary)
    digest["cache_note"] = cache_note(summary)
    digest["cost_usd"] = float(summary["cost_usd"].sum()) if "cost_usd" in summary else None
    return digest


def _summary_scores(summary: pd.DataFrame) -> list[str]:
    """The score columns a summary has (``<score>_ci_method`` for each), in order."""
    return [
        c.removesuffix("_ci_method") for c in summary.columns if c.startswith("score_") and c.endswith("_ci_method")
    ]


def _config_index(df: pd.DataFrame, summary: pd.DataFrame) -> pd.Series:
    """For each row, the position of its configuration in the summary (-1 if none).

    Keys are compared as text (missing as None); only each column's distinct values are turned into
    text, so a million rows cost a few integer arrays, not a million tuples."""
    keys = config_keys(df)
    if not keys:
        return pd.Series(0, index=df.index)
    lookup = _summary_lookup(summary, keys)
    codes, distinct = [], []
    for col in keys:
        code, values = pd.factorize(df[col], use_na_sentinel=True)
        codes.append(code)
        distinct.append([_key_text(v) for v in values])
    combos, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    positions = np.array(
        [lookup.get(tuple(None if c < 0 else distinct[j][c] for j, c in enumerate(combo)), -1) for combo in combos],
        dtype=np.int64,
    )
    return pd.Series(positions[np.asarray(inverse).reshape(-1)], index=df.index)


def plot_frame(run: RunBatches, summary: pd.DataFrame) -> pd.DataFrame:
    """The ok rows as the run page's latency and token plots read them: ``status`` ("ok"), ``latency_s``
    (missing for rows from the response cache: the CDF is of what this run measured), ``prompt_tokens``,
    ``completion_tokens`` (float32: a picture's precision) and ``_config`` (the row's position in the
    summary) - 15 bytes a row, read a quarter row group at a time with Arrow alone."""
    names = run.names
    keys = config_keys(pd.DataFrame(columns=names))
    lookup = _summary_lookup(summary, keys)
    wanted = ["status", "latency_s", "cached", "prompt_tokens", "completion_tokens"] + keys
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("latency_s", "prompt_tokens", "completion_tokens", "_config")}
    for batch in run.batches([c for c in dict.fromkeys(wanted) if c in names]):
        status = batch.column("status")
        if pa.types.is_dictionary(status.type):
            status = status.dictionary_decode()
        ok = pc.fill_null(pc.equal(pc.cast(status, pa.string()), "ok"), False).to_numpy(zero_copy_only=False)
        if not ok.any():
            continue
        fresh = np.ones(batch.num_rows, dtype=bool)
        if "cached" in names:
            fresh = ~pc.fill_null(pc.cast(batch.column("cached"), pa.bool_()), False).to_numpy(zero_copy_only=False)
        for col in ("latency_s", "prompt_tokens", "completion_tokens"):
            values = _plain_floats(batch.column(col)) if col in names else np.full(batch.num_rows, np.nan)
            if col == "latency_s":
                values = np.where(fresh, values, np.nan)
            parts[col].append(values[ok].astype(np.float32))  # a picture's precision, half the memory
        parts["_config"].append(_config_positions(batch, keys, lookup)[ok])
    frame = pd.DataFrame({c: np.concatenate(v) if v else np.array([]) for c, v in parts.items()})
    ok_codes = np.ones(len(frame), dtype=np.int8)  # every row "ok", without a million strings to categorise
    frame.insert(0, "status", pd.Categorical.from_codes(ok_codes, categories=["error", "ok"]))
    return frame


def _key_text(value: Any) -> str | None:
    """A configuration key as text (missing as None): how a row's key is matched to a summary row's."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _summary_lookup(summary: pd.DataFrame, keys: list[str]) -> dict[tuple, int]:
    """Each summary row's configuration key (as text) -> its position."""
    if not keys:
        return {}
    return {tuple(_key_text(v) for v in row): i for i, row in enumerate(summary[keys].itertuples(index=False))}


def _config_positions(batch: pa.RecordBatch, keys: list[str], lookup: dict[tuple, int]) -> np.ndarray:
    """Each row's position in the summary (-1 if none): the keys' distinct values of the batch looked up."""
    if not keys:
        return np.zeros(batch.num_rows, dtype=np.int16)
    codes, values = key_codes(batch, keys)
    distinct = [[_key_text(v) for v in column_values] for column_values in values]
    combos, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    positions = np.array(
        [lookup.get(tuple(None if c < 0 else distinct[j][c] for j, c in enumerate(combo)), -1) for combo in combos],
        dtype=np.int16,
    )
    return positions[np.asarray(inverse).reshape(-1)]


def _score_images(summary: pd.DataFrame, scores: list[str], labels: list[str]) -> list[tuple[str, str | None]]:
    """Each score against each swept setting (``render.plots.score_vs_param``), or the scores' bars."""
    from sentech_eval.render import plots

    swept = [p for p in swept_parameters(summary) if p not in ("backend", "model", "dataset")]
    if not swept:
        return [("scores", plots.score_bars(summary, scores, labels))]
    return [
        (f"{score} vs {param}", plots.score_vs_param(summary, score, param, [p for p in swept if p != param]))
        for score in scores
        for param in swept
    ]


def run_plots(files: list[str], run_dir: str, summary_records: list[dict[str, Any]], labels: list[str]) -> dict:
    """The run page's pictures (``render.plots``), its load section and race section (``render``),
    from the files and the summary ``run_digest`` already made of them."""
    from sentech_eval.render import plots
    from sentech_eval.render.pass_at_k import pass_at_k_html
    from sentech_eval.render.race import load_race, race_section_html

    out: dict[str, Any] = {"plots": [], "load_html": None, "race_html": None, "pass_at_html": None, "problems": []}
    run = RunBatches(files)
    try:
        out["problems"] = run.problems
        if run.schema is None or "status" not in run.names or not summary_records:
            return out
        line = RunLine(run.names)  # is it a load run? (its table reads every timing column)
        for batch in run.batches([c for c in LINE_COLUMNS if c in run.names]):
            line.add(batch)
        if not line.n_rows:
            return out
        summary = pd.DataFrame(summary_records)
        if line.fields()["is_load"]:
            return _load_run_plots(files, run_dir, summary, labels, out)
        scores = _summary_scores(summary)
        images = _score_images(summary, scores, labels)
        frame = plot_frame(run, summary)
        label_of = dict(enumerate(labels))
        if "latency_s" in run.names:
            images.append(("latency CDF", plots.latency_cdf(frame[["status", "latency_s", "_config"]], label_of)))
        images.append(("token histograms", plots.token_histograms(frame, label_of)))
        del frame
        out["plots"] = [(alt, uri) for alt, uri in images if uri]
        race = load_race(Path(run_dir))
        if race is not None:
            out["race_html"] = race_section_html(*race)
        out["pass_at_html"] = pass_at_k_html(summary) or None  # with repeats: pass@k and the best temperature per k
        return out
    finally:
        run.close()
        release_memory()  # the figures' objects hold cycles: a collection frees them


def _load_run_plots(files: list[str], run_dir: str, summary: pd.DataFrame, labels: list[str], out: dict) -> dict:
    """``run_plots`` of a load run: the same pictures from the whole frame, and the load table with its knees."""
    from sentech_eval.render import plots
    from sentech_eval.render.load import load_html
    from sentech_eval.render.pass_at_k import pass_at_k_html
    from sentech_eval.render.race import load_race, race_section_html

    df, problems, _ = read_frame(files)
    out["problems"] = problems
    if df is None or "status" not in df.columns or df.empty:
        return out
    scores = score_columns(df)
    images = _score_images(summary, scores, labels)
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
    table = load_metrics.load_summary(df, slo)
    out["load_html"] = load_html(table, slo, load_metrics.load_knees(table))
    race = load_race(Path(run_dir))
    if race is not None:
        out["race_html"] = race_section_html(*race)
    out["pass_at_html"] = pass_at_k_html(summary) or None
    return out


def sweep_extras(summary_records: list[dict[str, Any]], labels: list[str], score: str, x: str, y: str) -> dict:
    """The sweep page's heatmap over ``x`` × ``y`` for ``score`` and ``score`` against cost and latency
    with the Pareto front marked."""
    from sentech_eval.analysis.pareto import pareto_front
    from sentech_eval.render import plots

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
    from sentech_eval.analysis.compare import compare, comparison_warnings, default_label
    from sentech_eval.analysis.pairing import pair_frames

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
    from sentech_eval.render import plots

    return plots.score_history(pd.DataFrame(points), score)
