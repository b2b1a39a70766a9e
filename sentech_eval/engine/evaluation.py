"""One evaluation job: config → dataset → backend → runner → results.parquet.

Everything that can be wrong with the input is checked before the first request; a re-run into
the same output dir resumes (rows already ``ok`` for this configuration are skipped, errors retried).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf

from sentech_eval.backends.base import create_backend
from sentech_eval.config import (
    Price,
    RunnerConfig,
    config_id,
    price_from_config,
    redacted_config,
    score_column,
    validate,
)
from sentech_eval.engine.arrival import ArrivalHook
from sentech_eval.engine.budget import COST_COLUMN, CostHook, PrecisionStopHook
from sentech_eval.engine.cache import RunCache, open_run_cache
from sentech_eval.engine.datasets import ParquetDataset
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
from sentech_eval.engine.rundir import ARGV_ENV, lock_run_dir
from sentech_eval.engine.runner import RunIdentity, Runner, RunSummary
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.provenance import git_commit, package_versions
from sentech_eval.scorers import Scorer, build_scorers
from sentech_eval.secrets import environment_secrets, redact_tree
from sentech_eval.types import Prompt


def _done_keys(table: pa.Table | None, cfg_id: str) -> tuple[set[tuple[str, int]], bool]:
    """(prompt_id, repeat) pairs already ``ok`` for this configuration, and whether any rows exist."""
    if table is None or table.num_rows == 0:
        return set(), False
    mask = pc.and_(pc.equal(table.column("config_id"), cfg_id), pc.equal(table.column("status"), "ok"))
    done = table.filter(mask).select(["prompt_id", "repeat"]).to_pydict()
    return set(zip(done["prompt_id"], done["repeat"])), True


def _build_scorers(cfg: DictConfig) -> list[Scorer]:
    scorers_cfg = cfg.get("scorers")
    if not scorers_cfg:
        return []
    return build_scorers(scorers_cfg)


def scrub_saved_config(cfg: DictConfig, out_dir: Path) -> None:
    """Hydra saved the composed config to ``.hydra/config.yaml`` before the job ran: if a config file
    carried a credential (which ``validate`` refuses), overwrite that copy without its value."""
    saved = out_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        return
    container = OmegaConf.to_container(cfg, resolve=False)
    redacted = redact_tree(container, environment_secrets())
    if redacted != container:
        saved.write_text(OmegaConf.to_yaml(OmegaConf.create(redacted)))


def _close_writer(writer: ResultsWriter, out_dir: Path, keep: Any) -> Path:
    """Merge the parts; a full disk or Ctrl-C here loses nothing (the parts stay) and says how to finish."""
    finish = (
        f"every row is safe in {out_dir / PARTS_DIR}; the same command finishes the merge:\n  {resume_command(out_dir)}"
    )
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
    dataset: ParquetDataset,
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
        column = score_column(str(runner_cfg.stop_score))
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


def capacity_warning(capacity: int | None, concurrency: int) -> str | None:
    """Why latencies include queueing when the server said it answers fewer requests at once than were sent."""
    if capacity is None or concurrency <= capacity:
        return None
    return (
        f"the server answers {capacity} request(s) at a time (its X-Sentech-Capacity header) but "
        f"runner.concurrency={concurrency}: the other requests waited inside the server, so latency_s and "
        f"ttft_s include that queueing; for per-request latency run with runner.concurrency={capacity}"
    )


def backend_without_price(cfg: DictConfig) -> DictConfig:
    """The backend node without ``price`` (a cost setting, not the backend's own)."""
    node = cfg.backend
    if "price" not in node:
        return node
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("price")  # type: ignore[union-attr]
    return OmegaConf.create(container)


async def run_evaluation(cfg: DictConfig, out_dir: Path, hooks: Sequence[RunHook] = ()) -> dict[str, Any]:
    """Run one configuration into ``out_dir``; returns counts, score means and the objective.

    ``hooks`` plug into the runner (``engine.hooks``); their columns join the results schema.
    """
    lock_run_dir(out_dir)
    try:
        sampling, dataset_cfg, runner_cfg = validate(cfg)
    except ConfigError:
        scrub_saved_config(cfg, out_dir)
        raise
    price = price_from_config(cfg)
    if runner_cfg.max_cost_usd is not None and price is None:
        raise ConfigError(
            f"runner.max_cost_usd={runner_cfg.max_cost_usd:g} needs backend.price to know what a request "
            "costs, e.g. +backend.price={input_per_mtok: 0.15, output_per_mtok: 0.6} (or per_hour for local)."
        )
    if runner_cfg.stop_at_ci_half_width is not None and dataset_cfg.shuffle_seed is None:
        # An early stop measures the prompts sent so far: they must be a random sample of the dataset.
        dataset_cfg = dataclasses.replace(dataset_cfg, shuffle_seed=0)
    dataset = ParquetDataset(
        dataset_cfg.path,
        limit=dataset_cfg.limit,
        num_shards=dataset_cfg.num_shards,
        shard_index=dataset_cfg.shard_index,
        batch_size=dataset_cfg.batch_size,
        columns=dataset_cfg.columns,
        shuffle_seed=dataset_cfg.shuffle_seed,
    )
    info = dataset.info()
    scorers = _build_scorers(cfg)
    backend = create_backend(backend_without_price(cfg), concurrency=runner_cfg.concurrency)
    if backend.max_concurrency is not None and backend.max_concurrency < runner_cfg.concurrency:
        # More requests in flight than the backend can serve would only queue invisibly inside it;
        # queueing in the runner instead is recorded in queue_s.
        runner_cfg = dataclasses.replace(runner_cfg, concurrency=backend.max_concurrency)
    try:
        if runner_cfg.timeout_s is not None:
            backend.set_timeout(runner_cfg.timeout_s)
        cfg_id = config_id(backend.kind, backend.model, sampling)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not runner_cfg.resume:
            (out_dir / RESULTS_FILE).unlink(missing_ok=True)
            shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
        previous = read_run_table(out_dir)
        if previous is not None:
            check_resumable(previous, out_dir)
        done, resuming = _done_keys(previous, cfg_id)
        if done:
            print(
                f"sentech-eval run: resuming in {out_dir}: {len(done)} rows already done are skipped.", file=sys.stderr
            )
        run_id = uuid.uuid4().hex[:12]
        cache = open_run_cache(
            backend,
            mode=runner_cfg.cache,
            cache_dir=runner_cfg.cache_dir,
            run_id=run_id,
            dataset=dataset_cfg.name,
            unseeded_ok=runner_cfg.cache_unseeded,
            on_corrupt=runner_cfg.cache_on_corrupt,
        )
        hooks = [cache, *hooks] if cache is not None else list(hooks)  # the cache first: a hit needs no other hook
        score_fields = [pa.field(name, dtype) for scorer in scorers for name, dtype in scorer.columns().items()]
        hooks = [*hooks, *budget_hooks(runner_cfg, price, out_dir, cfg_id, dataset, score_fields)]
        schema_hooks = ([ArrivalHook("closed", None)] if runner_cfg.open_loop else []) + list(hooks)
        hook_fields = [pa.field(name, dtype) for hook in schema_hooks for name, dtype in hook.columns().items()]
        schema = resume_schema(results_schema(info.extra_fields, score_fields + hook_fields), previous, out_dir)
        previous = None  # (its memory: only the merge reads those rows again)
        metadata = {
            "run_id": run_id,
            "config_id": cfg_id,
            "config": redacted_config(cfg),
            "backend": backend.metadata(),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "dataset": {"name": dataset_cfg.name, "path": str(dataset_cfg.path), "rows": info.num_rows},
            "created_at": datetime.now(UTC).isoformat(),
            "cache": cache.describe() if cache is not None else {"mode": "off"},
        }
        writer = ResultsWriter(out_dir, schema, metadata)
        identity = RunIdentity(run_id, cfg_id, backend.kind, backend.model, dataset_cfg.name)

        async def run_level(config: RunnerConfig, batches: Iterator[list[Prompt]], prompts: int) -> RunSummary:
            """One Runner over ``batches``; an open loop (or its labelled probe) gets an ArrivalHook first."""
            level_hooks = list(hooks)
            arrival = None
            if runner_cfg.open_loop:
                seed = config.arrival_seed if config.arrival_seed is not None else (sampling.seed or 0)
                rate = None if config.arrival == "closed" else float(config.rate)  # type: ignore[arg-type]
                arrival = ArrivalHook(config.arrival, rate, burstiness=config.burstiness, seed=seed)
                level_hooks.insert(0, arrival)  # first: it takes the items' instants in dataset order
            runner = Runner(
                backend,
                sampling,
                identity,
                writer,
                config,
                scorers=scorers,
                hooks=level_hooks,
                done_keys=done,
                total=prompts * config.repeats,
            )
            if arrival is not None:
                arrival.sleep = runner.pacer.sleep  # Ctrl-C cuts the wait for a scheduled instant short
            level = await runner.run(batches)
            if arrival is not None and arrival.rate is not None:
                level.requested_rps = arrival.rate
                level.achieved_rps, level.send_lag_p99_s, level.schedule_warning = arrival.report()
            return level

        try:
            if runner_cfg.rate == "auto":
                summary = await auto_load_sweep(run_level, dataset.iter_prompt_batches(), info.num_rows, runner_cfg)
            else:
                summary = await run_level(runner_cfg, dataset.iter_prompt_batches(), info.num_rows)
        finally:
            path = _close_writer(writer, out_dir, keep_latest_per_key if resuming else None)
            if cache is not None:
                cache.close()
    finally:
        await backend.aclose()
        for scorer in scorers:
            await scorer.aclose()
    means = summary.score_means()
    result = {
        "results": str(path),
        "rows": summary.total,
        "ok": summary.ok,
        "errors": summary.errors,
        "skipped": summary.skipped,
        "retries": summary.retries,
        "lowest_concurrency": summary.lowest_concurrency,
        "cached": cache.hits if cache is not None else 0,
        "elapsed_s": round(summary.elapsed_s, 3),
        "interrupted": summary.interrupted,
        "stop_reason": summary.stop_reason,
        "scores": means,
    }
    if summary.requested_rps is not None:
        result.update(
            requested_rps=summary.requested_rps,
            achieved_rps=summary.achieved_rps,
            send_lag_p99_s=summary.send_lag_p99_s,
        )
    objective_key = cfg.get("objective")
    if objective_key:
        result["objective"] = means.get(str(objective_key))
    line = f"sentech-eval run: {summary.ok} ok, {summary.errors} errors"
    if summary.skipped:
        line += f", {summary.skipped} skipped (already done)"
    if cache is not None:
        line += f", {cache.hits} from cache"
    if summary.retries:
        line += f", {summary.retries} retries"
    if summary.lowest_concurrency is not None:
        line += f" (429s lowered the concurrency to as low as {summary.lowest_concurrency} of {runner_cfg.concurrency})"
    line += f" in {summary.elapsed_s:.2f} s -> {path}"
    if means:
        line += "  " + " ".join(f"{k}={v:.3f}" for k, v in sorted(means.items()))
    cost = next((h for h in hooks if isinstance(h, CostHook)), None)
    if cost is not None:
        result["cost_usd"] = cost.spent
        line += f"  cost ${cost.spent:.4f}"
    print(line, file=sys.stderr)
    note = cache_note(cache, summary.ok)
    if note:
        print(note, file=sys.stderr)
    if summary.stop_reason:
        # the stop that ended the run would end a resumed one at once: the command lifts it
        precise = next((h for h in hooks if isinstance(h, PrecisionStopHook) and h.reached), None)
        lift: dict[str, str] = {}
        if cost is not None and cost.reached and cost.max_cost_usd is not None:
            lift["runner.max_cost_usd"] = f"{2 * cost.max_cost_usd:g}"
        if precise is not None:
            lift["runner.stop_at_ci_half_width"] = "null"
        how = " and ".join(
            (["with the ceiling doubled"] if "runner.max_cost_usd" in lift else [])
            + (["without the precision stop"] if precise is not None else [])
        )
        print(
            f"sentech-eval run: stopped early: {summary.stop_reason}. The rest can still be sent (rows already ok "
            f"are skipped{'; here ' + how if how else ''}) with:\n  {resume_command(out_dir, lift)}",
            file=sys.stderr,
        )
    if summary.requested_rps is not None and summary.achieved_rps is not None:
        print(
            f"sentech-eval run: open loop ({runner_cfg.arrival}) at {summary.requested_rps:g} req/s: achieved "
            f"{summary.achieved_rps:.2f} req/s, p99 send lag {1000 * (summary.send_lag_p99_s or 0):.1f} ms",
            file=sys.stderr,
        )
    if summary.schedule_warning:
        print(f"sentech-eval run: warning: {summary.schedule_warning}.", file=sys.stderr)
    warning = capacity_warning(backend.advertised_capacity, runner_cfg.concurrency)
    if warning:
        result["server_capacity"] = backend.advertised_capacity
        print(f"sentech-eval run: warning: {warning}.", file=sys.stderr)
    if summary.interrupted:
        print(
            f"sentech-eval run: interrupted; {summary.ok + summary.errors} rows are saved in {path}. "
            f"Resume (rows already ok are skipped, errors retried) with:\n  {resume_command(out_dir)}",
            file=sys.stderr,
        )
    return result


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


def cache_note(cache: RunCache | None, ok: int) -> str | None:
    """What the cache did to this run's measurements, in one line or two (None when it did nothing)."""
    if cache is None:
        return None
    parts, cached = [], cache.hits
    if ok and cached == ok:
        parts.append(
            f"sentech-eval run: all {ok} ok rows came from the response cache: this run measured no latency "
            "(their latency_s/ttft_s are the original requests')."
        )
    elif cached:
        parts.append(
            f"sentech-eval run: {cached} of {ok} ok rows came from the response cache; latency figures in "
            f"reports use the {ok - cached} fresh rows only."
        )
    if cache.refused_unseeded:
        parts.append(
            f"sentech-eval run: {cache.refused_unseeded} seedless requests at temperature > 0 were not served "
            "from the cache (set a seed that is sent, or runner.cache_unseeded=true)."
        )
    return "\n".join(parts) or None


def resume_command(out_dir: Path, replace: dict[str, str] | None = None) -> str:
    """The command that resumes this run: the same overrides with ``hydra.run.dir`` pinned to ``out_dir``;
    in a sweep, the same sweep command with ``hydra.sweep.dir`` pinned (each job resumes in its own dir).
    ``replace`` sets keys to new values (e.g. a higher ``runner.max_cost_usd``), replacing the typed ones."""
    replace = replace or {}

    def swap(args: list[str]) -> list[str]:
        kept = [a for a in args if a.lstrip("+").split("=", 1)[0] not in replace]
        return kept + [f"{key}={value}" for key, value in replace.items()]

    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ValueError, ImportError):  # not inside a Hydra job
        return shlex.join(["sentech-eval", "run", *swap([]), f"hydra.run.dir={out_dir}"])
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # The sweep as the user typed it (`run` keeps its arguments in the environment, which launchers
        # pass on to job processes), and the sweep dir: out_dir without the job's subdir.
        argv = json.loads(os.environ.get(ARGV_ENV, "null")) or sys.argv[1:]
        typed = [a for a in argv if not a.lstrip("+").startswith("hydra.sweep.dir=")]
        if not any(a in ("-m", "--multirun") for a in typed) and not any(
            a.lstrip("+").startswith("sweep=") for a in typed
        ):
            typed = ["-m", *typed]
        depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
        sweep_dir = Path(out_dir).parents[depth - 1] if depth else Path(out_dir)
        return shlex.join(["sentech-eval", "run", *swap(typed), f"hydra.sweep.dir={sweep_dir}"])
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.run.dir=")]
    return shlex.join(["sentech-eval", "run", *swap(overrides), f"hydra.run.dir={out_dir}"])
