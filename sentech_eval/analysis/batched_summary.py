"""``report``'s summary from Arrow record batches: a large run is never in memory whole.

``BatchedSummary`` takes a run's rows a batch at a time (a Parquet row group; only the columns of
``summary_columns``) and ``result()`` returns the frame ``summary.summarize`` returns for the same rows
- equal in every number (tests/analysis/test_batched_summary.py proves it on varied results). Per
configuration it keeps only what the statistics need:

- counts (rows, ok, cached), the configuration's values (first, smallest, whether they differ),
  sums of token counts, and the fresh rows' earliest start and latest end (the wall-clock span);
- row by row, what needs the raw values: each score's value with the row's prompt (the interval is
  clustered over prompts: per-prompt sums for a 0/1 score, resampled prompts for the bootstrap; pass@k
  counts per prompt; a 0/1 score is kept in one byte), the fresh rows' latency and TTFT (percentiles),
  their decode speeds (a median) and the costs (a sum) - about 30 bytes a row with two 0/1 scores, against
  about 225 for a pandas frame of the same columns.

The statistics themselves are ``analysis.stats``' (``mean_ci_coded``, ``percentiles``), ``summary``'s
(``pass_at_columns``, ``decode_rates``, ``summary_frame``) and ``cost``'s (``cost_columns``); only the
bookkeeping is here. Token sums are exact for whole-number counts (what results hold); a prompt id is
read as text, a missing one as "None".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sentech_eval.analysis import cost, stats
from sentech_eval.analysis.summary import (
    CONFIG_COLUMNS,
    DEFAULT_PASS_AT,
    LATENCY_QS,
    TTFT_QS,
    decode_rates,
    interval_columns,
    pass_at_columns,
    summary_frame,
)
from sentech_eval.engine.results import is_quality_score

ROW_COLUMNS = (
    "config_id",
    "status",
    "prompt_id",
    "repeat",
    "cached",
    "latency_s",
    "ttft_s",
    "completion_tokens",
    "prompt_tokens",
    "started_at",
    cost.COST_COLUMN,
)


def summary_columns(names: Sequence[str]) -> list[str]:
    """The columns (of ``names``) the summary reads: configuration, status, timing, tokens, cost, scores."""
    wanted = set(ROW_COLUMNS) | set(CONFIG_COLUMNS)
    return [c for c in names if c in wanted or is_quality_score(c)]


def config_keys_of(names: Sequence[str]) -> list[str]:
    """``summary.config_keys`` from column names."""
    if "config_id" in names:
        return ["config_id"] + (["dataset"] if "dataset" in names else [])
    return [c for c in CONFIG_COLUMNS if c in names and c != "seed"]


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def _floats(column: pa.Array) -> np.ndarray:
    """The column as float64 with NaN for missing (as ``Series.to_numpy(dtype=float, na_value=nan)``)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not (_numeric(column.type) or pa.types.is_boolean(column.type)) and column.null_count == len(column):
        return np.full(len(column), np.nan)
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _text(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _plain(value: Any) -> Any:
    """A key value as ``groupby(dropna=False)`` sees it: every missing value (None, NaN) is one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


@dataclass
class _Value:
    """One configuration column's values: ``summary._config_value`` (the value, or the smallest of several)."""

    first: Any = None
    smallest: Any = None
    several: bool = False
    comparable: bool = True

    def add(self, distinct: list) -> None:
        for value in distinct:
            if self.first is None:
                self.first = self.smallest = value
                continue
            if value != self.first:
                self.several = True
            if self.comparable:
                try:
                    self.smallest = min(self.smallest, value)
                except TypeError:
                    self.comparable = False

    def value(self, as_float: bool) -> Any:
        chosen = self.smallest if self.several and self.comparable else self.first
        return float(chosen) if as_float and chosen is not None else chosen


def _chunks(parts: list[np.ndarray], dtype: Any = float) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([], dtype=dtype)


def _compact(values: np.ndarray) -> np.ndarray:
    """A score's values kept small: 0/1 (and NaN) as int8 (-1 for NaN), one byte instead of eight."""
    present = ~np.isnan(values)
    if np.isin(values[present], (0.0, 1.0)).all():
        return np.where(present, values, -1.0).astype(np.int8)
    return values


def _expand(parts: list[np.ndarray]) -> np.ndarray:
    """The float64 values of ``_compact``ed chunks, in order."""
    out = [np.where(p < 0, np.nan, p.astype(float)) if p.dtype == np.int8 else p for p in parts]
    return _chunks(out)


@dataclass
class _Config:
    """What one configuration's summary row needs (see the module docstring)."""

    n: int = 0
    n_ok: int = 0
    n_cached: int = 0
    values: dict[str, _Value] = field(default_factory=dict)
    prompts: list[np.ndarray] = field(default_factory=list)  # each row's prompt (stacked ids, see BatchedSummary)
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # ok rows' values, NaN elsewhere
    latency: list[np.ndarray] = field(default_factory=list)  # fresh ok rows
    ttft: list[np.ndarray] = field(default_factory=list)  # fresh ok rows
    decode: list[np.ndarray] = field(default_factory=list)  # fresh ok rows' decode speeds
    costs: list[np.ndarray] = field(default_factory=list)
    completion_ok: float = 0.0
    completion_ok_n: int = 0
    completion_all: float = 0.0
    completion_fresh: float = 0.0
    prompt_tokens: float = 0.0
    prompt_tokens_n: int = 0
    fresh: int = 0
    started: bool = False  # some fresh row has a start time
    start: Any = None  # the fresh rows' earliest start and latest end (pandas Timestamps)
    end: Any = None


def key_codes(batch: pa.RecordBatch, keys: list[str]) -> tuple[list[np.ndarray], list[list[Any]]]:
    """Per key column of ``batch``: each row's code (-1 for null) and the distinct values the codes index."""
    codes, distinct = [], []
    for key in keys:
        column = batch.column(key)
        if pa.types.is_null(column.type):
            codes.append(np.full(batch.num_rows, -1, dtype=np.int64))
            distinct.append([])
            continue
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        codes.append(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))
        distinct.append(encoded.dictionary.to_pylist())
    return codes, distinct


class BatchedSummary:
    """``summary.summarize`` fed a batch at a time (see the module docstring).

    ``schema`` is the run's schema (all batches have its columns, or those of ``summary_columns``);
    ``confidence``, ``n_resamples``, ``seed`` and ``pass_at`` mean what they mean for ``summarize``
    (the clusters are the prompts)."""

    def __init__(
        self,
        schema: pa.Schema,
        confidence: float = 0.95,
        n_resamples: int = stats.DEFAULT_RESAMPLES,
        seed: int = 0,
        pass_at: Sequence[int] | None = None,
    ) -> None:
        self.names = summary_columns(schema.names)
        self.types = {name: schema.field(name).type for name in self.names}
        self.confidence, self.n_resamples, self.seed, self.pass_at = confidence, n_resamples, seed, pass_at
        self.keys = config_keys_of(self.names)
        self.value_columns = (["config_id"] if "config_id" in self.names else []) + [
            c for c in CONFIG_COLUMNS if c in self.names
        ]
        self.candidates = [c for c in self.names if is_quality_score(c)]
        self.configs: dict[tuple, _Config] = {}
        self.dictionaries: list[pa.Array] = []  # each batch's distinct prompt ids
        self.stacked = 0  # how many ids those hold together
        self.nulls: dict[str, bool] = dict.fromkeys(self.names, False)  # a column with a missing value
        self.all_null: dict[str, bool] = dict.fromkeys(self.names, True)  # a column with none present
        self.valued: dict[str, bool] = dict.fromkeys(self.names, False)  # a number that is not NaN
        self.ok_binary: dict[str, bool] = dict.fromkeys(self.candidates, True)  # stats.is_binary over ok rows
        self.ok_scored: dict[str, bool] = dict.fromkeys(self.candidates, False)
        self.all_binary: dict[str, bool] = dict.fromkeys(self.candidates, True)  # ... over every row
        self.repeated = False  # some repeat > 0

    # ------------------------------------------------------------------ reading
    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Count one batch of rows (a record batch or a table with the schema's columns)."""
        if isinstance(batch, pa.Table):
            for part in batch.combine_chunks().to_batches():
                self.add(part)
            return
        if batch.num_rows == 0:
            return
        for name in self.names:
            column = batch.column(name)
            if column.null_count:
                self.nulls[name] = True
            if column.null_count < len(column):
                self.all_null[name] = False
        if "repeat" in self.names:
            self.repeated = self.repeated or bool(np.any(_floats(batch.column("repeat")) > 0))
        for name in ("ttft_s", cost.COST_COLUMN):
            if name in self.names and not self.valued[name]:
                self.valued[name] = bool(np.any(~np.isnan(_floats(batch.column(name)))))
        prompts = self._prompt_ids(batch)
        for config, rows in self._split(batch):
            part = batch if rows is None else batch.take(pa.array(rows))
            self._add_part(config, part, prompts if rows is None else prompts[rows])

    def _prompt_ids(self, batch: pa.RecordBatch) -> np.ndarray | None:
        """Each row's prompt as a stacked id: its index in this batch's distinct ids, after those of earlier
        batches (``result`` maps them to one numbering)."""
        if "prompt_id" not in self.names:
            return None
        column = _text(batch.column("prompt_id"))
        if column.null_count:
            column = pc.fill_null(column, "None")  # as str(None): a missing prompt id is one prompt
        encoded = pc.dictionary_encode(column)
        ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32) + np.int32(self.stacked)
        self.dictionaries.append(encoded.dictionary)
        self.stacked += len(encoded.dictionary)
        return ids

    def _split(self, batch: pa.RecordBatch):
        """(configuration, its rows' positions or None for all) for each configuration in the batch, in the
        order the configurations first appear."""
        if not self.keys:
            yield self._config(()), None
            return
        codes, distinct = key_codes(batch, self.keys)
        combos, first, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_index=True, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        configs = [
            self._config(tuple(_plain(distinct[j][c]) if c >= 0 else None for j, c in enumerate(combo)))
            for combo in combos
        ]
        if len(set(map(id, configs))) == 1:
            yield configs[0], None
            return
        merged: dict[int, list[np.ndarray]] = {}
        for index in np.argsort(first, kind="stable"):
            merged.setdefault(id(configs[index]), []).append(np.flatnonzero(inverse == index))
        by_id = {id(c): c for c in configs}
        for key, parts in merged.items():  # NaN and None keys are one configuration, as in groupby(dropna=False)
            yield by_id[key], np.sort(np.concatenate(parts))

    def _config(self, key: tuple) -> _Config:
        config = self.configs.get(key)
        if config is None:
            config = self.configs[key] = _Config(values={c: _Value() for c in self.value_columns})
        return config

    def _add_part(self, config: _Config, part: pa.RecordBatch, prompts: np.ndarray | None) -> None:
        rows = part.num_rows
        names = self.names
        ok = pc.fill_null(pc.equal(_text(part.column("status")), "ok"), False).to_numpy(zero_copy_only=False)
        cached = (
            pc.fill_null(pc.cast(part.column("cached"), pa.bool_()), False).to_numpy(zero_copy_only=False)
            if "cached" in names
            else np.zeros(rows, dtype=bool)
        )
        fresh = ~cached
        fresh_ok = ok & fresh
        config.n += rows
        config.n_ok += int(ok.sum())
        config.n_cached += int(cached.sum())
        config.fresh += int(fresh.sum())
        for name, value in config.values.items():
            column = part.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            distinct = [_plain(v) for v in pc.unique(column).to_pylist()]
            value.add([v for v in distinct if v is not None])
        if prompts is not None:
            config.prompts.append(prompts)
        for name in self.candidates:
            values = _floats(part.column(name))
            present = ~np.isnan(values)
            on_ok = values[ok & present]
            if on_ok.size:
                self.ok_scored[name] = True
                self.ok_binary[name] = self.ok_binary[name] and bool(np.isin(on_ok, (0.0, 1.0)).all())
            if present.any():
                self.valued[name] = True
                if self.all_binary[name]:
                    self.all_binary[name] = bool(np.isin(values[present], (0.0, 1.0)).all())
            config.scores.setdefault(name, []).append(_compact(np.where(ok, values, np.nan)))
        latency = _floats(part.column("latency_s")) if "latency_s" in names else None
        ttft = _floats(part.column("ttft_s")) if "ttft_s" in names else None
        completion = _floats(part.column("completion_tokens")) if "completion_tokens" in names else None
        if latency is not None:
            config.latency.append(latency[fresh_ok])
        if ttft is not None:
            config.ttft.append(ttft[fresh_ok])
        if latency is not None and ttft is not None and completion is not None:
            config.decode.append(decode_rates(completion[fresh_ok], latency[fresh_ok], ttft[fresh_ok]))
        if completion is not None:
            config.completion_ok += float(np.nansum(completion[ok]))
            config.completion_ok_n += int(np.count_nonzero(~np.isnan(completion[ok])))
            config.completion_all += float(np.nansum(completion))
            config.completion_fresh += float(np.nansum(completion[fresh]))
        if "prompt_tokens" in names:
            tokens = _floats(part.column("prompt_tokens"))
            config.prompt_tokens += float(np.nansum(tokens))
            config.prompt_tokens_n += int(np.count_nonzero(~np.isnan(tokens)))
        if cost.COST_COLUMN in names:
            config.costs.append(_floats(part.column(cost.COST_COLUMN)))
        if "started_at" in names and fresh.any():
            self._span(config, part, fresh, latency)

    @staticmethod
    def _span(config: _Config, part: pa.RecordBatch, fresh: np.ndarray, latency: np.ndarray | None) -> None:
        """The fresh rows' earliest start and latest end, as ``summary._wall_seconds`` computes them."""
        started = part.column("started_at").filter(pa.array(fresh))
        if started.null_count == len(started):
            return
        config.started = True
        start = pd.to_datetime(pd.Series(started.to_pandas()), utc=True)
        seconds = pd.Series(latency[fresh] if latency is not None else np.zeros(len(start)))
        end = start + pd.to_timedelta(seconds.fillna(0.0), unit="s")
        first, last = start.min(), end.max()
        if first is not pd.NaT and (config.start is None or first < config.start):
            config.start = first
        if last is not pd.NaT and (config.end is None or last > config.end):
            config.end = last

    # ------------------------------------------------------------------ the summary
    def scores(self) -> list[str]:
        """``summary.score_columns``: numeric quality scores (a 0/1 column with a missing value is not numeric
        in pandas), and any quality score column with no value at all."""
        out = []
        for name in self.candidates:
            type_ = self.types[name]
            numeric = _numeric(type_) or (pa.types.is_boolean(type_) and not self.nulls[name])
            if numeric or self.all_null[name]:
                out.append(name)
        return out

    def result(self) -> pd.DataFrame:
        """The summary (``summary.summarize``'s frame) of every batch added."""
        scores = self.scores()
        ranks, ids = self._prompt_numbering()
        prompt_of = {id(c): ids[i] for i, c in enumerate(self.configs.values())} if ids is not None else {}
        has_prompt = "prompt_id" in self.names
        repeated = has_prompt and (
            bool(self.pass_at)
            or ("repeat" in self.names and self.repeated)
            or ("repeat" not in self.names and any(np.unique(p).size < p.size for p in prompt_of.values()))
        )
        passed = None
        if repeated:
            binary = [s for s in scores if self.ok_scored[s] and self.ok_binary[s]]
            passed = "score_code_exec" if "score_code_exec" in binary else (binary[0] if binary else None)
        counts = (
            {key: self._pass_counts(config, prompt_of[key], passed) for key, config in self._keyed()} if passed else {}
        )
        ks: list[int] = []
        if passed:
            if self.pass_at:
                ks = sorted({int(k) for k in self.pass_at})
            else:
                most = max((int(c["n"].max()) for c in counts.values() if len(c)), default=0)
                ks = [k for k in DEFAULT_PASS_AT if k <= most] if most > 1 else []
        has_ttft = "ttft_s" in self.names and self.valued["ttft_s"]
        priced = cost.COST_COLUMN in self.names and self.valued[cost.COST_COLUMN]
        binary_scores = {s for s in scores if self.all_binary[s] and self.valued[s]} if priced else set()
        rows = []
        for key, config in self._keyed():
            prompts = ranks[prompt_of[key]] if ranks is not None else None
            row = self._row(config, scores, prompts, binary_scores, has_ttft, priced)
            if ks:
                row.update(pass_at_columns(counts[key], ks, passed, self.confidence))
            rows.append(row)
        return summary_frame(rows)

    def _keyed(self):
        return ((id(config), config) for config in self.configs.values())

    def _prompt_numbering(self) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
        """(each prompt's rank in the sorted prompt ids, indexed by one numbering; each configuration's rows in
        that numbering): the stacked ids of every batch mapped to one numbering of the distinct prompt ids."""
        if "prompt_id" not in self.names:
            return None, None
        stacked = pa.concat_arrays(self.dictionaries) if self.dictionaries else pa.array([], pa.string())
        encoded = pc.dictionary_encode(stacked)
        numbering = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        order = pc.sort_indices(encoded.dictionary).to_numpy(zero_copy_only=False)
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(len(order))
        ids = [numbering[_chunks(c.prompts, np.int32)] for c in self.configs.values()]
        self.dictionaries = []
        return ranks, ids

    @staticmethod
    def _pass_counts(config: _Config, prompts: np.ndarray, score: str) -> pd.DataFrame:
        """``summary.pass_counts`` of one configuration: per prompt (in the order they first appear) its scored
        samples ``n`` and passes ``c``."""
        values = _expand(config.scores[score])
        distinct, first, inverse = np.unique(prompts, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        n = np.bincount(inverse, weights=~np.isnan(values), minlength=distinct.size)[order]
        c = np.bincount(inverse, weights=values >= 0.5, minlength=distinct.size)[order]
        return pd.DataFrame({"n": n.astype(np.int64), "c": c.astype(np.int64)})

    def _row(
        self,
        config: _Config,
        scores: list[str],
        prompts: np.ndarray | None,
        binary: set[str],
        has_ttft: bool,
        priced: bool,
    ) -> dict:
        """One configuration's summary row, in ``summarize``'s column order."""
        names = self.names
        row: dict = {}
        for name, value in config.values.items():
            as_float = pa.types.is_integer(self.types[name]) and self.nulls[name]  # pandas made it float
            row[name] = value.value(as_float)
        row["n"] = config.n
        row["n_ok"] = config.n_ok
        row["n_cached"] = config.n_cached
        row["error_rate"] = (config.n - config.n_ok) / config.n
        accuracy: dict[str, stats.Interval] = {}
        for name in scores:
            values = _expand(config.scores[name])
            keep = ~np.isnan(values)
            kept = values[keep]
            if prompts is None:
                codes = np.arange(kept.size)
            else:  # the prompts' order by name, numbered from 0 over the kept rows (as stats._codes numbers them)
                codes = np.unique(prompts[keep], return_inverse=True)[1].reshape(-1)
            ci = stats.mean_ci_coded(kept, codes, self.confidence, self.n_resamples, self.seed)
            row.update(interval_columns(name, ci))
            if name in binary:
                accuracy[name] = ci
        if priced:
            row.update(cost.cost_columns(pd.DataFrame({cost.COST_COLUMN: _chunks(config.costs)}), accuracy))
        latency = _chunks(config.latency)
        row["latency_s_mean"] = float(np.nanmean(latency)) if np.any(~np.isnan(latency)) else np.nan
        for q, v in stats.percentiles(latency, LATENCY_QS).items():
            row[f"latency_s_p{q}"] = v
        if has_ttft:
            for q, v in stats.percentiles(_chunks(config.ttft), TTFT_QS).items():
                row[f"ttft_s_p{q}"] = v
        if "completion_tokens" in names and config.completion_ok_n:
            row["completion_tokens_mean"] = config.completion_ok / config.completion_ok_n
        else:
            row["completion_tokens_mean"] = np.nan
        row["prompt_tokens_sum"] = int(config.prompt_tokens) if config.prompt_tokens_n else np.nan
        row["completion_tokens_sum"] = int(config.completion_all)
        wall = None
        if "latency_s" in names and config.fresh and config.started and config.start is not None:
            span = (config.end - config.start).total_seconds()
            wall = span if span > 0 else None
        if wall is None and "latency_s" in names:
            busy = float(np.nansum(latency))
            wall = busy if busy > 0 else None
        row["wall_s"] = wall if wall is not None else np.nan
        row["output_tokens_per_s"] = int(config.completion_fresh) / wall if wall else np.nan
        decode = _chunks(config.decode)
        row["decode_tokens_per_s_p50"] = float(np.median(decode)) if decode.size else np.nan
        row["requests_per_s"] = config.fresh / wall if wall else np.nan
        return row


def summarize_batches(
    batches: Iterable[pa.RecordBatch | pa.Table],
    schema: pa.Schema,
    confidence: float = 0.95,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    pass_at: Sequence[int] | None = None,
) -> pd.DataFrame:
    """``summary.summarize`` of the rows in ``batches`` (each with ``schema``'s summary columns), a batch at
    a time (see the module docstring)."""
    summary = BatchedSummary(schema, confidence, n_resamples, seed, pass_at)
    for batch in batches:
        summary.add(batch)
    return summary.result()
