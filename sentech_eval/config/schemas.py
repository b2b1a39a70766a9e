"""The config's schemas: one dataclass per section, key names, types and defaults in one place.

``SamplingConfig``, ``RunnerConfig``, ``DatasetConfig``, ``RemoteBackendConfig``,
``LocalBackendConfig`` and ``RaceConfig`` are structured-config schemas: each is registered in Hydra's
ConfigStore (``config.composer.register_configs``) as ``base_sampling`` / ``base_runner`` /
``base_dataset`` / ``base_remote`` / ``base_local`` / ``base_race``, and the YAML files of its group
extend it (``defaults: [base_runner, _self_]``; the race sweep files: ``- /race: base_race``), so a
backend's defaults live only here (its YAML sets what differs, e.g. the model). Every backend's schema
has the ``price`` section (``PriceConfig``), so ``backend.price.input_per_mtok=0.15`` needs no ``+``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentech_eval.types import Sampling

TOP_LEVEL_KEYS = {
    "experiment",
    "backend",
    "sampling",
    "dataset",
    "runner",
    "scorers",
    "sweep",
    "hydra",
    "objective",
    "race",
    "report",
}
# runner.arrival: closed loop (the next request goes when one finishes) or an open-loop process.
ARRIVALS = ("closed", "constant", "poisson", "gamma")
# An open-loop client late by more than this at p99, or sending slower than this fraction of the
# requested rate, measured itself rather than the server (vLLM #21104, guidellm #431, llmperf #56).
MAX_P99_SEND_LAG_S = 0.010
MIN_ACHIEVED_FRACTION = 0.98
CACHE_MODES = ("off", "on", "refresh", "only")
CACHE_ON_CORRUPT = ("continue", "stop")
TRACKERS = ("mlflow", "wandb")  # runner.export: where a finished run or sweep is exported (sentech-eval export)

# The sampling schema: Sampling's fields, every one optional (None = not sent), no default of its own.
SamplingConfig = dataclasses.make_dataclass(
    "SamplingConfig",
    [(name, typing.get_args(hint)[0] | None, None) for name, hint in typing.get_type_hints(Sampling).items()],
)
SamplingConfig.__doc__ = "Sampling parameters; null = not sent (the server's default applies)."


@dataclass
class DatasetConfig:
    """Where the prompts come from and which part of them to run."""

    name: str | None = None  # default: the file name without .parquet
    path: str | None = None
    limit: int | None = None  # first N rows
    num_shards: int = 1  # split across jobs: -m dataset.shard_index=0,1,2,3 dataset.num_shards=4
    shard_index: int = 0
    batch_size: int = 4096  # rows read per Parquet batch
    columns: dict[str, str | None] | None = None  # dataset column -> the file's column (prompt: question)
    shuffle_seed: int | None = None  # None: file order; N: a seeded random order (limit takes its first rows)


@dataclass
class RunnerConfig:
    """How requests are sent: concurrency, repeats, retries, rate limits, flushing, resume."""

    concurrency: int = 16  # requests in flight
    repeats: int = 1  # each prompt K times, seeds seed + repeat
    max_retries: int = 5  # on 429/5xx/timeouts/connection errors, exponential backoff with jitter
    timeout_s: float | None = None  # per attempt; null = backend.timeout_s
    rpm: float | None = None  # requests per minute (token bucket); null = unlimited
    tpm: float | None = None  # tokens per minute (token bucket); null = unlimited
    resume: bool = True  # re-running into the same dir skips ok rows, retries errors
    flush_rows: int = 2000  # rows per flushed Parquet part
    flush_s: float = 2.0  # ... or seconds between flushes
    progress: bool = True  # tqdm bar on stderr
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0  # a server's Retry-After (429/503 only) is honoured up to this
    max_error_rate: float | None = None  # the run exits 1 when a larger share of rows are errors
    arrival: str = "closed"  # closed | constant | poisson | gamma
    rate: Any = None  # open loop: requests/s, or "auto" (a closed-loop probe, then fractions of it)
    burstiness: float = 1.0  # gamma: 1 = Poisson, < 1 burstier, > 1 more regular
    arrival_seed: int | None = None  # seeds the send times; None = sampling.seed

    cache: str = "off"  # response cache: off | on (read+write) | refresh (write only) | only (read only)
    cache_dir: str | None = None  # None = the user cache dir (~/.cache/sentech-eval)
    cache_unseeded: bool = False  # serve seedless temperature > 0 requests from the cache too
    cache_on_corrupt: str = "continue"  # a damaged cache file: continue without it, or stop

    @property
    def open_loop(self) -> bool:
        """Whether requests are sent at scheduled instants instead of when a slot frees up."""
        return self.arrival != "closed"

    stop_at_ci_half_width: float | None = None  # stop once the anytime 95 % interval of stop_score is this narrow
    stop_score: str | None = None  # the score (``contains`` or ``score_contains``) for that stop
    max_cost_usd: float | None = None  # stop cleanly (resumable) once the run has cost this much
    export: str | None = None  # mlflow | wandb: export the run (or sweep) to that tracker when it ends


@dataclass
class PriceConfig:
    """``backend.price.*``: USD per million input/output tokens (remote), per hour of the machine (local).

    Every field null (the default) = no price: rows get no ``cost_usd``. A field left null when
    another is set counts as 0.
    """

    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    per_hour: float | None = None


@dataclass
class RemoteBackendConfig:
    """``backend=remote``: the Sentech Chat Completions API or any OpenAI-compatible server.

    No key holds the API key: it is read from the environment variable named by ``api_key_env``.
    """

    kind: str = "remote"
    base_url: str = "https://api.sentech.ai/v1"  # requests go to {base_url}/chat/completions
    model: str = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    api_key_env: str = "SENTECH_API_KEY"  # the NAME of the variable holding the key, never the key
    timeout_s: float = 60.0  # per attempt (runner.timeout_s overrides it)
    stream: bool = False  # SSE streaming: fills ttft_s, itl_s, tpot_s
    include_usage: bool = True  # streaming: send stream_options.include_usage (false for a server that refuses it)
    send_seed: bool = False  # the Sentech contract has no seed field; true sends sampling.seed
    max_response_mb: float = 64.0  # a body (or stream) beyond this is an error row, not read further
    follow_redirects: bool = False  # true: follow same-origin redirects (re-POSTing); others are error rows
    price: PriceConfig = field(default_factory=PriceConfig)  # the run's cost of a request (engine.budget)


@dataclass
class LocalBackendConfig:
    """``backend=local``: a GGUF model run in-process by llama.cpp (docs/local.md explains every key)."""

    kind: str = "local"
    model_path: str | None = None  # the GGUF file (conf/backend/local.yaml: the embedded model)
    hf_repo: str | None = None  # where a missing file can be fetched from (with download: true)
    hf_file: str | None = None
    download: bool = False
    n_ctx: int = 2048  # context window (prompt + completion tokens), rounded up to a multiple of 256
    n_threads: int | None = None  # null = the cores idle at start / workers
    n_batch: int = 512  # prompt tokens evaluated per batch
    n_gpu_layers: int = 0  # layers offloaded to the GPU (-1 = all); needs a CUDA/Metal build
    chat_format: str | None = None  # null = the chat template stored in the GGUF
    workers: int = 1  # 1 = one worker thread; N > 1 = N processes, each with its own model
    parallel: int | None = None  # sequences decoded together (continuous batching); null = auto, 1 = one at a time
    reuse_prompt_cache: bool = False  # false: every request starts with a clean KV cache (honest ttft_s)
    stream: bool = True  # stream tokens so ttft_s is measured; false = one call, ttft_s empty
    repack: Any = "auto"  # llama.cpp weight repacking: true, false or auto (off on AMX CPUs)
    verbose: bool = False  # llama.cpp's own logging on stderr
    price: PriceConfig = field(default_factory=PriceConfig)  # per_hour: the machine's cost (engine.budget)


BackendConfig = RemoteBackendConfig | LocalBackendConfig


@dataclass
class RaceSettings:
    """``race.*`` settings (besides ``race.score``): error level, ties, finalists and the prompt schedule."""

    confidence: float = 0.95  # the best cell survives with at least this probability
    min_effect: float = 0.02  # differences smaller than this are ties: the race may stop with a tie
    keep: int = 1  # stop once this many cells are left (finalists)
    start: int = 50  # prompts per cell in round 1
    growth: float = 1.5  # each round multiplies the prompt count by this, up to the whole dataset

    def check(self) -> None:
        """Raise ValueError naming the bad setting."""
        if not 0 < self.confidence < 1:
            raise ValueError(f"race.confidence={self.confidence} must be between 0 and 1 (e.g. 0.95)")
        if self.min_effect < 0:
            raise ValueError(f"race.min_effect={self.min_effect} must be 0 or more")
        if self.keep < 1:
            raise ValueError(f"race.keep={self.keep} must be at least 1")
        if self.start < 1:
            raise ValueError(f"race.start={self.start} must be at least 1")
        if not self.growth > 1:
            raise ValueError(f"race.growth={self.growth} must be greater than 1")


@dataclass
class RaceConfig(RaceSettings):
    """The ``race`` section's schema: the race's settings and the score it ranks cells by."""

    score: str | None = None  # ``contains`` or ``score_contains``; null: the run's only scorer


@dataclass(frozen=True)
class Price:
    """A checked ``backend.price``: USD per million input/output tokens and per hour of the machine."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_hour: float = 0.0

    def request_cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """The token part of one request's cost (the machine-time part is the runner's: engine.budget)."""
        return ((prompt_tokens or 0) * self.input_per_mtok + (completion_tokens or 0) * self.output_per_mtok) / 1e6


# backend kind -> (schema, its name in the ConfigStore, group "backend")
BACKEND_SCHEMAS: dict[str, tuple[type, str]] = {
    "remote": (RemoteBackendConfig, "base_remote"),
    "local": (LocalBackendConfig, "base_local"),
}

# group -> (schema, its name in the ConfigStore)
SCHEMAS: dict[str, tuple[type, str]] = {
    "sampling": (SamplingConfig, "base_sampling"),
    "runner": (RunnerConfig, "base_runner"),
    "dataset": (DatasetConfig, "base_dataset"),
    "race": (RaceConfig, "base_race"),  # extended by the race sweep files (conf/sweep/race_*.yaml)
}


def dataset_stem(path: str) -> str:
    """A dataset's name from its file: '/data/q.jsonl' -> 'q' (every suffix of a known format dropped)."""
    name = Path(path).name
    for suffix in (".gz", ".zst", ".parquet", ".jsonl", ".json", ".csv", ".pq"):
        name = name.removesuffix(suffix)
    return name if name not in ("", ".", "..") else "dataset"


def named_score_column(name: str) -> str:
    """A score as a user names it in config (``contains`` or ``score_contains``) -> its results column
    ``score_contains``. (A scorer's own columns: ``scorers.base.score_column``.)"""
    return name if name.startswith("score_") else f"score_{name}"
