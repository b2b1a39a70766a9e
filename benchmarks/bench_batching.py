"""Continuous batching of the local backend (issue 28): throughput, latency, parity, and the anchor.

Side by side in one run, on the embedded SmolLM2-135M with the same threads and sampling:

- **today's path** (``backend.parallel=1``: one request at a time in a worker thread, runner
  concurrency 1) against **batched** ``parallel=N`` for N = 1, 2, 4, 8, 16 (runner concurrency N),
  on three prompt sets: the shipped **capitals** (one system prompt shared by every row), a
  **no-shared-prefix** set built here (each row its own system prompt, so prompts share only the
  chat template's 3-token opening ``<|im_start|>system\\n``; note that with *no* system prompt
  SmolLM2's template inserts its own default one, ~20 tokens shared by every row), and
  **same-prompt** (the first capitals row ``--rows`` times: the whole prompt shared, the shape of
  the anchor's ``-pps``). Each subject answers the same rows; figures: rows/s, generated tokens/s,
  ttft and tpot p50/p90, the share of outputs identical to today's path (temperature 0) and the
  engine's counters (steps, prefix prefills and copies, prompt tokens shared or reused in a slot).
  Today's path runs first and last (its mean is the baseline) so a load change on the shared
  machine hits both sides.
- **anchor**: llama.cpp's own ``llama-batched-bench`` (``build_batched_bench.sh``: the llama.cpp
  vendored in the installed llama-cpp-python's sdist, native flags, same threads, no repacking) at
  each set's mean prompt and generation lengths, N = 1..16, in rows/s (it decodes B sequences of
  exactly ntg tokens in T seconds: B/T rows/s). Like for like it runs with our KV layout, a stream
  of ``N_CTX`` cells per sequence (no ``-kvu``), and without flash attention (``-fa off``: ours and
  today's path run without it; llama.cpp's default turns it on for a CPU); a unified pool (``-kvu``)
  and flash attention are reported beside it.
  The 0.8 target is judged on same-prompt against ``-pps`` (whole prompt prefilled once, then only
  decoding) and on the no-shared set against the plain anchor (nothing shared). Capitals against
  ``-pps`` is an upper bound (its rows share the system prompt, not the question).
- **parity** (temperature 0): ``sentech-eval run`` on all of capitals and arithmetic at parallel=1
  and parallel=8, the share of identical outputs, and ``compare``'s paired test of the scores.

Targets (2 cores): >= 2x rows/s at N=8 on capitals, >= 1.2x on the no-shared set, batched N=1 no
slower than 1.05x today's path, >= 0.8 of the anchor at N=8, parity: no significant score difference
and the large majority (>= 2/3) of outputs identical.
``--sets`` runs some of the sets only (e.g. the no-shared set again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, arg_parser, emit, log, machine

from sentech_eval.backends.local import LocalBackend
from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.paths import default_models_dir
from sentech_eval.types import Completion, Sampling

MODEL = default_models_dir() / EMBEDDED_MODEL.file_name
SAMPLING = Sampling(temperature=0.0, max_tokens=32, seed=0)
N_VALUES = (1, 2, 4, 8, 16)
N_CTX = 2048  # each sequence's window, ours and the anchor's
ANCHOR_TARGET = 0.8
# Issue 28 expects "the large majority" of outputs identical at temperature 0 and asks for no significant
# score difference. Long answers (arithmetic: up to 256 tokens) flip after any near tie in a float sum, so
# their share is lower than short answers' (capitals ~97 %, arithmetic ~75 % here): two in three.
IDENTICAL_TARGET = 2 / 3
BUILD_SCRIPT = Path(__file__).resolve().parent / "build_batched_bench.sh"


# ----------------------------------------------------------------------------------------- prompts
def capitals(rows: int) -> list[list[dict[str, str]]]:
    """The first ``rows`` capitals rows as chat messages (one system prompt for all)."""
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "datasets" / "capitals.parquet").slice(0, rows).to_pylist()
    return [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["prompt"]}] for r in table]


def same_prompt(rows: int) -> list[list[dict[str, str]]]:
    """The first capitals row ``rows`` times: the whole prompt shared, the shape of ``-pps``."""
    return capitals(1) * rows


def no_shared_prefix(rows: int) -> list[list[dict[str, str]]]:
    """Capitals questions whose system prompt starts with the country: no two rows share a prefix
    beyond the template's opening (checked with the tokenizer in ``shared_prefix_tokens``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "datasets" / "capitals.parquet").slice(0, rows).to_pylist()
    return [
        [
            {"role": "system", "content": f"{r['country']} is the subject. Reply with one city name."},
            {"role": "user", "content": f"Which city is the capital of {r['country']}?"},
        ]
        for r in table
    ]


# ------------------------------------------------------------------------------------- throughput
@dataclasses.dataclass
class Measured:
    label: str
    wall_s: float
    completions: list[Completion]
    engine: dict[str, int] = dataclasses.field(default_factory=dict)  # the batch engine's counters

    @property
    def rows_per_s(self) -> float:
        return len(self.completions) / self.wall_s

    @property
    def generated(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.completions)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens or 0 for c in self.completions)

    def percentile(self, field: str, q: float) -> float | None:
        import numpy as np

        values = [getattr(c, field) for c in self.completions if getattr(c, field) is not None]
        return float(np.percentile(values, q)) if values else None


GPU_LAYERS = 0  # set in main: -1 (all layers) when this llama-cpp-python build can offload to a GPU


def gpu_layers() -> int:
    """-1 when the installed llama.cpp can offload to a GPU (then both sides and the anchor use it), else 0."""
    import llama_cpp.llama_cpp as llama_cpp_c

    return -1 if llama_cpp_c.llama_supports_gpu_offload() else 0


def backend_for(parallel: int, threads: int) -> LocalBackend:
    cfg = {"kind": "local", "model_path": str(MODEL), "n_threads": threads, "parallel": parallel, "n_ctx": N_CTX}
    return LocalBackend.from_config({**cfg, "n_gpu_layers": GPU_LAYERS})


async def _answer_all(backend: LocalBackend, prompts: list, concurrency: int) -> list[Completion]:
    gate = asyncio.Semaphore(concurrency)

    async def one(messages):
        async with gate:
            return await backend.complete(messages, SAMPLING)

    return list(await asyncio.gather(*(one(m) for m in prompts)))


def measure(label: str, parallel: int, prompts: list, threads: int) -> Measured:
    """Answer every prompt with ``parallel`` (1 = today's path) at runner concurrency ``parallel``."""
    backend = backend_for(parallel, threads)
    try:
        asyncio.run(_answer_all(backend, prompts[:2], 1))  # warm-up (first decode allocates buffers)
        engine = backend._batch
        before = engine_counters(engine)
        start = time.perf_counter()
        completions = asyncio.run(_answer_all(backend, prompts, parallel))
        wall = time.perf_counter() - start
        counters = {k: v - before[k] for k, v in engine_counters(engine).items()}
    finally:
        asyncio.run(backend.aclose())
    bad = [c.error for c in completions if c.status != "ok"]
    if bad:
        raise SystemExit(f"{label}: {len(bad)} errors, first: {bad[0]}")
    return Measured(label, wall, completions, counters)


def engine_counters(engine: Any) -> dict[str, int]:
    """The batch engine's counters (none for today's path)."""
    names = ("steps", "prefix_prefills", "prefix_copies", "shared_tokens", "reused_tokens")
    return {name: getattr(engine, name) for name in names} if engine is not None else {}


def shared_prefix_tokens(prompts: list) -> int:
    """The longest prefix (in tokens) any two templated prompts of the set share."""
    from sentech_eval.backends.local_batch import common_prefix_length
    from sentech_eval.backends.local_worker import EngineSettings, load_llama

    llm = load_llama(EngineSettings(model_path=str(MODEL), n_ctx=512, n_threads=1, repack=False))
    try:
        tokens = [_template_tokens(llm, messages) for messages in prompts]
        return max(common_prefix_length(a, b) for i, a in enumerate(tokens) for b in tokens[i + 1 :])
    finally:
        llm.close()


def _template_tokens(llm: Any, messages: list) -> list[int]:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    result = formatter(messages=messages)
    return llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)


# ----------------------------------------------------------------------------------------- anchor
def anchor(npp: int, ntg: int, threads: int, pps: bool, unified: bool, flash: bool) -> dict[int, float]:
    """llama-batched-bench's seconds per batch of B sequences, B in N_VALUES.

    ``unified=False`` is our KV layout: a stream per sequence (no ``-kvu``), each of ``N_CTX`` cells
    (batched-bench makes ``n_seq_max`` = the largest B and gives each stream ``-c`` / ``n_seq_max``
    cells, so ``-c`` is ``N_CTX`` x that). ``unified=True``: one pool (``-kvu``) just large enough.
    With ``-pps`` and streams, batched-bench copies the prompt's stream to the others outside its
    timed part (we count our copies). ``flash``: flash attention (``-fa on``; llama.cpp's own
    default, ``auto``, turns it on for a CPU); ours runs without it, as llama-cpp-python does."""
    binary = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=True).stdout.strip()
    n_ctx = max(N_VALUES) * (npp + ntg) + 512 if unified else max(N_VALUES) * N_CTX
    cmd = [binary, "-m", str(MODEL), "-c", str(n_ctx), "-b", "512", "-ub", "512"]
    cmd += ["-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, N_VALUES)), "-t", str(threads)]
    cmd += ["--no-repack", "-ngl", str(999 if GPU_LAYERS else 0)] + (["-pps"] if pps else [])
    cmd += ["-kvu"] if unified else []
    cmd += ["-fa", "on" if flash else "off"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seconds = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            seconds[int(cells[2])] = float(cells[8])
    return seconds


# ----------------------------------------------------------------------------------------- parity
def cli_run(out: Path, dataset: str, parallel: int, threads: int) -> float:
    """``sentech-eval run`` as a user starts it; returns its wall time."""
    cmd = [sys.executable, "-m", "sentech_eval.cli", "run", "backend=local", f"dataset={dataset}", "sampling=greedy"]
    cmd += [f"backend.parallel={parallel}", f"backend.n_threads={threads}", "runner.progress=false"]
    cmd += [f"backend.n_gpu_layers={GPU_LAYERS}"]
    cmd += ["scorers=[contains]" if dataset == "capitals" else "scorers=[numeric]", f"hydra.run.dir={out}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return time.perf_counter() - start


def parity(dataset: str, threads: int, root: Path) -> dict[str, Any]:
    from sentech_eval.analysis.compare import compare
    from sentech_eval.analysis.pairing import pair_results

    one, eight = root / f"{dataset}-1", root / f"{dataset}-8"
    t1 = cli_run(one, dataset, 1, threads)
    t8 = cli_run(eight, dataset, 8, threads)
    paired = pair_results(one, eight, "parallel=1", "parallel=8")
    pairs = paired.pairs
    identical = float((pairs["output_a"] == pairs["output_b"]).mean())
    metrics = compare(paired)
    score = metrics[metrics["metric"] == "score"].iloc[0]
    return {
        "identical": identical,
        "rows": len(pairs),
        "score": score["column"],
        "mean_1": score["value_a"],
        "mean_8": score["value_b"],
        "ci": [score["ci_low"], score["ci_high"]],
        "p_value": score["p_value"],
        "run_s_1": t1,
        "run_s_8": t8,
    }


# ------------------------------------------------------------------------------------------- main
PROMPT_SETS = {"capitals": capitals, "no_shared_prefix": no_shared_prefix, "same_prompt": same_prompt}
SPEEDUP_TARGETS = {"capitals": 2.0, "no_shared_prefix": 1.2}  # same_prompt: reported
# The anchor variants run per set, (pps, unified KV, flash attention); the first is the like-for-like
# one (a KV stream per sequence and no flash attention, as our engine). The 0.8 target is judged on
# the sets whose shape the anchor has: same_prompt against -pps, no_shared_prefix against the plain
# anchor. Capitals against -pps is an upper bound only: -pps prefills the whole prompt once, capitals
# rows share only their system prompt. The others show what a unified cache or flash attention
# (both off in our engine for parity, see local_batch.py) would be worth to llama.cpp itself.
ANCHORS = {
    "capitals": [(True, False, False), (False, False, False)],
    "no_shared_prefix": [(False, False, False), (False, True, False), (False, False, True)],
    "same_prompt": [(True, False, False), (True, True, False), (True, False, True)],
}
JUDGED_AGAINST_ANCHOR = ("no_shared_prefix", "same_prompt")


def anchor_key(pps: bool, unified: bool, flash: bool) -> str:
    return ("pps" if pps else "plain") + ("_kvu" if unified else "") + ("_fa" if flash else "")


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows per prompt set (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-parity", action="store_true", help="skip the parity runs")
    parser.add_argument("--no-anchor", action="store_true", help="skip llama-batched-bench")
    parser.add_argument(
        "--sets", nargs="+", choices=list(PROMPT_SETS), default=list(PROMPT_SETS), help="prompt sets (default: all)"
    )
    args = parser.parse_args()
    global GPU_LAYERS
    GPU_LAYERS = gpu_layers()
    rows = 8 if args.quick else args.rows
    n_values = (1, 8) if args.quick else N_VALUES
    if not MODEL.is_file():
        log(f"{MODEL} is missing: run `sentech-eval fetch-model`")
        return 1
    info = machine()
    log(f"machine: {json.dumps(info)}, n_gpu_layers={GPU_LAYERS}")
    results: dict[str, Any] = {}
    for set_name in args.sets:
        prompts = PROMPT_SETS[set_name](rows)
        load_before = os.getloadavg()[0]
        first = measure("today", 1, prompts, args.threads)
        runs = {n: measure(f"parallel={n}", n, prompts, args.threads) for n in n_values}
        last = measure("today", 1, prompts, args.threads)
        load_after = os.getloadavg()[0]
        base_rows = (first.rows_per_s + last.rows_per_s) / 2
        base_tok = (first.generated / first.wall_s + last.generated / last.wall_s) / 2
        reference = [c.output for c in first.completions]
        npp = round(first.prompt_tokens / len(prompts))
        ntg = max(1, round(first.generated / len(prompts)))
        table = {}
        for n, m in runs.items():
            table[n] = {
                "rows_per_s": m.rows_per_s,
                "gen_tok_per_s": m.generated / m.wall_s,
                "speedup": m.rows_per_s / base_rows,
                "identical": sum(a == c.output for a, c in zip(reference, m.completions)) / len(prompts),
                "ttft_p50": m.percentile("ttft_s", 50),
                "ttft_p90": m.percentile("ttft_s", 90),
                "tpot_p50": m.percentile("tpot_s", 50),
                "tpot_p90": m.percentile("tpot_s", 90),
            }
        base = {
            "rows_per_s": base_rows,
            "gen_tok_per_s": base_tok,
            "ttft_p50": first.percentile("ttft_s", 50),
            "ttft_p90": first.percentile("ttft_s", 90),
            "tpot_p50": first.percentile("tpot_s", 50),
            "tpot_p90": first.percentile("tpot_s", 90),
        }
        results[set_name] = {"today": base, "batched": table, "npp": npp, "ntg": ntg, "load": [load_before, load_after]}
        if not args.no_anchor and not args.quick:
            results[set_name]["anchors"] = {}
            for pps, unified, flash in ANCHORS[set_name]:
                key = anchor_key(pps, unified, flash)
                seconds = anchor(npp, ntg, args.threads, pps, unified, flash)
                results[set_name]["anchors"][key] = seconds
                for n, row in table.items():
                    if n in seconds:
                        row[f"anchor_{key}_rows_per_s"] = n / seconds[n]
                        row[f"of_anchor_{key}"] = row["rows_per_s"] / row[f"anchor_{key}_rows_per_s"]
        log(f"{set_name}: {json.dumps(results[set_name], default=str)}")
        shared = shared_prefix_tokens(prompts[:16])
        n8 = table.get(8)
        if n8:
            target = SPEEDUP_TARGETS.get(set_name)
            emit(
                f"batching.{set_name}.speedup_n8",
                n8["speedup"],
                f">= {target}" if target else "",
                n8["speedup"] >= target if target else None,
                rows_per_s=n8["rows_per_s"],
                today_rows_per_s=base_rows,
                shared_prefix_tokens=shared,
                engine=runs[8].engine,
                load=[load_before, load_after],
            )
            for i, (pps, unified, flash) in enumerate(ANCHORS[set_name]):
                key = anchor_key(pps, unified, flash)
                if f"of_anchor_{key}" not in n8:
                    continue
                judged = i == 0 and set_name in JUDGED_AGAINST_ANCHOR
                emit(
                    f"batching.{set_name}.of_anchor_{key}_n8",
                    n8[f"of_anchor_{key}"],
                    f">= {ANCHOR_TARGET}" if judged else "reported",
                    n8[f"of_anchor_{key}"] >= ANCHOR_TARGET if judged else None,
                )
        n1 = table[1]
        emit(
            f"batching.{set_name}.n1_slowdown",
            base_rows / n1["rows_per_s"],
            "<= 1.05",
            base_rows / n1["rows_per_s"] <= 1.05,
        )
    if not args.no_parity and not args.quick:
        with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
            for dataset in ("capitals", "arithmetic"):
                p = parity(dataset, args.threads, Path(tmp))
                results[f"parity_{dataset}"] = p
                significant = p["p_value"] is not None and p["p_value"] < 0.05
                emit(
                    f"batching.parity.{dataset}.score_difference_p",
                    p["p_value"],
                    ">= 0.05 (no significant difference)",
                    not significant,
                    **{k: v for k, v in p.items() if k != "p_value"},
                )
                emit(
                    f"batching.parity.{dataset}.identical_share",
                    p["identical"],
                    f">= {IDENTICAL_TARGET:.2f} (the large majority)",
                    p["identical"] >= IDENTICAL_TARGET,
                )
    print(json.dumps({"name": "batching.table", "value": None, "target": "", "pass": None, **results}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
