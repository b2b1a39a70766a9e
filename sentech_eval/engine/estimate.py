"""What a run will cost before it is sent: requests, tokens, USD and wall time.

``estimate_run(spec)`` reads the dataset the job's spec describes (no request): requests = selected
rows × repeats, input tokens ≈ characters / 4 of every message (+ 4 per message for the chat
template), counted locally. Output tokens and latency come from earlier runs of the same backend and
model under the experiment's results dir (``results/<experiment>/``), or from a probe the user asked
for (``--probe N``), or else output tokens are bounded by ``sampling.max_tokens`` and the wall time
is unknown.
Wall time = requests × median latency / concurrency, and never below what ``runner.rpm`` allows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentech_eval.config import JobSpec, LocalBackendConfig
from sentech_eval.engine.datasets import Dataset, open_dataset

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
HISTORY_FILES = 200  # at most this many earlier results files are read


@dataclass
class History:
    """What earlier rows (or a probe) say: mean output tokens and median latency per request."""

    rows: int
    output_tokens: float | None
    latency_s: float | None
    source: str


@dataclass
class Estimate:
    """One run's estimate (a sweep has one per job)."""

    label: str
    requests: int
    input_tokens: float
    output_tokens: float
    output_bound: bool  # True: output tokens are max_tokens × requests (an upper bound)
    cost_usd: float | None  # None: no backend.price
    wall_s: float | None  # None: no latency known
    basis: str


def prompt_token_estimate(dataset: Dataset) -> float:
    """Estimated input tokens of one pass over the dataset's selected prompts."""
    total = 0.0
    for batch in dataset.iter_prompt_batches():
        for prompt in batch:
            total += sum(len(m["content"]) for m in prompt.messages) / CHARS_PER_TOKEN
            total += TOKENS_PER_MESSAGE * len(prompt.messages)
    return total


def backend_identity(spec: JobSpec) -> tuple[str, str]:
    """(kind, model) as the results' ``backend`` and ``model`` columns will hold them."""
    return spec.backend.kind, spec.model_name


def history_from_results(results_root: Path, kind: str, model: str) -> History | None:
    """Mean completion tokens and median latency of ok rows of (kind, model) under ``results_root``."""
    if not results_root.is_dir():
        return None
    tokens: list[float] = []
    latencies: list[float] = []
    files = sorted(results_root.rglob("results.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)[:HISTORY_FILES]
    for path in files:
        try:
            table = pq.read_table(path, columns=["backend", "model", "status", "completion_tokens", "latency_s"])
        except Exception:  # noqa: BLE001 - an unreadable or foreign file is not history
            continue
        mask = pc.and_(
            pc.and_(pc.equal(table["backend"], kind), pc.equal(table["model"], model)), pc.equal(table["status"], "ok")
        )
        rows = table.filter(mask)
        tokens.extend(v for v in rows["completion_tokens"].to_pylist() if v is not None)
        latencies.extend(v for v in rows["latency_s"].to_pylist() if v is not None)
    if not latencies:
        return None
    return History(
        len(latencies),
        statistics.fmean(tokens) if tokens else None,
        statistics.median(latencies),
        f"{len(latencies)} earlier rows of {kind}/{model} under {results_root}",
    )


def estimate_run(spec: JobSpec, history: History | None, label: str = "") -> Estimate:
    """The estimate of one configuration, given what earlier runs (or a probe) said."""
    sampling, runner, price = spec.sampling, spec.runner, spec.price
    dataset = open_dataset(spec.dataset)
    repeats = runner.repeats
    requests = dataset.info().num_rows * repeats
    input_tokens = prompt_token_estimate(dataset) * repeats
    max_tokens = sampling.max_tokens or 256
    if history is not None and history.output_tokens is not None:
        output_tokens, bound = min(max_tokens, history.output_tokens) * requests, False
    else:
        output_tokens, bound = float(max_tokens * requests), True
    concurrency = runner.concurrency
    if isinstance(spec.backend, LocalBackendConfig):
        # requests served at once: the workers, or the sequences batched together (null: the CPU default)
        from sentech_eval.backends.local import PARALLEL_CPU  # here: a remote run never imports the local backend

        local = spec.backend
        at_once = local.workers if local.workers > 1 or local.parallel == 1 else (local.parallel or PARALLEL_CPU)
        concurrency = min(concurrency, at_once)
    wall = None
    if history is not None and history.latency_s is not None:
        wall = requests * history.latency_s / concurrency
        if runner.rpm:
            wall = max(wall, 60.0 * requests / runner.rpm)
    cost = None
    if price is not None:
        cost = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
        if price.per_hour and wall is not None:
            cost += price.per_hour * wall / 3600
    basis = (
        history.source
        if history is not None
        else (f"no earlier runs: output ≤ max_tokens={max_tokens} per request; --probe N measures it with N requests")
    )
    return Estimate(label, requests, input_tokens, output_tokens, bound, cost, wall, basis)


def format_estimates(estimates: list[Estimate], note: str = "") -> str:
    """A table (one line per run) and a total line."""
    lines = []
    for e in estimates:
        out = f"≤{e.output_tokens:,.0f}" if e.output_bound else f"{e.output_tokens:,.0f}"
        cost = "n/a (no backend.price)" if e.cost_usd is None else f"${e.cost_usd:,.4f}"
        wall = "unknown" if e.wall_s is None else _duration(e.wall_s)
        lines.append(
            f"  {e.label or 'run'}: {e.requests:,} requests, ~{e.input_tokens:,.0f} input tokens, "
            f"{out} output tokens, {cost}, ~{wall}"
        )
    total_requests = sum(e.requests for e in estimates)
    costs = [e.cost_usd for e in estimates]
    walls = [e.wall_s for e in estimates]
    total_cost = "n/a" if any(c is None for c in costs) else f"${sum(costs):,.4f}"  # type: ignore[arg-type]
    total_wall = "unknown" if any(w is None for w in walls) else _duration(sum(walls))  # type: ignore[arg-type]
    lines.append(
        f"sentech-eval estimate: {len(estimates)} run(s), {total_requests:,} requests, "
        f"~{sum(e.input_tokens for e in estimates):,.0f} input tokens, "
        f"{'≤' if any(e.output_bound for e in estimates) else ''}{sum(e.output_tokens for e in estimates):,.0f} "
        f"output tokens, {total_cost}, ~{total_wall} one after the other{note}"
        + ("" if not estimates else f" (basis: {estimates[0].basis})")
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
