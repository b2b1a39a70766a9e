"""A race over a sweep grid: rounds of jobs on growing prompt prefixes, cells cut as the data decide.

Launcher-agnostic: ``run_race`` is handed a ``launch(batch, initial_job_idx)`` callable (the Hydra
launcher's) and only decides which jobs run in each round. Round r runs every alive cell on the
first ``n_r`` prompts of the seeded order (``dataset.limit=n_r dataset.shuffle_seed=S``) in the
cell's own dir ``<sweep dir>/cell_<i>``; a run there resumes, so no prompt is sent twice for a
cell. After the round each cell's rows are read back from disk (whatever launcher ran it) and
``sentech_eval.engine.race.race_round`` decides. Output in the sweep dir: ``race.parquet`` (one
row per round × cell) and ``race.json`` (settings, winner, spend, the last line to print).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.config import JobSpec
from sentech_eval.engine.datasets import open_dataset
from sentech_eval.engine.race import race_round, schedule
from sentech_eval.engine.results import read_run_table
from sentech_eval.errors import ConfigError
from sentech_eval.escaping import terminal_lines

RACE_FILE = "race.parquet"
RACE_JSON = "race.json"
CONTROLLED_KEYS = ("dataset.limit", "dataset.shuffle_seed", "hydra.sweep.subdir")
RACE_SCHEMA = pa.schema(
    [
        ("round", pa.int32()),
        ("n", pa.int64()),
        ("cell", pa.int32()),
        ("overrides", pa.string()),
        ("mean", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("diff_to_leader", pa.float64()),
        ("diff_low", pa.float64()),
        ("diff_high", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("requests", pa.int64()),
    ]
)

Launch = Callable[[Sequence[Sequence[str]], int], Sequence[Any]]


def cell_labels(cells: Sequence[Sequence[str]]) -> list[str]:
    """Each cell's swept overrides as one string (``sampling.temperature=0.3 sampling.top_p=0.9``).

    Overrides shared by every cell (``backend=remote`` …) are left out; a single cell keeps all of them.
    """
    if len(cells) < 2:
        return [" ".join(c) for c in cells]
    shared = set(cells[0]).intersection(*map(set, cells[1:]))
    return [" ".join(o for o in c if o not in shared) for c in cells]


def _per_prompt_scores(cell_dir: Path, ids: list[str], score: str) -> tuple[np.ndarray, int]:
    """Mean score over repeats per prompt, in ``ids`` order (NaN when none), and the rows sent."""
    table = read_run_table(cell_dir)
    out = np.full(len(ids), np.nan)
    if table is None or table.num_rows == 0:
        return out, 0
    if score not in table.column_names:
        raise ConfigError(
            f"The race score column {score!r} is not in the results of {cell_dir}; add its scorer "
            f"(scorers=[{score.removeprefix('score_')}]) or set race.score to one of the scored columns."
        )
    rows = table.num_rows
    ok = table.filter(pc.equal(table.column("status"), "ok")).select(["prompt_id", score])
    values = ok.column(score).cast(pa.float64())
    if values.null_count < len(values):
        low, high = pc.min_max(values).values()
        if low.as_py() is not None and (low.as_py() < 0 or high.as_py() > 1):
            raise ConfigError(
                f"The race score {score} has values outside [0, 1] in {cell_dir}; race on a 0–1 score "
                "such as contains, exact_match or token_f1."
            )
    means = ok.group_by("prompt_id").aggregate([(score, "mean")]).to_pydict()
    index = {pid: i for i, pid in enumerate(ids)}
    for pid, value in zip(means["prompt_id"], means[f"{score}_mean"]):
        i = index.get(pid)
        if i is not None and value is not None and not math.isnan(value):
            out[i] = value
    return out, rows


def _job_failed(cell_dir: Path) -> str | None:
    try:
        record = json.loads((cell_dir / "job_status.json").read_text())
    except (OSError, ValueError):
        return "the job left no status record"
    if record.get("status") == "failed":
        return str(record.get("error") or "failed")
    return None


def run_race(
    spec: JobSpec,
    cells: list[list[str]],
    launch: Launch,
    sweep_dir: Path,
    log: Callable[[str], None] = lambda line: print(terminal_lines(line), file=sys.stderr),
) -> dict[str, Any]:
    """Race the grid ``cells`` (each a list of overrides) of the sweep whose base job is ``spec``;
    returns the race.json record."""
    assert spec.race is not None, "the race sweeper builds its spec with job_spec(cfg, racing=True)"
    settings, score = spec.race.settings, spec.race.score_column
    if spec.dataset.num_shards > 1:
        raise ConfigError("A race runs every cell on the whole dataset; drop dataset.num_shards (sharding) for it.")
    repeats = spec.runner.repeats
    seed = 0 if spec.dataset.shuffle_seed is None else spec.dataset.shuffle_seed
    dataset = open_dataset(dataclasses.replace(spec.dataset, shuffle_seed=seed))
    ids = [str(i) for i in dataset.prompt_ids()]
    total = len(ids)
    counts = schedule(settings, total)
    cells = [[o for o in cell if o.split("=", 1)[0].lstrip("+~") not in CONTROLLED_KEYS] for cell in cells]
    k = len(cells)
    labels = cell_labels(cells)
    dirs = [sweep_dir / f"cell_{i:02d}" for i in range(k)]
    log(
        f"sentech-eval race: {k} cells on {score}, rounds of {counts} prompts (dataset.shuffle_seed={seed}); "
        f"confidence {settings.confidence}, min_effect {settings.min_effect}, keep {settings.keep}"
    )
    alive = list(range(k))
    scores = np.full((k, total), np.nan)
    requests = np.zeros(k, dtype=np.int64)
    records: list[dict[str, Any]] = []
    job_idx = 0
    result = None
    n = 0
    for number, n in enumerate(counts, start=1):
        batch = [
            cells[c] + [f"dataset.limit={n}", f"dataset.shuffle_seed={seed}", f"hydra.sweep.subdir=cell_{c:02d}"]
            for c in alive
        ]
        log(f"sentech-eval race: round {number}/{len(counts)}: {len(alive)} cells x {n} prompts")
        launch(batch, job_idx)
        job_idx += len(batch)
        failed = {}
        for c in alive:
            scores[c, :n], requests[c] = _per_prompt_scores(dirs[c], ids[:n], score)
            error = _job_failed(dirs[c])
            if error is not None or np.all(np.isnan(scores[c, :n])):
                failed[c] = error or f"no {score} values (every request failed?)"
        for c, error in failed.items():
            records.append(
                {
                    "round": number,
                    "n": n,
                    "cell": c,
                    "overrides": labels[c],
                    "mean": None,
                    "ci_low": None,
                    "ci_high": None,
                    "diff_to_leader": None,
                    "diff_low": None,
                    "diff_high": None,
                    "status": "eliminated",
                    "reason": f"job failed: {error}",
                    "requests": int(requests[c]),
                }
            )
        alive = [c for c in alive if c not in failed]
        if not alive:
            break
        result = race_round(scores[:, :n], alive, settings, k, last_round=number == len(counts))
        for rec in result.cells:
            records.append(
                {
                    "round": number,
                    "n": n,
                    "cell": rec.cell,
                    "overrides": labels[rec.cell],
                    **{f: _num(getattr(rec, f)) for f in ("mean", "ci_low", "ci_high")},
                    "diff_to_leader": _num(rec.diff),
                    "diff_low": _num(rec.diff_low),
                    "diff_high": _num(rec.diff_high),
                    "status": rec.status,
                    "reason": rec.reason,
                    "requests": int(requests[rec.cell]),
                }
            )
            if rec.status == "eliminated":
                log(f"sentech-eval race:   cut {labels[rec.cell]}: {rec.reason}")
        _write_race_table(sweep_dir, records)
        alive = result.alive
        if result.finished:
            break
    full = k * total * repeats
    spent = int(requests.sum())
    record: dict[str, Any] = {
        "settings": asdict(settings),
        "score": score,
        "cells": labels,
        "prompts": total,
        "repeats": repeats,
        "shuffle_seed": seed,
        "requests": spent,
        "full_grid_requests": full,
        "spent_fraction": spent / full if full else None,
        "rounds": counts[:number],
    }
    if result is None or not alive:
        record.update(
            winner=None,
            ending="every cell's job failed",
            line=f"sentech-eval race: no winner: every cell's job failed (see {sweep_dir}/cell_*/job_status.json)",
        )
    else:
        win = next(r for r in result.cells if r.cell == result.leader)
        record.update(
            winner=labels[win.cell],
            winner_cell=win.cell,
            winner_dir=str(dirs[win.cell]),
            ending=result.ending,
            mean=win.mean,
            ci_low=win.ci_low,
            ci_high=win.ci_high,
            n=n,
            finalists=[labels[c] for c in result.alive],
        )
        record["line"] = (
            f"sentech-eval race: winner {labels[win.cell]}: {score} {win.mean:.3f} "
            f"[{win.ci_low:.3f}, {win.ci_high:.3f}] on {n} prompts ({result.ending}); spent "
            f"{100 * spent / full:.1f}% of the full grid's requests ({spent:,} of {full:,})"
        )
    tmp = sweep_dir / (RACE_JSON + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, sweep_dir / RACE_JSON)
    return record


def _num(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _write_race_table(sweep_dir: Path, records: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(records, schema=RACE_SCHEMA)
    tmp = sweep_dir / (RACE_FILE + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, sweep_dir / RACE_FILE)


def race_line(sweep_dir: Path) -> str | None:
    """The winner line of a race in ``sweep_dir`` (None when it is no race)."""
    try:
        return json.loads((sweep_dir / RACE_JSON).read_text()).get("line")
    except (OSError, ValueError):
        return None
