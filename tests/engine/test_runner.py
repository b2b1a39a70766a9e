"""The runner in-process against a scripted backend: attempts, retries, pauses, stops, hooks.

Fast and exact (no network, no model); the end-to-end behaviour against a real server is in
tests/commands/test_run_remote.py and tests/reliability/.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sentech_eval.backends.scripted import Call, ScriptedBackend, answer, failure
from sentech_eval.config import RunnerConfig
from sentech_eval.engine.hooks import Item, RunHook
from sentech_eval.engine.results import ResultsWriter, results_schema
from sentech_eval.engine.runner import RunIdentity, Runner
from sentech_eval.errors import AuthenticationError
from sentech_eval.types import Completion, Prompt, Sampling

IDENTITY = RunIdentity("run", "cfg", "scripted", "scripted", "unit")
TIMING = ("started_at", "queue_s")


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", ({"role": "user", "content": f"q{i}"},), f"a{i}") for i in range(n)]


def config(**overrides) -> RunnerConfig:
    base = RunnerConfig(concurrency=4, max_retries=3, progress=False, backoff_base_s=0.001, backoff_max_s=0.002)
    return dataclasses.replace(base, **overrides)


def run(
    tmp_path: Path,
    backend: ScriptedBackend,
    items: list[Prompt],
    cfg: RunnerConfig,
    *,
    hooks: tuple[RunHook, ...] = (),
    schema: pa.Schema | None = None,
    batch: int = 1000,
    sampling: Sampling = Sampling(temperature=0.0, seed=1),
):
    """Run ``items`` and return (summary or the exception raised, rows by prompt_id, runner)."""
    writer = ResultsWriter(tmp_path, schema or results_schema(), {"test": True})
    runner = Runner(backend, sampling, IDENTITY, writer, cfg, hooks=hooks, total=len(items))
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    try:
        outcome = asyncio.run(runner.run(iter(batches)))
    except AuthenticationError as exc:
        outcome = exc
    path = writer.close()
    rows = {r["prompt_id"]: r for r in pq.read_table(path).to_pylist()}
    return outcome, rows, runner


def by_prompt(plans: dict[str, list[Completion]], default: Completion | None = None):
    """A plan answering each prompt's n-th attempt with ``plans[prompt][n-1]`` (then the last one)."""

    def plan(call: Call) -> Completion:
        planned = plans.get(call.prompt)
        if not planned:
            return default or answer(f"echo {call.prompt}")
        return planned[min(call.attempt, len(planned)) - 1]

    return plan


def test_attempts_and_retries_are_counted(tmp_path):
    plans = {
        "q0": [failure(503), failure(503), answer("third time")],  # 2 retries, then ok
        "q1": [failure(400)],  # not retryable: one attempt
        "q2": [failure(None)] * 10,  # connection errors until max_retries is spent
        "q3": [failure(429), answer("after 429")],
    }
    backend = ScriptedBackend(by_prompt(plans))
    summary, rows, _ = run(tmp_path, backend, prompts(6), config())
    assert [rows[p]["attempts"] for p in ("p0", "p1", "p2", "p3", "p4", "p5")] == [3, 1, 4, 2, 1, 1]
    assert [rows[p]["status"] for p in ("p0", "p1", "p2", "p3")] == ["ok", "error", "error", "ok"]
    assert rows["p0"]["output"] == "third time" and rows["p1"]["http_status"] == 400
    assert summary.retries == 2 + 0 + 3 + 1
    assert (summary.total, summary.ok, summary.errors) == (6, 4, 2)
    assert len(backend.calls) == 3 + 1 + 4 + 2 + 1 + 1


def test_retry_after_pauses_every_worker(tmp_path):
    pause = 0.3

    async def plan(call: Call) -> Completion:
        if call.index == 0:
            return failure(429, retry_after_s=pause)
        await asyncio.sleep(0.02)
        return answer()

    backend = ScriptedBackend(plan)
    summary, rows, _ = run(tmp_path, backend, prompts(12), config(concurrency=4))
    assert summary.ok == 12 and rows["p0"]["attempts"] == 2
    limited = backend.calls[0]
    # Calls already in flight when the 429 came back finish; every call started after it waits out the pause.
    later = [c for c in backend.calls if c.started > limited.ended]
    assert len(later) >= 12 - 4
    assert min(c.started for c in later) >= limited.ended + pause - 0.01
    # and the pause is counted as time queued inside the runner, not as request latency
    assert max(r["queue_s"] for r in rows.values()) >= pause - 0.05


def test_a_rejected_key_stops_the_run(tmp_path):
    def plan(call: Call) -> Completion:
        return failure(401, error="HTTP 401: bad key") if call.index == 2 else answer()

    backend = ScriptedBackend(plan, auth_hint="; check the key in the environment variable MY_KEY")
    outcome, rows, _ = run(tmp_path, backend, prompts(50), config(concurrency=1))
    assert isinstance(outcome, AuthenticationError)
    assert "MY_KEY" in str(outcome) and "bad key" in str(outcome)
    assert len(backend.calls) == 3  # nothing after the 401
    assert set(rows) == {"p0", "p1"}  # the 401 is not a result row


class StopAfter(RunHook):
    """Stops the run cleanly after ``n`` rows."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_row(self, row):
        self.seen += 1
        return f"{self.n} rows are enough" if self.seen >= self.n else None


def test_a_stop_leaves_unsent_items_unsent(tmp_path):
    async def plan(call: Call) -> Completion:
        await asyncio.sleep(0.005)
        return answer()

    backend = ScriptedBackend(plan)
    summary, rows, _ = run(tmp_path, backend, prompts(100), config(concurrency=3), hooks=(StopAfter(10),))
    assert summary.stop_reason == "10 rows are enough" and not summary.interrupted
    sent = {c.prompt for c in backend.calls}
    assert {r["prompt"] for r in rows.values()} == sent  # every sent item is saved, nothing else
    assert 10 <= len(rows) <= 10 + 3  # the in-flight ones finish
    assert summary.total == len(rows)


def test_signal_stop_saves_in_flight_and_sends_nothing_new(tmp_path):
    runner_box = []

    async def plan(call: Call) -> Completion:
        if call.index == 5:
            runner_box[0].request_stop()
        await asyncio.sleep(0.005)
        return answer()

    backend = ScriptedBackend(plan)
    writer = ResultsWriter(tmp_path, results_schema(), {})
    runner = Runner(backend, Sampling(), IDENTITY, writer, config(concurrency=2))
    runner_box.append(runner)
    summary = asyncio.run(runner.run(iter([prompts(40)])))
    table = pq.read_table(writer.close())
    assert summary.interrupted and len(backend.calls) == 6
    assert table.num_rows == 6


def test_fast_path_and_paced_path_give_identical_rows(tmp_path):
    plans = {"q1": [failure(503), answer("retried")], "q4": [failure(400)], "q6": [failure(None)] * 9}
    items = prompts(30)
    _, fast, fast_runner = run(tmp_path / "fast", ScriptedBackend(by_prompt(plans)), items, config())
    # a huge rpm limit: nothing is slowed down, but every send goes through the paced path
    _, paced, paced_runner = run(tmp_path / "paced", ScriptedBackend(by_prompt(plans)), items, config(rpm=1e9))
    assert fast_runner.pacer.unpaced and not paced_runner.pacer.unpaced
    strip = lambda rows: {k: {c: v for c, v in r.items() if c not in TIMING} for k, r in rows.items()}  # noqa: E731
    assert strip(fast) == strip(paced)
    assert fast["p1"]["attempts"] == 2 and fast["p6"]["attempts"] == 4


def test_repeats_get_seed_plus_repeat_and_resume_skips_done_keys(tmp_path):
    backend = ScriptedBackend(lambda call: answer(f"seed {call.sampling.seed}"))
    writer = ResultsWriter(tmp_path, results_schema(), {})
    runner = Runner(backend, Sampling(seed=10), IDENTITY, writer, config(repeats=3), done_keys={("p0", 1)})
    summary = asyncio.run(runner.run(iter([prompts(2)])))
    rows = pq.read_table(writer.close()).to_pylist()
    assert summary.skipped == 1 and summary.total == 5
    assert sorted((r["prompt_id"], r["repeat"], r["seed"], r["output"]) for r in rows) == [
        ("p0", 0, 10, "seed 10"),
        ("p0", 2, 12, "seed 12"),
        ("p1", 0, 10, "seed 10"),
        ("p1", 1, 11, "seed 11"),
        ("p1", 2, 12, "seed 12"),
    ]


class Cache(RunHook):
    """A cache-like hook: answers 'q0' without a request, stores every ok answer, marks rows."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}

    def columns(self):
        return {"cached": pa.bool_()}

    async def before_send(self, item: Item):
        if item.prompt.id == "p0":
            item.set_column("cached", True)
            return answer("from the cache")
        return None

    async def after_final(self, item: Item, completion: Completion) -> None:
        if completion.status == "ok" and not (item.columns or {}).get("cached"):
            self.stored[item.prompt.id] = completion.output
            item.set_column("cached", False)


def test_hooks_answer_items_without_a_request_and_fill_their_columns(tmp_path):
    hook = Cache()
    backend = ScriptedBackend(lambda call: answer(f"echo {call.prompt}"))
    schema = results_schema(score_fields=[pa.field(n, t) for n, t in hook.columns().items()])
    summary, rows, _ = run(tmp_path, backend, prompts(5), config(), hooks=(hook,), schema=schema)
    assert {c.prompt for c in backend.calls} == {"q1", "q2", "q3", "q4"}
    assert rows["p0"]["output"] == "from the cache" and rows["p0"]["cached"] is True
    assert rows["p0"]["attempts"] == 0
    assert [rows[f"p{i}"]["cached"] for i in range(1, 5)] == [False] * 4
    assert hook.stored == {f"p{i}": f"echo q{i}" for i in range(1, 5)}
    assert summary.ok == 5


class Arrivals(RunHook):
    """An open-loop schedule: item i may not be sent before start + i × gap."""

    def __init__(self, gap: float) -> None:
        self.gap, self.start = gap, None

    async def before_send(self, item: Item):
        loop = asyncio.get_running_loop()
        self.start = self.start or loop.time()
        await asyncio.sleep(max(0.0, self.start + item.index * self.gap - loop.time()))
        return None


def test_a_before_send_hook_can_hold_items_back(tmp_path):
    backend = ScriptedBackend(lambda call: answer())
    arrivals = Arrivals(0.05)
    summary, rows, _ = run(tmp_path, backend, prompts(6), config(concurrency=6), hooks=(arrivals,))
    starts = sorted(c.started for c in backend.calls)
    # no item goes out before its instant: the k-th send is at or after start + k × gap (late is
    # possible on a loaded machine, early is not; loop.time() and time.monotonic() are one clock)
    assert summary.ok == 6
    assert all(s >= arrivals.start + k * 0.05 - 1e-3 for k, s in enumerate(starts)), (arrivals.start, starts)


def test_never_more_workers_than_items(tmp_path):
    """runner.concurrency=1000000 on 6 items starts 6 workers (not a million coroutines), and sends each once."""
    import time
    import tracemalloc

    backend = ScriptedBackend(by_prompt({}, default=answer("x")))
    tracemalloc.start()
    started = time.perf_counter()
    summary, rows, runner = run(tmp_path, backend, prompts(6), config(concurrency=1_000_000))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert runner.worker_count() == 6 and len(rows) == 6 and summary.ok == 6
    assert peak < 50 * 1024 * 1024 and elapsed < 5, (peak, elapsed)
