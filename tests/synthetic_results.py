"""Realistic results tables for the compare/check tests, written as Parquet with pandas.

The rows follow the results schema (core columns, a dataset column, score columns and details).
Every knob a test needs is a parameter, so each test states the difference it checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Chile", "Santiago"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Nepal", "Kathmandu"),
    ("Ghana", "Accra"),
    ("Qatar", "Doha"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Portugal", "Lisbon"),
    ("Hungary", "Budapest"),
    ("Belgium", "Brussels"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Turkey", "Ankara"),
    ("India", "New Delhi"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Brazil", "Brasilia"),
    ("Australia", "Canberra"),
    ("Morocco", "Rabat"),
    ("Senegal", "Dakar"),
    ("Iceland", "Reykjavik"),
]


def make_results(
    n: int = 40,
    repeats: int = 1,
    accuracy: float = 0.8,
    wrong_ids: set[int] | None = None,
    latency_s: float = 0.20,
    error_ids: set[int] | None = None,
    backend: str = "remote",
    model: str = "sentech-small",
    temperature: float = 0.0,
    seed: int = 0,
    prompt_ids: list[str] | None = None,
) -> pd.DataFrame:
    """One run's results; ``wrong_ids`` (prompt indices answered wrongly) overrides ``accuracy``."""
    rng = np.random.default_rng(seed)
    if wrong_ids is None:
        wrong_ids = set(range(int(round(n * (1 - accuracy)))))
    error_ids = error_ids or set()
    rows = []
    for i in range(n):
        country, capital = CAPITALS[i % len(CAPITALS)]
        pid = prompt_ids[i] if prompt_ids else f"cap-{i:03d}"
        for r in range(repeats):
            err = i in error_ids
            wrong = i in wrong_ids
            output = None if err else ("I am not sure." if wrong else f"{capital}.")
            lat = float(latency_s * rng.lognormal(0.0, 0.05))
            rows.append(
                {
                    "run_id": f"{backend}-run",
                    "config_id": f"{backend}-cfg",
                    "backend": backend,
                    "model": model,
                    "dataset": "capitals",
                    "prompt_id": pid,
                    "repeat": r,
                    "temperature": temperature,
                    "top_p": 1.0,
                    "top_k": None,
                    "frequency_penalty": 0.0,
                    "presence_penalty": 0.0,
                    "max_tokens": 32,
                    "seed": 1234 + r,
                    "output": output,
                    "finish_reason": None if err else "stop",
                    "prompt_tokens": None if err else 14,
                    "completion_tokens": None if err else (5 if wrong else 3),
                    "total_tokens": None if err else (19 if wrong else 17),
                    "latency_s": None if err else lat,
                    "ttft_s": None if err else lat * 0.3,
                    "status": "error" if err else "ok",
                    "http_status": 503 if err else 200,
                    "error": "HTTP 503: overloaded" if err else None,
                    "attempts": 3 if err else 1,
                    "started_at": pd.Timestamp("2026-11-25T12:00:00Z") + pd.Timedelta(seconds=i),
                    "queue_s": 0.001,
                    "prompt": f"What is the capital of {country}? Answer with the city name only.",
                    "reference": capital,
                    "country": country,
                    "score_exact_match": None if err else (0.0 if wrong else 1.0),
                    "score_exact_match_detail": None,
                    "score_contains": None if err else (0.0 if wrong else 1.0),
                    "score_contains_detail": None if err else ("missing" if wrong else "found"),
                }
            )
    df = pd.DataFrame(rows)
    df["repeat"] = df["repeat"].astype("int32")
    df["top_k"] = df["top_k"].astype("Int64")
    for col in ("prompt_tokens", "completion_tokens", "total_tokens"):
        df[col] = df[col].astype("Int64")
    return df


def write_run(df: pd.DataFrame, run_dir: Path) -> Path:
    """Write ``df`` as ``run_dir/results.parquet`` (a run dir as the runner leaves it); returns the dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(run_dir / "results.parquet", index=False)
    return run_dir
