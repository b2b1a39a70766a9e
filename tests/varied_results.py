"""Results tables of random shapes (seeded) for the tests that prove a batched computation equals the frame's.

``varied_results(seed)``: several configurations (by config_id, or by model and temperature without one),
repeats or prompts sampled twice without a repeat column, 0/1 float scores with gaps, continuous scores,
bool scores (a bool column with a gap is not a score in pandas), a score column with no value, errored
rows, cached rows, cost, TTFT, start times, mapped and extra columns, unicode prompt ids.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PROMPT_NAMES = ["p-2", "p-10", "P-1", "p-é", "q", "p-1", "Z", "p-ü", "a b", "p-03"]


def varied_results(seed: int) -> tuple[pa.Table, dict]:
    """A results table of a random shape (see the module docstring) and the options drawn."""
    rng = np.random.default_rng(seed)
    opts = {
        "config_id": bool(rng.random() < 0.7),
        "configs": int(rng.integers(1, 5)),
        "repeat": bool(rng.random() < 0.8),
        "repeats": int(rng.integers(1, 4)),
        "prompts": int(rng.integers(3, 40)),
        "cost": bool(rng.random() < 0.5),
        "ttft": bool(rng.random() < 0.7),
        "started": bool(rng.random() < 0.7),
        "cached": bool(rng.random() < 0.5),
        "error_share": float(rng.choice([0.0, 0.1, 0.4, 1.0], p=[0.2, 0.5, 0.25, 0.05])),
        "pass_at": [1, 2] if rng.random() < 0.2 else None,
        "continuous": bool(rng.random() < 0.6),
    }
    prompts = [PROMPT_NAMES[i] if i < len(PROMPT_NAMES) else f"p-{i}" for i in range(opts["prompts"])]
    rows_per = [opts["prompts"] * opts["repeats"]] * opts["configs"]
    config = np.concatenate([np.full(r, c) for c, r in enumerate(rows_per)])
    prompt = np.concatenate([np.tile(np.arange(opts["prompts"]), opts["repeats"]) for _ in rows_per])
    repeat = np.concatenate([np.repeat(np.arange(opts["repeats"]), opts["prompts"]) for _ in rows_per])
    order = rng.permutation(config.size) if rng.random() < 0.5 else np.arange(config.size)  # interleaved or not
    config, prompt, repeat = config[order], prompt[order], repeat[order]
    n = config.size
    ok = rng.random(n) >= opts["error_share"]
    gaps = rng.random(n) < 0.1
    temperatures = np.array([0.0, 0.7, 0.7, 1.3])  # two configurations may share a temperature
    columns: dict[str, pa.Array] = {
        "run_id": pa.array(np.full(n, "r")),
        "backend": pa.array(np.full(n, "remote")),
        "model": pa.array(np.array(["m-b", "m-a", "m-b", "m-c"])[config]),
        "dataset": pa.array(np.full(n, "capitals")),
        "prompt_id": pa.array(np.array(prompts, dtype=object)[prompt].astype(str)),
        "temperature": pa.array(temperatures[config]),
        "top_k": pa.array(np.full(n, 40), mask=rng.random(n) < 0.05),  # an int column with gaps: float in pandas
        "seed": pa.array(rng.integers(0, 1000, n)),  # differs row by row: the configuration shows the smallest
        "status": pa.array(np.where(ok, "ok", "error")),
        "error": pa.array(np.where(ok, None, "HTTP 503")),
        "output": pa.array(np.where(ok, "Paris", None)),
        "latency_s": pa.array(rng.lognormal(-1, 0.5, n), mask=~ok),
        "completion_tokens": pa.array(rng.integers(1, 50, n), mask=~ok | gaps),
        "prompt_tokens": pa.array(rng.integers(5, 30, n), mask=~ok),
        "category": pa.array(rng.choice(["geo", "math"], n)),  # a dataset's extra column
        "difficulty": pa.array(rng.integers(1, 4, n)),
        "score_exact": pa.array(np.where(ok, (rng.random(n) < 0.6).astype(float), np.nan), mask=~ok | gaps),
        "score_exact_detail": pa.array(np.where(ok, "matched", None)),
        "score_flag": pa.array(rng.random(n) < 0.5),  # bool without gaps: a score
        "score_flaky": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.2),  # bool with gaps: not a score
        "score_unset": pa.nulls(n, pa.string()),  # no value at all: a score (all NaN)
        "score_judge_latency_s": pa.array(rng.random(n)),  # a judge's timing, not a score
    }
    if opts["continuous"]:
        columns["score_sim"] = pa.array(np.round(rng.random(n), 3), mask=~ok)
    if opts["config_id"]:
        columns["config_id"] = pa.array(np.array([f"cfg-{c}" for c in range(4)])[config])
    if opts["repeat"]:
        columns["repeat"] = pa.array(repeat.astype(np.int32))
    if opts["cost"]:
        columns["cost_usd"] = pa.array(rng.random(n) * 1e-4, mask=rng.random(n) < 0.1)
    if opts["ttft"]:
        columns["ttft_s"] = pa.array(rng.random(n) * 0.05, mask=~ok)
    if opts["started"]:
        starts = 1_764_000_000_000_000 + np.sort(rng.integers(0, 10**8, n))
        columns["started_at"] = pa.array(starts, pa.timestamp("us", tz="UTC"), mask=rng.random(n) < 0.05)
    if opts["cached"]:
        columns["cached"] = pa.array(rng.random(n) < 0.3)
    return pa.table(columns), opts
