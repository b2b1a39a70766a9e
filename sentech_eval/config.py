"""The config's schemas (Hydra ConfigStore) and the checks a schema cannot express (ranges, secrets).

``SamplingConfig``, ``RunnerConfig``, ``DatasetConfig``, ``RemoteBackendConfig``,
``LocalBackendConfig`` and ``RaceConfig`` are structured-config schemas: each is registered in Hydra's
ConfigStore (``register_configs``) as ``base_sampling`` / ``base_runner`` / ``base_dataset`` /
``base_remote`` / ``base_local`` / ``base_race``, and the YAML files of its group extend it
(``defaults: [base_runner, _self_]``; the race sweep files: ``- /race: base_race``),
so key names, types and defaults live in one place (a backend's defaults only here: its YAML sets
what differs, e.g. the model). OmegaConf checks keys and types; its errors
come out as one ``ConfigError`` sentence naming the key (``config_error``). ``validate(cfg)``
adds the range checks and runs before any request.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from sentech_eval.errors import ConfigError
from sentech_eval.paths import CONF_PACKAGE, conf_dir, conf_search_path, datasets_dir, default_models_dir
from sentech_eval.secrets import (
    environment_secrets,
    find_credentials,
    is_credential_name,
    is_reference_name,
    redact_tree,
    secret_in_resolved,
)
from sentech_eval.types import SAMPLING_PARAMS, SAMPLING_RANGES, Sampling

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
    reuse_prompt_cache: bool = False  # false: every request starts with a clean KV cache (honest ttft_s)
    stream: bool = True  # stream tokens so ttft_s is measured; false = one call, ttft_s empty
    repack: Any = "auto"  # llama.cpp weight repacking: true, false or auto (off on AMX CPUs)
    verbose: bool = False  # llama.cpp's own logging on stderr


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


# backend kind -> (schema, its name in the ConfigStore, group "backend")
BACKEND_SCHEMAS: dict[str, tuple[type, str]] = {
    "remote": (RemoteBackendConfig, "base_remote"),
    "local": (LocalBackendConfig, "base_local"),
}
# Keys any backend node may carry besides its schema's: settings of the run about that backend.
BACKEND_SHARED_KEYS = {"price"}

# group -> (schema, its name in the ConfigStore)
SCHEMAS: dict[str, tuple[type, str]] = {
    "sampling": (SamplingConfig, "base_sampling"),
    "runner": (RunnerConfig, "base_runner"),
    "dataset": (DatasetConfig, "base_dataset"),
    "race": (RaceConfig, "base_race"),  # extended by the race sweep files (conf/sweep/race_*.yaml)
}
_KINDS = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


def register_configs() -> None:
    """The schemas in Hydra's ConfigStore and the ``${models_dir:}`` / ``${datasets_dir:}`` resolvers (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, (schema, name) in SCHEMAS.items():
        store.store(group=group, name=name, node=schema)
    for schema, name in BACKEND_SCHEMAS.values():
        store.store(group="backend", name=name, node=schema)
    if not OmegaConf.has_resolver("models_dir"):
        OmegaConf.register_new_resolver("models_dir", lambda: str(default_models_dir()))
    if not OmegaConf.has_resolver("datasets_dir"):
        OmegaConf.register_new_resolver("datasets_dir", lambda: str(datasets_dir()))
    if not OmegaConf.has_resolver("stem"):  # a dataset is named after its file: ${stem:${.path}}
        OmegaConf.register_new_resolver("stem", lambda path: dataset_stem(str(path)))


def dataset_stem(path: str) -> str:
    """A dataset's name from its file: '/data/q.jsonl' -> 'q' (every suffix of a known format dropped)."""
    name = Path(path).name
    for suffix in (".gz", ".zst", ".parquet", ".jsonl", ".json", ".csv", ".pq"):
        name = name.removesuffix(suffix)
    return name if name not in ("", ".", "..") else "dataset"


# Config values that become a directory's name under results/ (conf/config.yaml: results/${experiment}/…;
# experiment defaults to ${dataset.name}).
DIRECTORY_NAME_KEYS = ("experiment",)


def directory_name_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot name a directory inside the results dir (a path separator, '..', a NUL), or None."""
    if not isinstance(value, str):
        return None
    if "/" in value or "\\" in value or "\0" in value or value.strip() in (".", ".."):
        return (
            f"{key}={value!r} becomes a directory name under results/ and must not hold a path separator, "
            f"'..' or a NUL; choose a plain name (e.g. {key}=my-eval), or set hydra.run.dir=PATH for another place."
        )
    return None


def check_directory_names(values: dict[str, Any]) -> None:
    """Refuse names that would put a run outside its results dir (``experiment=../../x``)."""
    for key in DIRECTORY_NAME_KEYS:
        problem = directory_name_problem(key, values.get(key))
        if problem is not None:
            raise ConfigError(problem)


def config_error(exc: BaseException, section: str = "") -> ConfigError:
    """Hydra's or OmegaConf's error (or its cause) as one sentence naming the key and what it must be."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConfigError(f"{first.rstrip('.')}.")
    key = str(getattr(cause, "full_key", "") or getattr(cause, "key", "") or "")
    key = f"{section}.{key}" if section and key and not key.startswith(section + ".") else key or section
    schema = getattr(cause, "object_type", None)
    if isinstance(cause, ConfigKeyError) and dataclasses.is_dataclass(schema):
        return unknown_key_error(key, [f.name for f in dataclasses.fields(schema)], schema=schema)
    message = str(getattr(cause, "msg", "") or cause).strip().splitlines()[0]
    converted = re.search(r"could not be converted to (\w+)", message)
    if isinstance(cause, ValidationError) and "is not a valid bool" in message:
        return ConfigError(f"Config key '{key}' must be true or false, got {getattr(cause, 'value', None)!r}.")
    if isinstance(cause, ValidationError) and converted:
        kind = _KINDS.get(converted.group(1), converted.group(1))
        group, _, name = key.partition(".")
        if not dataclasses.is_dataclass(schema):
            schema = SCHEMAS[group][0] if group in SCHEMAS else None
        nullable = schema is None or name not in {f.name for f in dataclasses.fields(schema)} or _nullable(schema, name)
        return ConfigError(
            f"Config key '{key}' must be {kind}{' or null' if nullable else ''}, got {getattr(cause, 'value', None)!r}."
        )
    return ConfigError(f"Config key '{key}': {message.rstrip('.')}." if key else f"{message.rstrip('.')}.")


def credential_in_config_error(full_key: str) -> ConfigError:
    """A config entry that holds (or is named for) a credential: keys come from the environment only."""
    return ConfigError(
        f"Config key '{full_key}' looks like a credential; keys never go in config — "
        "export it in the environment variable named by backend.api_key_env (default SENTECH_API_KEY)."
    )


def backend_label(schema: Any) -> str | None:
    """``backend=remote`` for the remote backend's schema (None for a schema that is no backend's)."""
    return next((f"backend={kind}" for kind, (known, _) in BACKEND_SCHEMAS.items() if known is schema), None)


def _nullable(schema: type, name: str) -> bool:
    """Whether the schema's field ``name`` accepts null (``Optional[...]`` or ``Any``)."""
    hint = typing.get_type_hints(schema).get(name)
    return hint is Any or type(None) in typing.get_args(hint)


def unknown_key_error(full_key: str, known: list[str], *, schema: Any = None) -> ConfigError:
    """An unknown key, naming the nearest valid one (a typo) or else every valid one.

    ``schema``: the dataclass the key was checked against, which no ``+`` extends (so no hint to use
    one); a backend's is named (``backend=<kind>``).
    """
    schema_name = backend_label(schema)
    parent, _, leaf = full_key.rpartition(".")
    if is_credential_name(leaf) and not is_reference_name(leaf):
        return credential_in_config_error(full_key)
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.5)
    hint = (
        f"the nearest valid key is '{parent + '.' if parent else ''}{close[0]}'"
        if close
        else f"known keys are: {', '.join(sorted(known))}"
    )
    if schema_name:
        return ConfigError(f"Unknown config key '{full_key}' for {schema_name}; {hint}.")
    if dataclasses.is_dataclass(schema):
        return ConfigError(f"Unknown config key '{full_key}'; {hint}.")
    return ConfigError(f"Unknown config key '{full_key}'; {hint} (to add a new key on purpose, write +{full_key}=…).")


def number_setting(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    minimum: float | None = None,
    positive: bool = False,
    default: float | int | None = None,
) -> Any:
    """A numeric setting checked for type and range; ConfigError naming ``name`` (``backend.timeout_s``) otherwise.

    ``None`` gives ``default``; ``positive`` means > 0; ``minimum`` means >= minimum.
    """
    if value is None:
        return default
    shown = f"{value:g}" if isinstance(value, float) else value  # as typed: -1, not -1.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
        or not math.isfinite(value)
    ):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"Config key '{name}' must be {kind} or null, got {value!r}.")
    if positive and value <= 0:
        raise ConfigError(f"{name}={shown} must be greater than 0.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={shown} must be at least {minimum:g}.")
    return value


def _section(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The ``name`` section checked against its schema (keys and types), as plain data."""
    node = cfg.get(name)
    if node is not None and not isinstance(node, DictConfig):
        raise ConfigError(f"Config key '{name}' must be a mapping, got {type(node).__name__}.")
    try:
        # as plain data first: a node Hydra typed with the schema already may carry keys added with +
        plain = {} if node is None else OmegaConf.to_container(node, resolve=True)
        checked = OmegaConf.merge(OmegaConf.structured(SCHEMAS[name][0]), plain)
        return OmegaConf.to_container(checked, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise config_error(exc, name) from None


def backend_settings(node: Any, schema: type) -> Any:
    """A ``backend`` node checked against its schema (keys, types; the schema's defaults filled in):
    an instance of ``schema``. Unknown keys and wrong types are one ``ConfigError`` sentence.

    ``price`` (``BACKEND_SHARED_KEYS``) is the run's, not the backend's, and is left out.
    """
    if isinstance(node, DictConfig):
        plain = OmegaConf.to_container(node, resolve=True)
    elif isinstance(node, dict):
        plain = dict(node)
    else:
        raise ConfigError(f"Config key 'backend' must be a mapping, got {type(node).__name__}.")
    for key in BACKEND_SHARED_KEYS:
        plain.pop(key, None)  # type: ignore[union-attr]
    known = [f.name for f in dataclasses.fields(schema)]
    for key in plain:  # type: ignore[union-attr]
        if key not in known:
            raise unknown_key_error(f"backend.{key}", known, schema=schema)
    try:
        checked = OmegaConf.merge(OmegaConf.structured(schema), plain)
        return OmegaConf.to_object(checked)
    except OmegaConfBaseException as exc:
        raise config_error(exc, "backend") from None


def find_secret_keys(node: Any) -> list[str]:
    """Dotted names of config entries that hold a credential (by name or by a key-shaped value)."""
    return find_credentials(node, secrets=environment_secrets())


def sampling_from_config(cfg: DictConfig) -> Sampling:
    """The sampling section: keys and types by its schema, ranges by ``types.SAMPLING_RANGES`` (the Sentech API's)."""
    values = _section(cfg, "sampling")
    for key, valid in SAMPLING_RANGES.items():
        value = values[key]
        if value is not None and not valid.contains(value, wire_limit=False):
            shown = f"{value:g}" if isinstance(value, float) else value  # as typed: 3, not 3.0
            raise ConfigError(f"sampling.{key}={shown} is out of range; it must be {valid.describe()}.")
    return Sampling(**{key: values[key] for key in SAMPLING_PARAMS})


def dataset_from_config(cfg: DictConfig) -> DatasetConfig:
    """The dataset section, checked; ``name`` defaults to the file name."""
    values = _section(cfg, "dataset")
    if not values["path"]:
        raise ConfigError(
            "dataset.path is not set; pick a shipped dataset (dataset=capitals) or set "
            "dataset.path=FILE (.parquet, .jsonl or .csv)."
        )
    limit, num_shards, shard_index = values["limit"], values["num_shards"], values["shard_index"]
    if limit is not None and limit < 1:
        raise ConfigError(f"dataset.limit={limit} must be at least 1 (or null for every row).")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(
            f"dataset.shard_index={shard_index} must be between 0 and dataset.num_shards-1 ({num_shards - 1})."
        )
    if values["batch_size"] < 1:
        raise ConfigError(f"dataset.batch_size={values['batch_size']} must be at least 1.")
    if values["shuffle_seed"] is not None and values["shuffle_seed"] < 0:
        raise ConfigError(f"dataset.shuffle_seed={values['shuffle_seed']} must be 0 or more (or null for file order).")
    columns = {str(k): v for k, v in (values.get("columns") or {}).items() if v is not None} or None
    if columns is not None and not all(isinstance(v, str) and v for v in columns.values()):
        raise ConfigError(
            "dataset.columns must map dataset columns to the file's column names, "
            "e.g. dataset.columns.prompt=question dataset.columns.reference=answer."
        )
    values["columns"] = columns
    values["name"] = values["name"] or dataset_stem(str(values["path"]))
    values["path"] = str(values["path"])
    return DatasetConfig(**values)


def runner_from_config(cfg: DictConfig) -> RunnerConfig:
    """The runner section: keys, types and defaults by its schema; the ranges checked here."""
    values = _section(cfg, "runner")
    for key in ("concurrency", "repeats", "flush_rows"):
        if values[key] < 1:
            raise ConfigError(f"runner.{key}={values[key]} must be at least 1.")
    if values["max_retries"] < 0:
        raise ConfigError(f"runner.max_retries={values['max_retries']} must be 0 or more.")
    if values["max_error_rate"] is not None and not 0 <= values["max_error_rate"] <= 1:
        raise ConfigError(
            f"runner.max_error_rate={values['max_error_rate']:g} must be between 0 and 1 (or null: "
            "only a run whose every row failed exits non-zero)."
        )
    for key in ("timeout_s", "rpm", "tpm", "flush_s", "backoff_base_s", "backoff_max_s", "max_retry_after_s"):
        if values[key] is not None and not math.isfinite(values[key]):
            raise ConfigError(f"Config key 'runner.{key}' must be a number or null, got {values[key]!r}.")
    shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in values.items()}  # as typed: -1, not -1.0
    for key in ("timeout_s", "rpm", "tpm", "flush_s"):
        if values[key] is not None and values[key] <= 0:
            raise ConfigError(
                f"runner.{key}={shown[key]} must be greater than 0"
                + (" (or null for no limit)." if key != "flush_s" else ".")
            )
    for key in ("backoff_base_s", "backoff_max_s", "max_retry_after_s"):
        if values[key] < 0:
            raise ConfigError(f"runner.{key}={shown[key]} must be 0 or more.")
    for key in ("stop_at_ci_half_width", "max_cost_usd"):
        if values[key] is not None and values[key] <= 0:
            raise ConfigError(f"runner.{key}={values[key]} must be positive (or null for no limit).")
    if values["stop_at_ci_half_width"] is not None and not values["stop_score"]:
        raise ConfigError(
            f"runner.stop_at_ci_half_width={values['stop_at_ci_half_width']} needs runner.stop_score, "
            "the score whose interval is watched (e.g. runner.stop_score=contains, with scorers=[contains])."
        )
    _check_arrival(values)
    cache = values["cache"]
    if cache not in CACHE_MODES:
        raise ConfigError(f"runner.cache={cache!r} is not a cache mode; choose one of: {', '.join(CACHE_MODES)}.")
    if values["cache_on_corrupt"] not in CACHE_ON_CORRUPT:
        raise ConfigError(f"runner.cache_on_corrupt={values['cache_on_corrupt']!r} must be continue or stop.")
    if values["export"] is not None and values["export"] not in TRACKERS:
        raise ConfigError(
            f"runner.export={values['export']!r} is not a tracker; choose one of: {', '.join(TRACKERS)} (or null)."
        )
    return RunnerConfig(**values)


def _check_arrival(merged: dict[str, Any]) -> None:
    """runner.arrival, rate, burstiness and arrival_seed: one sentence per mistake."""
    arrival, rate = merged["arrival"], merged["rate"]
    if arrival not in ARRIVALS:
        raise ConfigError(f"runner.arrival={arrival!r} is not an arrival process; choose one of {', '.join(ARRIVALS)}.")
    if rate is not None and rate != "auto" and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
        raise ConfigError(
            f"runner.rate={rate!r} must be a number of requests/s (e.g. runner.rate=8), a list with "
            "+sweep=load (runner.rate=2,4,8), or auto (find the maximum, then sweep fractions of it)."
        )
    if arrival == "closed":
        if rate is not None:
            raise ConfigError(
                f"runner.rate={rate} needs an open-loop arrival process: add runner.arrival=poisson "
                "(or constant, gamma); runner.arrival=closed sends the next request when one finishes."
            )
        return
    if rate is None or (rate != "auto" and rate <= 0):
        raise ConfigError(
            f"runner.arrival={arrival} needs runner.rate, a positive number of requests/s (e.g. runner.rate=8)."
        )
    if merged["burstiness"] <= 0:
        raise ConfigError(f"runner.burstiness={merged['burstiness']} must be positive (1 = Poisson, below 1 burstier).")
    if merged["arrival_seed"] is not None and merged["arrival_seed"] < 0:
        raise ConfigError(
            f"runner.arrival_seed={merged['arrival_seed']} must be 0 or more (or null for sampling.seed)."
        )


def score_column(name: str) -> str:
    """``contains`` or ``score_contains`` -> ``score_contains`` (the results column)."""
    return name if name.startswith("score_") else f"score_{name}"


@dataclass(frozen=True)
class Price:
    """``backend.price``: USD per million input/output tokens (remote) and per hour of the machine (local)."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_hour: float = 0.0

    def request_cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """The token part of one request's cost (the machine-time part is the runner's: engine.budget)."""
        return ((prompt_tokens or 0) * self.input_per_mtok + (completion_tokens or 0) * self.output_per_mtok) / 1e6


def _plain_mapping(node: Any, name: str, schema: type, example: str) -> dict[str, Any]:
    """A mapping section not in Hydra's ConfigStore, as plain data; a key that is no field of the dataclass
    ``schema`` is refused with one sentence (``unknown_key_error``)."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"Config key '{name}' must be a mapping like {example}.")
    values = OmegaConf.to_container(node, resolve=True)
    known = [f.name for f in dataclasses.fields(schema)]
    for key in values:  # type: ignore[union-attr]
        if key not in known:
            raise unknown_key_error(f"{name}.{key}", known, schema=schema)
    return values  # type: ignore[return-value]


def price_from_config(cfg: DictConfig) -> Price | None:
    """``backend.price`` checked (None when absent): non-negative numbers, known keys only."""
    backend = cfg.get("backend")
    node = backend.get("price") if isinstance(backend, DictConfig) else None
    if node is None:
        return None
    values = _plain_mapping(node, "backend.price", Price, "{input_per_mtok: 0.15, output_per_mtok: 0.6}")
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Config key 'backend.price.{key}' must be a number (USD), got {value!r}.")
        if value < 0:
            raise ConfigError(f"backend.price.{key}={value} must be 0 or more (USD).")
    return Price(**{k: float(v) for k, v in values.items() if v is not None})


def race_settings_from_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``race`` section checked against RaceConfig (keys, types; its defaults filled in), as plain data."""
    return _section(cfg, "race")


def parse_pass_at(value: Any, key: str = "report.pass_at") -> list[int] | None:
    """The k of pass@k from a list or a comma-separated string ("1,10"); None for null. Each k a whole number ≥ 1."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        items = list(value)
    else:
        items = [value]
    ks = []
    for item in items:
        try:
            k = int(str(item).strip())
        except ValueError:
            k = 0
        if k < 1 or (isinstance(item, float) and not float(item).is_integer()):
            raise ConfigError(f"{key} must list whole numbers of samples ≥ 1 (e.g. [1,10,100]), not {item!r}.")
        ks.append(k)
    return sorted(set(ks)) or None


def validate(cfg: DictConfig) -> tuple[Sampling, DatasetConfig, RunnerConfig]:
    """All checks that must pass before the first request."""
    container = OmegaConf.to_container(cfg, resolve=False)
    secret_keys = find_secret_keys(container)
    if secret_keys:
        raise credential_in_config_error(secret_keys[0])
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"Unknown config key '{unknown[0]}'; top-level keys are: {', '.join(sorted(TOP_LEVEL_KEYS - {'hydra'}))}."
        )
    check_directory_names({key: _resolved_value(cfg, key) for key in DIRECTORY_NAME_KEYS})
    report = cfg.get("report")
    if report is not None:
        if not isinstance(report, DictConfig) or set(report.keys()) - {"pass_at"}:
            extra = sorted(set(report.keys()) - {"pass_at"}) if isinstance(report, DictConfig) else []
            raise ConfigError(
                f"Unknown config key 'report.{extra[0]}'; the report section has: pass_at."
                if extra
                else "report must be a section (report.pass_at=[1,10])."
            )
        parse_pass_at(report.get("pass_at"))
    backend = cfg.get("backend")
    if not isinstance(backend, DictConfig) or not backend.get("kind"):
        raise ConfigError("backend.kind is not set; choose backend=remote or backend=local.")
    sampling, dataset, runner = sampling_from_config(cfg), dataset_from_config(cfg), runner_from_config(cfg)
    check_column_limits(sampling, runner)
    return sampling, dataset, runner


INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def check_column_limits(sampling: Sampling, runner: RunnerConfig) -> None:
    """Refuse values whose rows could not be stored, before anything is sent (and paid for): the results'
    ``seed`` column is int64 (repeat r sends ``seed + r``) and ``repeat`` is int32."""
    if runner.repeats - 1 > INT32_MAX:
        raise ConfigError(f"runner.repeats={runner.repeats} is more than the results can number (at most {INT32_MAX}).")
    if runner.max_retries + 1 > INT32_MAX:
        raise ConfigError(
            f"runner.max_retries={runner.max_retries} is more than the results' attempts column counts "
            f"(at most {INT32_MAX - 1})."
        )
    if sampling.seed is not None and sampling.seed + runner.repeats - 1 > INT64_MAX:
        last = sampling.seed + runner.repeats - 1
        raise ConfigError(
            f"sampling.seed={sampling.seed} with runner.repeats={runner.repeats} gives seeds up to {last}, beyond "
            f"what the results' seed column stores (a 64-bit signed integer, at most {INT64_MAX}); choose "
            f"sampling.seed at most {INT64_MAX - runner.repeats + 1}."
        )


def config_id(backend_kind: str, model: str, sampling: Sampling) -> str:
    """A stable 12-hex-digit hash of backend, model and sampling: the key of one configuration."""
    payload = json.dumps({"backend": backend_kind, "model": model, **asdict(sampling)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data for metadata, without Hydra's own section."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    container.pop("hydra", None)  # type: ignore[union-attr]
    return redact_tree(container, environment_secrets())  # type: ignore[return-value]


def group_choices(group: str) -> list[str]:
    """The shipped options of a config group (``backend`` -> local, llama31_8b, remote)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def unknown_choice_message(group: str, name: str) -> str:
    """One sentence for ``group=name`` that names no shipped config."""
    extra = " (or add your own with +scorers.NAME._target_=module.function)" if group == "scorers" else ""
    return (
        f"Unknown {group.removesuffix('s')} {name!r}; choose one of: {', '.join(group_choices(group))}{extra}, "
        f"or add {group}/{name}.yaml to a config dir of your own (--config-dir DIR)."
    )


@contextmanager
def composer(job_name: str = "sentech-eval") -> Iterator[Callable[..., DictConfig]]:
    """Hydra's compose API over the shipped ``conf/``, for as many compositions as the block needs.

    The one place outside the ``run`` app where the run config is composed (``score``, the pairwise
    judge of ``compare``, ``run --estimate``): yields ``compose(overrides, return_hydra_config=False)``,
    whose Hydra errors become one ``ConfigError`` sentence.
    """
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    def compose_one(overrides: Iterable[str], return_hydra_config: bool = False) -> DictConfig:
        try:
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
        except MissingConfigException as exc:
            found = re.search(r"'(\w+)/([^']+)'", str(exc))
            if found:
                raise ConfigError(unknown_choice_message(found.group(1), found.group(2))) from None
            raise ConfigError(" ".join(str(exc).split("\n")[0].split()).rstrip(".") + ".") from None
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise ConfigError(f"Bad override: {' '.join(str(exc).split()).rstrip('.')}.") from None

    register_configs()
    GlobalHydra.instance().clear()
    if conf_search_path().startswith("pkg://"):
        init = initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3", job_name=job_name)
    else:
        init = initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=job_name)
    try:
        with init:
            yield compose_one
    finally:
        GlobalHydra.instance().clear()


def _config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, the user's config dirs) from ``sentech-eval run``'s arguments; flags dropped."""
    overrides, dirs = [], []
    args = iter(argv)
    for arg in args:
        if arg in ("--config-dir", "-cd"):
            dirs.append(next(args, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.partition("=")[2])
        elif not arg.startswith("-"):
            overrides.append(arg)
        elif arg in ("--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"):
            next(args, None)
    return overrides, [d for d in dirs if d]


def _resolved_value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return None  # (a value only Hydra's running job can resolve, e.g. ${hydra:runtime.output_dir})


def check_resolved_overrides(argv: list[str], secrets: Iterable[str]) -> None:
    """Before Hydra writes anything: the config ``sentech-eval run ARGV`` asks for, resolved, holds no secret
    (``secrets``: the values of the key's variables) and names no directory outside results/.

    Literal overrides are checked as given; the config is composed and resolved only when an override
    interpolates (``${…}``) or config dirs of the user's are added (the shipped config reads no variable).
    A value only the running job can resolve is skipped; one sweep value with an interpolation is composed
    on its own.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides, dirs = _config_dirs(argv)
    literal = {}
    for arg in overrides:
        name, sep, value = arg.partition("=")
        if sep and "${" not in value:
            literal[name.lstrip("+~")] = value.strip().strip("'\"")
    if "experiment" not in literal and not any(a.lstrip("+~").startswith("experiment=") for a in overrides):
        literal["experiment"] = literal.get("dataset.name")  # experiment: ${dataset.name}
    check_directory_names(literal)
    if not dirs and not any("hydra.searchpath" in a for a in overrides) and not any("${" in a for a in overrides):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # Hydra says what is wrong with it
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    if dirs:
        fixed.append(f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in dirs)}]")
    trials = [fixed]
    for o in parsed:
        if o.is_sweep_override():
            for value in o.sweep_string_iterator() if not o.is_hydra_override() else ():
                if "${" in value:
                    trials.append([*fixed, f"{o.get_key_element()}={value}"])
    secrets = list(secrets)
    interpolating = [a.partition("=")[0].lstrip("+~") for a in overrides if "${" in a]
    try:
        with composer() as compose:
            for trial in trials:
                cfg = compose(trial, return_hydra_config=True)
                _refuse_resolved(cfg, secrets, interpolating)
    except ConfigError as exc:
        if "holds the value of" in str(exc) or "becomes a directory name" in str(exc):
            raise
        return  # a composition error: Hydra reports it in its own words


def _refuse_resolved(cfg: DictConfig, secrets: list[str], interpolating: list[str]) -> None:
    values: dict[str, Any] = {}
    for key in (*DIRECTORY_NAME_KEYS, "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.name"):
        values[key] = _resolved_value(cfg, key)
    plain = {}
    for key in cfg:
        if key == "hydra":
            continue
        try:
            plain[key] = OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=False)
        except OmegaConfBaseException:
            continue
        except (TypeError, ValueError, AttributeError):
            continue
    found = secret_in_resolved({**plain, **{k: v for k, v in values.items() if k.startswith("hydra")}}, secrets)
    if found is not None:
        through = f" (through the override {', '.join(repr(n + '=…') for n in interpolating)})" if interpolating else ""
        raise ConfigError(
            f"Refusing the config: '{found}' resolves to a value that holds the value of a credential environment "
            f"variable{through}; Hydra would write it into the run dir's name, its saved config and the results — "
            "a key is read from the variable named by backend.api_key_env only, never interpolated."
        )
    check_directory_names(values)


def compose_config(overrides: list[str], *, job_name: str = "sentech-eval") -> DictConfig:
    """The config ``sentech-eval run OVERRIDES`` composes (one composition through ``composer``)."""
    with composer(job_name) as compose:
        return compose(overrides)
