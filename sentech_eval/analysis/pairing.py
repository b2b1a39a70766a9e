"""Pair the rows of two results (A and B) for paired statistics.

Rows pair on ``prompt_id`` and ``repeat``; also on ``dataset`` when either side holds several
datasets, and on a sampling column when *both* sides vary it (two sweeps over the same grid).
Rows without a partner are counted and reported, never silently dropped. A key that matches
several rows on one side (two runs of the same configuration in one directory, or a sweep
against a single run) is refused with one sentence, because such pairs would be arbitrary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sentech_eval.analysis.summary import score_columns
from sentech_eval.engine.results import load_results
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.types import SAMPLING_FIELDS

BASE_KEYS = ("prompt_id", "repeat")


@dataclass
class PairedResults:
    """Two results joined row by row: columns of A end in ``_a``, columns of B in ``_b``."""

    pairs: pd.DataFrame
    keys: list[str]
    a: pd.DataFrame
    b: pd.DataFrame
    unpaired_a: int
    unpaired_b: int
    scores: list[str]  # score columns present on both sides, e.g. ["score_exact_match"]
    only_in_a: list[str] = field(default_factory=list)  # score columns of A that B lacks
    only_in_b: list[str] = field(default_factory=list)
    label_a: str = "A"
    label_b: str = "B"
    sampling_differences: list[str] = field(default_factory=list)  # e.g. ["temperature: 0.0 vs 0.7"]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)


def read_results(path: str | Path, role: str) -> pd.DataFrame:
    """Load one side (file, run dir or sweep dir); ResultsError naming ``role`` if it is unusable."""
    p = Path(path)
    if not p.exists():
        raise ResultsError(
            f"The {role} results {str(p)!r} do not exist; pass a results.parquet file, a run dir or a sweep dir."
        )
    df = load_results(p)
    if df is None or len(df) == 0:
        raise ResultsError(f"The {role} results {str(p)!r} contain no rows; point at a finished run.")
    missing = [k for k in BASE_KEYS if k not in df.columns]
    if missing:
        raise ResultsError(
            f"The {role} results {str(p)!r} lack the column(s) {', '.join(missing)}; they are not sentech-eval results."
        )
    df = df.copy()
    df["prompt_id"] = df["prompt_id"].astype(str)
    df["repeat"] = pd.to_numeric(df["repeat"], errors="coerce").fillna(0).astype("int64")
    return df


def pairing_keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The columns rows are paired on (see the module docstring)."""
    keys = list(BASE_KEYS)
    if "dataset" in a.columns and "dataset" in b.columns:
        if a["dataset"].nunique(dropna=False) > 1 or b["dataset"].nunique(dropna=False) > 1:
            keys.insert(0, "dataset")
    for name in SAMPLING_FIELDS:
        if name in a.columns and name in b.columns:
            if a[name].nunique(dropna=False) > 1 and b[name].nunique(dropna=False) > 1:
                keys.append(name)
    return keys


def _refuse_duplicates(df: pd.DataFrame, keys: list[str], role: str, path: str | Path) -> None:
    dup = df.duplicated(subset=keys, keep=False)
    if not dup.any():
        return
    first = df.loc[dup, keys].iloc[0].to_dict()
    runs = sorted(df.loc[dup, "run_id"].astype(str).unique()) if "run_id" in df.columns else []
    hint = f" (runs {', '.join(runs[:4])})" if len(runs) > 1 else ""
    raise ResultsError(
        f"The {role} results {str(path)!r} hold {int(dup.sum())} rows sharing a pairing key such as {first}{hint}; "
        f"compare one run or one sweep point per side (pairing on {', '.join(keys)})."
    )


def _suffixed(df: pd.DataFrame, keys: list[str], suffix: str) -> pd.DataFrame:
    """``df`` with ``suffix`` on every column but the pairing keys (a user's ``output_a`` becomes ``output_a_a``)."""
    renamed = df.rename(columns={c: f"{c}{suffix}" for c in df.columns if c not in keys})
    clash = list(renamed.columns[renamed.columns.duplicated()])
    if clash:
        raise ResultsError(
            f"A results column becomes {clash[0]!r} once suffixed for the comparison, the name of a pairing key; "
            "rename that column in the results (or the dataset) and compare again."
        )
    return renamed


def pair_results(a_path: str | Path, b_path: str | Path, role_a: str = "A", role_b: str = "B") -> PairedResults:
    """Load both sides and join them; ResultsError when nothing pairs."""
    a = read_results(a_path, role_a)
    b = read_results(b_path, role_b)
    return pair_frames(a, b, role_a, role_b, a_path, b_path)


def pair_frames(
    a: pd.DataFrame,
    b: pd.DataFrame,
    role_a: str = "A",
    role_b: str = "B",
    a_path: str | Path = "A",
    b_path: str | Path = "B",
) -> PairedResults:
    """Join two loaded results frames on the pairing keys."""
    keys = pairing_keys(a, b)
    _refuse_duplicates(a, keys, role_a, a_path)
    _refuse_duplicates(b, keys, role_b, b_path)
    # Every non-key column gets its side's suffix before the join (output -> output_a), so no column of a
    # user's (``_merge``, ``output_a`` …) can collide with the join's own names.
    side = "__side"
    while side in keys:
        side += "_"
    merged = _suffixed(a, keys, "_a").merge(_suffixed(b, keys, "_b"), on=keys, how="outer", indicator=side)
    pairs = merged[merged[side] == "both"].drop(columns=side).reset_index(drop=True)
    unpaired_a = int((merged[side] == "left_only").sum())
    unpaired_b = int((merged[side] == "right_only").sum())
    if pairs.empty:
        raise ResultsError(
            f"No rows of {role_a} {str(a_path)!r} pair with {role_b} {str(b_path)!r} on {', '.join(keys)} "
            f"({len(a)} vs {len(b)} rows); compare runs of the same dataset."
        )
    differences = []
    for name in SAMPLING_FIELDS:
        if name in keys or name not in a.columns or name not in b.columns:
            continue
        va, vb = sorted(a[name].dropna().unique().tolist()), sorted(b[name].dropna().unique().tolist())
        if va != vb:
            differences.append(f"{name}: {_values(va)} vs {_values(vb)}")
    sa, sb = score_columns(a), score_columns(b)
    common = [c for c in sa if c in sb]
    return PairedResults(
        pairs=pairs,
        keys=keys,
        a=a,
        b=b,
        unpaired_a=unpaired_a,
        unpaired_b=unpaired_b,
        scores=common,
        only_in_a=[c for c in sa if c not in sb],
        only_in_b=[c for c in sb if c not in sa],
        label_a=role_a,
        label_b=role_b,
        sampling_differences=differences,
    )


def _values(values: list) -> str:
    if not values:
        return "unset"
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def cluster_ids(paired: PairedResults, column: str | None = None) -> np.ndarray:
    """For each pair, the cluster it belongs to: one unit of evidence for the paired statistics.

    By default the prompt (``prompt_id``, within its ``dataset`` when pairing is per dataset), so
    repeats and sweep points of one prompt are never counted as independent pairs. ``column``
    clusters on another column instead (a pairing key, or a column of A's rows, e.g. a topic).
    """
    pairs = paired.pairs
    if column is None:
        parts = [c for c in ("dataset", "prompt_id") if c in paired.keys]
        ids = pairs[parts].astype(str).agg("\x1f".join, axis=1) if len(parts) > 1 else pairs["prompt_id"].astype(str)
        return ids.to_numpy()
    if column in pairs.columns:
        return pairs[column].astype(str).to_numpy()
    if f"{column}_a" in pairs.columns:
        return pairs[f"{column}_a"].astype(str).to_numpy()
    known = sorted({c.removesuffix("_a").removesuffix("_b") for c in pairs.columns if not c.startswith("score_")})
    raise ConfigError(f"--cluster {column!r} is not a column of the results; pick one of: {', '.join(known)}.")
