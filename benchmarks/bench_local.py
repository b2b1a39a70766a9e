"""Measurement 5: the local backend's completion tokens/s against a direct llama-cpp-python loop.

Side by side in one run, on the same prompts (the capitals dataset: system + question) with the
same explicit sampling (temperature 0, so both sides generate the very same tokens, which is
checked) and the same model settings:

- **direct**: a plain ``llama_cpp.Llama`` in this process, ``reset()`` then a streamed
  ``create_chat_completion`` per prompt: the least a caller can do for the same work;
- **backend**: ``LocalBackend.complete`` (workers=1: worker thread), interleaved with the direct
  call prompt by prompt (order alternating) so load changes on a shared machine hit both;
- **run**: ``sentech-eval run backend=local`` in its own process, as a user starts it
  (runner.concurrency=1); its rate is taken over the rows' generation span (first
  ``started_at`` to last ``started_at + latency_s``), so start-up and model loading are excluded.

The run is bracketed by two direct loops and compared with their mean, in wall-clock tokens/s
and in tokens per CPU second (the run process's CPU over its generation span, sampled from
/proc, against the direct loop's ``process_time``): on a shared machine the wall-clock figure
swings with other processes' load, the CPU figure hardly does. Each figure is the median of the
per-round ratios. Targets: ≥ 0.95. Also reported
(no target): the direct loop without streaming, and workers=2 (two processes, one thread each)
against workers=1 (one thread, two llama.cpp threads) on all prompts at concurrency 2.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, CpuSampler, arg_parser, emit, emit_ratio, log, machine, median

from sentech_eval.backends.local import LocalBackend, available_cores
from sentech_eval.backends.local_worker import _model_params, cpu_has_amx, sampling_arguments
from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.paths import default_models_dir
from sentech_eval.types import Sampling

RATIO_TARGET = 0.95
MAX_TOKENS = 48


def load_prompts(limit: int) -> tuple[list[list[dict[str, str]]], Path]:
    """The first ``limit`` capitals rows as chat messages, and a Parquet file with just those rows."""
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "datasets" / "capitals.parquet").slice(0, limit)
    rows = table.to_pylist()
    messages = [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["prompt"]}] for r in rows]
    subset = Path(tempfile.mkdtemp(prefix="bench-local-")) / "prompts.parquet"
    pq.write_table(table, subset)
    return messages, subset


def direct_call(llm, messages, args: dict, stream: bool) -> tuple[str, int]:
    """One plain llama-cpp-python call: (output, completion tokens)."""
    llm.reset()  # same cache policy as the backend (reuse_prompt_cache=false)
    if not stream:
        response = llm.create_chat_completion(messages=messages, **args)
        return response["choices"][0]["message"]["content"], response["usage"]["completion_tokens"]
    parts = []
    for chunk in llm.create_chat_completion(messages=messages, stream=True, **args):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            parts.append(content)
    return "".join(parts), llm.last_tokens


def direct_loop(llm, prompts, args: dict, stream: bool) -> tuple[float, list[str], int, float]:
    """(tokens/s, outputs, completion tokens, tokens per CPU second) of a plain llama-cpp-python loop."""
    outputs, tokens = [], 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for messages in prompts:
        text, n = direct_call(llm, messages, args, stream)
        outputs.append(text)
        tokens += n
    return tokens / (time.perf_counter() - start), outputs, tokens, tokens / (time.process_time() - cpu_start)


def paired_loop(llm, backend: LocalBackend, prompts, args: dict, sampling: Sampling):
    """Direct call and backend call prompt by prompt (order alternating), so load drift hits both.

    Returns (direct tok/s, backend tok/s, outputs, tokens); raises if the two disagree.
    """
    clock = time.perf_counter

    async def go():
        spent = {"direct": 0.0, "backend": 0.0}
        outputs, tokens = [], 0
        for i, messages in enumerate(prompts):
            for side in ("direct", "backend") if i % 2 == 0 else ("backend", "direct"):
                start = clock()
                if side == "direct":
                    d_text, d_tokens = direct_call(llm, messages, args, stream=True)
                else:
                    completion = await backend.complete(messages, sampling)
                spent[side] += clock() - start
            if completion.status != "ok" or completion.output != d_text or completion.completion_tokens != d_tokens:
                raise RuntimeError(f"backend and direct loop disagree on prompt {i}: {completion!r} vs {d_text!r}")
            outputs.append(d_text)
            tokens += d_tokens
        return tokens / spent["direct"], tokens / spent["backend"], outputs, tokens

    return asyncio.run(go())


def backend_loop(backend: LocalBackend, prompts, sampling: Sampling, concurrency: int = 1):
    """(tokens/s, outputs, completion tokens) through ``LocalBackend.complete``."""

    async def go():
        queue = iter(prompts)
        results: dict[int, object] = {}

        async def worker():
            for i, messages in queue:
                results[i] = await backend.complete(messages, sampling)

        queue = iter(enumerate(prompts))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, [results[i] for i in range(len(prompts))]

    elapsed, completions = asyncio.run(go())
    bad = [c.error for c in completions if c.status != "ok"]
    if bad:
        raise RuntimeError(f"backend errors: {bad[:3]}")
    tokens = sum(c.completion_tokens for c in completions)
    return tokens / elapsed, [c.output for c in completions], tokens


def cli_run(dataset: Path, run_dir: Path, n_threads: int) -> tuple[float, list[str], int, float]:
    """`sentech-eval run backend=local` as a user starts it: (tokens/s over the generation span,
    outputs, completion tokens, tokens per CPU second of the whole process over that span)."""
    import pyarrow.parquet as pq

    exe = Path(sys.executable).with_name("sentech-eval")
    cmd = [
        str(exe),
        "run",
        "backend=local",
        f"backend.n_threads={n_threads}",
        "backend.parallel=1",  # the one-at-a-time path (continuous batching: bench_batching.py)
        f"dataset.path={dataset}",
        "sampling.temperature=0",
        f"sampling.max_tokens={MAX_TOKENS}",
        "sampling.top_p=null",
        "sampling.top_k=null",
        "runner.concurrency=1",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO_ROOT)
        sampler = CpuSampler(proc.pid)
        proc.wait()
        sampler.stop()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"sentech-eval run failed (exit {proc.returncode}): {stderr.strip()[-1500:]}")
    rows = pq.read_table(run_dir / "results.parquet").sort_by("prompt_id").to_pylist()
    if any(r["status"] != "ok" for r in rows):
        raise RuntimeError("sentech-eval run had error rows")
    starts = [r["started_at"].timestamp() for r in rows]
    ends = [s + r["latency_s"] for s, r in zip(starts, rows)]
    tokens = sum(r["completion_tokens"] for r in rows)
    cpu = sampler.cpu_between(min(starts), max(ends))
    return tokens / (max(ends) - min(starts)), [r["output"] for r in rows], tokens, tokens / cpu


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24, help="capitals rows per round (default 24)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads for the ratio measurements (default 1: ggml's spinning "
        "barriers make multi-thread timings swing several-fold on a shared machine)",
    )
    args = parser.parse_args()
    n_prompts, rounds = (4, 1) if args.quick else (args.prompts, args.rounds)
    model = default_models_dir() / EMBEDDED_MODEL.file_name
    if not model.is_file():
        raise SystemExit(f"{model} is missing; run `sentech-eval fetch-model` first")
    prompts, subset = load_prompts(n_prompts)
    n_threads = args.threads
    repack = not cpu_has_amx()
    sampling = Sampling(temperature=0, max_tokens=MAX_TOKENS)
    call_args = sampling_arguments({"temperature": 0, "max_tokens": MAX_TOKENS, "seed": 0})

    import llama_cpp

    class DirectLlama(llama_cpp.Llama):
        """A plain Llama plus a token count for the streamed loop (generate's yields minus EOG)."""

        def generate(self, tokens, *a, **kw):
            self.last_tokens = 0
            for token in super().generate(tokens, *a, **kw):
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    self.last_tokens += 1
                yield token

    with _model_params(repack):
        direct = DirectLlama(
            model_path=str(model),
            n_ctx=2048,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=512,
            last_n_tokens_size=2048,
            verbose=False,
        )
    # parallel 1: the one-at-a-time path this script measures (continuous batching: bench_batching.py)
    backend = LocalBackend.from_config(
        {"kind": "local", "model_path": str(model), "n_ctx": 2048, "n_threads": n_threads, "parallel": 1}
    )
    log(f"{n_prompts} prompts x {rounds} rounds, max_tokens {MAX_TOKENS}, n_threads {n_threads}, repack {repack}")
    paired_loop(direct, backend, prompts[:2], call_args, sampling)  # warm-up

    backend_ratios, run_ratios, run_cpu_ratios, plain_ratios = [], [], [], []
    rates: dict[str, list[float]] = {
        "direct": [],
        "backend": [],
        "run": [],
        "plain": [],
        "direct_cpu": [],
        "run_cpu": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-local-runs-") as tmp:
        for r in range(rounds):
            # backend vs direct: interleaved prompt by prompt
            d_rate, b_rate, d_out, d_tok = paired_loop(direct, backend, prompts, call_args, sampling)
            # the CLI run, bracketed by two direct loops (their mean cancels linear drift)
            before, _, _, before_cpu = direct_loop(direct, prompts, call_args, stream=True)
            c_rate, c_out, c_tok, c_cpu = cli_run(subset, Path(tmp) / f"run{r}", n_threads)
            after, _, _, after_cpu = direct_loop(direct, prompts, call_args, stream=True)
            p_rate, p_out, p_tok, _ = direct_loop(direct, prompts, call_args, stream=False)
            if not (d_out == c_out == p_out) or not (d_tok == c_tok == p_tok):
                raise RuntimeError("the direct loop and the run generated different tokens")
            bracket, bracket_cpu = (before + after) / 2, (before_cpu + after_cpu) / 2
            backend_ratios.append(b_rate / d_rate)
            run_ratios.append(c_rate / bracket)
            run_cpu_ratios.append(c_cpu / bracket_cpu)
            plain_ratios.append(p_rate / after)
            for key, value in (
                ("direct", d_rate),
                ("backend", b_rate),
                ("run", c_rate),
                ("plain", p_rate),
                ("direct_cpu", bracket_cpu),
                ("run_cpu", c_cpu),
            ):
                rates[key].append(value)
            log(
                f"round {r + 1}/{rounds}: direct {d_rate:.1f} tok/s, backend {b_rate:.1f} ({b_rate / d_rate:.3f}); "
                f"direct {before:.1f}/{after:.1f}, run {c_rate:.1f} ({c_rate / bracket:.3f}); per CPU s: direct "
                f"{bracket_cpu:.1f}, run {c_cpu:.1f} ({c_cpu / bracket_cpu:.3f}); direct non-streamed {p_rate:.1f}; "
                f"{d_tok} tokens"
            )
    asyncio.run(backend.aclose())
    direct.close()

    common = {
        "prompts": n_prompts,
        "rounds": rounds,
        "max_tokens": MAX_TOKENS,
        "n_threads": n_threads,
        "completion_tokens_per_round": d_tok,
        "quick": args.quick,
        "machine": machine(),
    }
    emit_ratio(
        "local.backend_tokens_per_s_ratio_vs_direct",
        backend_ratios,
        RATIO_TARGET,
        backend_tok_s=median(rates["backend"]),
        direct_tok_s=median(rates["direct"]),
        **common,
    )
    emit_ratio(
        "local.run_tokens_per_s_ratio_vs_direct",
        run_ratios,
        RATIO_TARGET,
        run_tok_s=median(rates["run"]),
        direct_tok_s=median(rates["direct"]),
        **common,
    )
    emit_ratio(
        "local.run_tokens_per_cpu_s_ratio_vs_direct",
        run_cpu_ratios,
        RATIO_TARGET,
        run_tok_per_cpu_s=median(rates["run_cpu"]),
        direct_tok_per_cpu_s=median(rates["direct_cpu"]),
        note="the same comparison in CPU time, which load from other processes barely moves",
        **common,
    )
    emit(
        "local.direct_non_streamed_ratio_vs_streamed",
        median(plain_ratios),
        "informational (cost of streaming)",
        None,
        non_streamed_tok_s=median(rates["plain"]),
        ratios=plain_ratios,
        **common,
    )

    # workers=2 (two processes, one llama.cpp thread each) vs workers=1 (one thread, cores threads).
    one = LocalBackend.from_config(
        {"kind": "local", "model_path": str(model), "n_ctx": 2048, "workers": 1, "parallel": 1}
    )
    one_rate, one_out, _ = backend_loop(one, prompts, sampling, concurrency=2)
    asyncio.run(one.aclose())
    two = LocalBackend.from_config({"kind": "local", "model_path": str(model), "n_ctx": 2048, "workers": 2})
    backend_loop(two, prompts[:2], sampling, concurrency=2)  # warm-up
    two_rate, two_out, _ = backend_loop(two, prompts, sampling, concurrency=2)
    asyncio.run(two.aclose())
    if one_out != two_out:
        raise RuntimeError("workers=2 generated different outputs from workers=1")
    log(f"workers=1 {one_rate:.1f} tok/s, workers=2 {two_rate:.1f} tok/s")
    emit(
        "local.workers2_vs_workers1_tokens_per_s",
        two_rate / one_rate,
        "reported (no target)",
        None,
        workers1_tok_s=one_rate,
        workers2_tok_s=two_rate,
        cores=available_cores(),
        prompts=n_prompts,
        quick=args.quick,
        machine=machine(),
    )


if __name__ == "__main__":
    main()
