"""One evaluation job: job spec → dataset → backend → runner → results.parquet.

Everything that can be wrong with the input is checked before the first request (the spec when it
was built, the dataset and the backend here); a re-run into the same output dir resumes (rows
already ``ok`` for this configuration are skipped, errors retried). ``run_evaluation`` returns a
``RunResult``; what the end of a run prints is ``commands/``'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sentech_eval.backends.base import Backend, create_backend
from sentech_eval.config import JobSpec, Price, RunnerConfig, config_id, named_score_column
from sentech_eval.engine.arrival import ArrivalHook
from sentech_eval.engine.budget import COST_COLUMN, CostHook, PrecisionStopHook
from sentech_eval.engine.cache import open_run_cache
from sentech_eval.engine.datasets import Dataset, open_dataset
from sentech_eval.engine.hooks import RunHook
from sentech_eval.engine.results import (
    PARTS_DIR,
    RESULTS_FILE,
    ResultsWriter,
    check_resumable,
    keep_latest_per_key,
    read_run_table,
    results_schema,
    resume_schema,
)
from sentech_eval.engine.rundir import lock_run_dir
from sentech_eval.engine.runner import RunIdentity, Runner, RunSummary
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.provenance import git_commit, package_versions
from sentech_eval.scorers import Scorer, build_scorers
from sentech_eval.types import Prompt, Sampling


@dataclass(frozen=True)
class RunResult:
    """What one run did: where its rows are, its counts (``summary``), cost, why it stopped."""

    results: Path
    summary: RunSummary
    concurrency: int  # requests in flight (runner.concurrency, lowered to what the backend serves at once)
    arrival: str = "closed"
    cached: int | None = None  # ok rows answered from the response cache (None: the cache was off)
    refused_unseeded: int = 0  # seedless requests at temperature > 0 the cache did not serve
    cost_usd: float | None = None  # None: no backend.price
    cost_ceiling: float | None = None  # runner.max_cost_usd, when reaching it stopped the run
    precision_reached: bool = False  # the precision stop ended the run
    server_capacity: int | None = None  # what the server answers at once, when below ``concurrency``
    idle_server_slots: int | None = None  # a closed-loop run's concurrency left this many of the server's slots idle
    objective: str | None = None  # the score column whose mean is returned to Hydra sweepers (Optuna)
    batching: str | None = None  # a local backend's continuous batching: "parallel=N (how N was chosen)"

    @property
    def scores(self) -> dict[str, float]:
        """Mean of each score column over this run's ok rows."""
        return self.summary.score_means()

    @property
    def objective_value(self) -> float | None:
        """The mean of the ``objective`` score (None: no objective, or no such score)."""
        return self.scores.get(self.objective) if self.objective else None

    def record(self) -> dict[str, Any]:
        """The result as plain data: the job's summary in job_status.json, sweep.json, trials.parquet."""
        summary = self.summary
        record: dict[str, Any] = {
            "results": str(self.results),
            "rows": summary.total,
            "ok": summary.ok,
            "errors": summary.errors,
            "skipped": summary.skipped,
            "retries": summary.retries,
            "lowest_concurrency": summary.lowest_concurrency,
            "cached": self.cached or 0,
            "elapsed_s": round(summary.elapsed_s, 3),
            "interrupted": summary.interrupted,
            "stop_reason": summary.stop_reason,
            "scores": self.scores,
        }
        if summary.requested_rps is not None:
            record.update(
                requested_rps=summary.requested_rps,
                achieved_rps=summary.achieved_rps,
                send_lag_p99_s=summary.send_lag_p99_s,
            )
        if self.objective:
            record["objective"] = self.objective_value
        if self.cost_usd is not None:
            record["cost_usd"] = self.cost_usd
        if self.server_capacity is not None:
            record["server_capacity"] = self.server_capacity
        return record


def _done_keys(table: pa.Table | None, cfg_id: str) -> tuple[set[tuple[str, int]], bool]:
    """(prompt_id, repeat) pairs already ``ok`` for this configuration, and whether any rows exist."""
    if table is None or table.num_rows == 0:
        return set(), False
    mask = pc.and_(pc.equal(table.column("config_id"), cfg_id), pc.equal(table.column("status"), "ok"))
    done = table.filter(mask).select(["prompt_id", "repeat"]).to_pydict()
    return set(zip(done["prompt_id"], done["repeat"])), True


def _start_dir(out_dir: Path, cfg_id: str, resume: bool) -> tuple[set[tuple[str, int]], bool, pa.Table | None]:
    """Create ``out_dir`` (emptied of results unless ``resume``); the rows already done there, whether any
    exist, and the earlier rows (checked: a resume whose columns cannot be cast is refused before sending)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out_dir / RESULTS_FILE).unlink(missing_ok=True)
        shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    previous = read_run_table(out_dir)
    if previous is not None:
        check_resumable(previous, out_dir)
    done, resuming = _done_keys(previous, cfg_id)
    if done:
        print(f"sentech-eval run: resuming in {out_dir}: {len(done)} rows already done are skipped.", file=sys.stderr)
    return done, resuming, previous


def _close_writer(writer: ResultsWriter, out_dir: Path, keep: Any, resume_command: str) -> Path:
    """Merge the parts; a full disk or Ctrl-C here loses nothing (the parts stay) and says how to finish."""
    finish = f"every row is safe in {out_dir / PARTS_DIR}; the same command finishes the merge:\n  {resume_command}"
    try:
        return writer.close(keep=keep)
    except KeyboardInterrupt:
        print(f"\nsentech-eval run: interrupted while merging results.parquet; {finish}", file=sys.stderr)
        raise
    except OSError as exc:
        raise ResultsError(f"Could not write {out_dir / RESULTS_FILE} ({exc.strerror or exc}); {finish}") from None


def budget_hooks(
    runner_cfg: RunnerConfig,
    price: Price | None,
    out_dir: Path,
    cfg_id: str,
    dataset: Dataset,
    score_fields: list[pa.Field],
) -> list[RunHook]:
    """The cost column / cost ceiling and the precision stop, when configured (``engine.budget``).

    Rows already in ``out_dir`` (a resumed run) count: their cost towards the ceiling, their scores
    towards the interval.
    """
    hooks: list[RunHook] = []
    stop = runner_cfg.stop_at_ci_half_width
    if price is None and stop is None:
        return hooks
    table = read_run_table(out_dir)
    if price is not None:
        spent = 0.0
        if table is not None and COST_COLUMN in table.column_names:
            spent = float(pc.sum(table.column(COST_COLUMN)).as_py() or 0.0)
        hooks.append(CostHook(price, runner_cfg.concurrency, spent_before=spent, max_cost_usd=runner_cfg.max_cost_usd))
    if stop is not None:
        column = named_score_column(str(runner_cfg.stop_score))
        if column not in {f.name for f in score_fields}:
            raise ConfigError(
                f"runner.stop_score={runner_cfg.stop_score}: no scorer of this run writes {column}; "
                f"add it (scorers=[{column.removeprefix('score_')}]) or pick a scored column."
            )
        done: dict[str, list[float]] = {}
        if table is not None and column in table.column_names:
            ok = table.filter(
                pc.and_(pc.equal(table.column("config_id"), cfg_id), pc.equal(table.column("status"), "ok"))
            )
            for pid, value in zip(ok.column("prompt_id").to_pylist(), ok.column(column).to_pylist()):
                done.setdefault(str(pid), []).append(float("nan") if value is None else float(value))
        hooks.append(PrecisionStopHook(column, stop, dataset.prompt_ids(), runner_cfg.repeats, done=done))
    return hooks


def idle_slots_warning(concurrency: int, slots: int) -> str:
    """The line printed when the runner keeps fewer requests in flight than the backend serves at once."""
    return (
        f"sentech-eval run: warning: runner.concurrency={concurrency} but the backend serves {slots} requests "
        f"at once, so {slots - concurrency} of its slots stay idle; set runner.concurrency={slots}."
    )


def _runner_for(backend: Backend, runner_cfg: RunnerConfig) -> RunnerConfig:
    """The runner settings for this backend: no more in flight than it serves at once, its timeout set."""
    if backend.max_concurrency is not None and backend.max_concurrency < runner_cfg.concurrency:
        # More requests in flight than the backend can serve would only queue invisibly inside it;
        # queueing in the runner instead is recorded in queue_s.
        runner_cfg = dataclasses.replace(runner_cfg, concurrency=backend.max_concurrency)
    elif backend.max_concurrency is not None and runner_cfg.concurrency < backend.max_concurrency:
        print(idle_slots_warning(runner_cfg.concurrency, backend.max_concurrency), file=sys.stderr)
    if runner_cfg.timeout_s is not None:
        backend.set_timeout(runner_cfg.timeout_s)
    return runner_cfg


def _metadata(spec: JobSpec, run_id: str, cfg_id: str, backend: Backend, rows: int, cache: Any) -> dict[str, Any]:
    """The results file's metadata: ids, the saved config, the backend, versions, dataset, cache."""
    return {
        "run_id": run_id,
        "config_id": cfg_id,
        "config": dict(spec.saved_config),
        "backend": backend.metadata(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "dataset": {"name": spec.dataset.name, "path": str(spec.dataset.path), "rows": rows},
        "created_at": datetime.now(UTC).isoformat(),
        "cache": cache.describe() if cache is not None else {"mode": "off"},
    }


@dataclass
class LevelRunner:
    """Runs prompts through one ``Runner`` per load level with the run's backend, writer and hooks."""

    backend: Backend
    sampling: Sampling
    identity: RunIdentity
    writer: ResultsWriter
    scorers: list[Scorer]
    hooks: list[RunHook]
    done: set[tuple[str, int]]
    open_loop: bool

    async def __call__(self, config: RunnerConfig, batches: Iterator[list[Prompt]], prompts: int) -> RunSummary:
        """One Runner over ``batches``; an open loop (or its labelled probe) gets an ArrivalHook first."""
        level_hooks = list(self.hooks)
        arrival = None
        if self.open_loop:
            seed = config.arrival_seed if config.arrival_seed is not None else (self.sampling.seed or 0)
            rate = None if config.arrival == "closed" else float(config.rate)
            arrival = ArrivalHook(config.arrival, rate, burstiness=config.burstiness, seed=seed)
            level_hooks.insert(0, arrival)  # first: it takes the items' instants in dataset order
        runner = Runner(
            self.backend,
            self.sampling,
            self.identity,
            self.writer,
            config,
            scorers=self.scorers,
            hooks=level_hooks,
            done_keys=self.done,
            total=prompts * config.repeats,
        )
        if arrival is not None:
            arrival.sleep = runner.pacer.sleep  # Ctrl-C cuts the wait for a scheduled instant short
        level = await runner.run(batches)
        if arrival is not None and arrival.rate is not None:
            level.requested_rps = arrival.rate
            level.achieved_rps, level.send_lag_p99_s, level.schedule_warning = arrival.report()
        return level


async def run_evaluation(
    spec: JobSpec, out_dir: Path, hooks: Sequence[RunHook] = (), resume_command: str = ""
) -> RunResult:
    """Run one configuration into ``out_dir``; ``hooks`` plug into the runner (``engine.hooks``), their
    columns join the results schema; ``resume_command`` is named when merging the results fails."""
    lock_run_dir(out_dir)
    dataset = open_dataset(spec.dataset)
    info = dataset.info()
    scorers = build_scorers(spec.scorers)
    backend = create_backend(spec.backend, concurrency=spec.runner.concurrency)
    try:
        runner_cfg = _runner_for(backend, spec.runner)
        cfg_id = config_id(backend.kind, backend.model, spec.sampling)
        done, resuming, previous = _start_dir(out_dir, cfg_id, runner_cfg.resume)
        run_id = uuid.uuid4().hex[:12]
        cache = open_run_cache(
            backend,
            mode=runner_cfg.cache,
            cache_dir=runner_cfg.cache_dir,
            run_id=run_id,
            dataset=str(spec.dataset.name),
            unseeded_ok=runner_cfg.cache_unseeded,
            on_corrupt=runner_cfg.cache_on_corrupt,
        )
        hooks = [cache, *hooks] if cache is not None else list(hooks)  # the cache first: a hit needs no other hook
        score_fields = [pa.field(name, dtype) for scorer in scorers for name, dtype in scorer.columns().items()]
        hooks = [*hooks, *budget_hooks(runner_cfg, spec.price, out_dir, cfg_id, dataset, score_fields)]
        schema_hooks = ([ArrivalHook("closed", None)] if runner_cfg.open_loop else []) + list(hooks)
        hook_fields = [pa.field(name, dtype) for hook in schema_hooks for name, dtype in hook.columns().items()]
        schema = resume_schema(results_schema(info.extra_fields, score_fields + hook_fields), previous, out_dir)
        previous = None  # (its memory: only the merge reads those rows again)
        writer = ResultsWriter(out_dir, schema, _metadata(spec, run_id, cfg_id, backend, info.num_rows, cache))
        identity = RunIdentity(run_id, cfg_id, backend.kind, backend.model, str(spec.dataset.name))
        run_level = LevelRunner(
            backend, spec.sampling, identity, writer, scorers, hooks, done, open_loop=runner_cfg.open_loop
        )
        try:
            if runner_cfg.rate == "auto":
                summary = await auto_load_sweep(run_level, dataset.iter_prompt_batches(), info.num_rows, runner_cfg)
            else:
                summary = await run_level(runner_cfg, dataset.iter_prompt_batches(), info.num_rows)
        finally:
            path = _close_writer(writer, out_dir, keep_latest_per_key if resuming else None, resume_command)
            if cache is not None:
                cache.close()
    finally:
        await backend.aclose()
        for scorer in scorers:
            await scorer.aclose()
    cost = next((h for h in hooks if isinstance(h, CostHook)), None)
    capacity = backend.advertised_capacity
    described = backend.metadata()
    return RunResult(
        results=path,
        summary=summary,
        concurrency=runner_cfg.concurrency,
        arrival=runner_cfg.arrival,
        cached=cache.hits if cache is not None else None,
        refused_unseeded=cache.refused_unseeded if cache is not None else 0,
        cost_usd=cost.spent if cost is not None else None,
        cost_ceiling=cost.max_cost_usd if cost is not None and cost.reached else None,
        precision_reached=any(isinstance(h, PrecisionStopHook) and h.reached for h in hooks),
        server_capacity=capacity if capacity is not None and capacity < runner_cfg.concurrency else None,
        idle_server_slots=(
            capacity - runner_cfg.concurrency
            if capacity is not None and capacity > runner_cfg.concurrency and not runner_cfg.open_loop
            else None
        ),
        objective=spec.objective,
        batching=(
            f"parallel={described['parallel']} ({described.get('parallel_reason')})"
            if described.get("parallel", 0) > 1
            else None
        ),
    )


# runner.rate=auto: after a closed-loop probe measured the maximum throughput X, one open-loop
# level at each of these fractions of X (guidellm's sweep profile); each level gets an equal
# share of the dataset, the probe too.
AUTO_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.2)


def _slices(batches: Iterator[list[Prompt]], size: int, count: int) -> Iterator[list[Prompt]]:
    """Consecutive slices of the prompt stream: ``count - 1`` of ``size`` prompts, then the rest."""
    prompts = itertools.chain.from_iterable(batches)
    for i in range(count):
        chunk = list(itertools.islice(prompts, size)) if i < count - 1 else list(prompts)
        if not chunk:
            return
        yield chunk


def _add(total: RunSummary, part: RunSummary) -> None:
    for name in ("total", "ok", "errors", "skipped", "retries"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.elapsed_s += part.elapsed_s
    total.interrupted = total.interrupted or part.interrupted
    for key, value in part.score_sums.items():
        total.score_sums[key] = total.score_sums.get(key, 0.0) + value
        total.score_counts[key] = total.score_counts.get(key, 0) + part.score_counts[key]
    if part.lowest_concurrency is not None:
        low = total.lowest_concurrency
        total.lowest_concurrency = part.lowest_concurrency if low is None else min(low, part.lowest_concurrency)


async def auto_load_sweep(
    run_level: Callable[[RunnerConfig, Iterator[list[Prompt]], int], Awaitable[RunSummary]],
    batches: Iterator[list[Prompt]],
    rows: int,
    config: RunnerConfig,
) -> RunSummary:
    """``runner.rate=auto``: a closed-loop probe finds the maximum throughput, then open-loop levels
    at ``AUTO_FRACTIONS`` of it, each on the next slice of the dataset, all rows in one results file
    (told apart by ``arrival`` and ``request_rate``)."""
    count = len(AUTO_FRACTIONS) + 1
    if rows < 2 * count:
        raise ConfigError(
            f"runner.rate=auto needs at least {2 * count} dataset rows (a probe and "
            f"{len(AUTO_FRACTIONS)} load levels), the dataset has {rows}; use more rows or list the rates."
        )
    slices = _slices(batches, rows // count, count)
    probe = next(slices)
    total = await run_level(dataclasses.replace(config, arrival="closed", rate=None), iter([probe]), len(probe))
    maximum = total.ok / total.elapsed_s if total.elapsed_s > 0 else 0.0
    if total.interrupted or total.stop_reason or maximum <= 0:
        return total
    print(
        f"sentech-eval run: runner.rate=auto: closed-loop maximum {maximum:.1f} req/s at concurrency "
        f"{config.concurrency}; now {config.arrival} arrivals at "
        + ", ".join(f"{f:g}" for f in AUTO_FRACTIONS)
        + " of it",
        file=sys.stderr,
    )
    for fraction, chunk in zip(AUTO_FRACTIONS, slices):
        level = dataclasses.replace(config, rate=round(fraction * maximum, 3))
        part = await run_level(level, iter([chunk]), len(chunk))
        _add(total, part)
        if part.achieved_rps is not None:
            print(
                f"sentech-eval run: {level.rate:g} req/s: achieved {part.achieved_rps:.2f} req/s, "
                f"p99 send lag {1000 * (part.send_lag_p99_s or 0):.1f} ms",
                file=sys.stderr,
            )
        if part.schedule_warning:
            print(f"sentech-eval run: warning at {level.rate:g} req/s: {part.schedule_warning}.", file=sys.stderr)
        if part.interrupted or part.stop_reason:
            total.stop_reason = total.stop_reason or part.stop_reason
            break
    return total
