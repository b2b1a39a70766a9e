"""Typed views of the Hydra config and the checks OmegaConf cannot do (ranges, unknown keys, secrets).

``validate(cfg)`` runs before any request; it raises ``ConfigError`` with one sentence naming the
key and the fix. The YAML under conf/ is the public interface; these dataclasses mirror it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sentech_eval.errors import ConfigError
from sentech_eval.paths import REPO_ROOT, default_models_dir
from sentech_eval.types import SAMPLING_PARAMS, SAMPLING_RANGES, Sampling

SAMPLING_KEYS = SAMPLING_PARAMS
TOP_LEVEL_KEYS = {"experiment", "backend", "sampling", "dataset", "runner", "scorers", "sweep", "hydra", "objective"}
DATASET_KEYS = {"name", "path", "limit", "num_shards", "shard_index", "batch_size"}
RUNNER_KEYS = {
    "concurrency", "repeats", "max_retries", "timeout_s", "rpm", "tpm", "resume",
    "flush_rows", "flush_s", "progress", "backoff_base_s", "backoff_max_s",
}
# A key whose name looks like it carries a credential. `api_key_env` names a variable, so it is fine.
SECRET_KEY_PATTERN = re.compile(r"(^|_)(api_?key|key|token|secret|password|authorization|bearer)$", re.IGNORECASE)
ALLOWED_SECRETISH_KEYS = {"api_key_env", "max_tokens", "top_k"}


@dataclass(frozen=True)
class DatasetConfig:
    """Where the prompts come from and which part of them to run."""

    name: str
    path: str
    limit: int | None = None
    num_shards: int = 1
    shard_index: int = 0
    batch_size: int = 4096


@dataclass(frozen=True)
class RunnerConfig:
    """How requests are sent: concurrency, repeats, retries, rate limits, flushing, resume."""

    concurrency: int = 16
    repeats: int = 1
    max_retries: int = 5
    timeout_s: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    resume: bool = True
    flush_rows: int = 2000
    flush_s: float = 2.0
    progress: bool = True
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


def _section(cfg: DictConfig, name: str) -> dict[str, Any]:
    node = cfg.get(name)
    if node is None:
        return {}
    if not isinstance(node, DictConfig):
        raise ConfigError(f"Config key '{name}' must be a mapping, got {type(node).__name__}.")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _check_keys(section: str, values: dict[str, Any], known: set[str] | tuple[str, ...]) -> None:
    for key in values:
        if key not in known:
            listing = ", ".join(sorted(known))
            raise ConfigError(f"Unknown config key '{section}.{key}'; known keys are: {listing}.")


def _number(section: str, key: str, value: Any, *, integer: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"Config key '{section}.{key}' must be {kind} or null, got {value!r}.")
    return value


def find_secret_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of config keys that look like they hold a credential."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if str(key) not in ALLOWED_SECRETISH_KEYS and SECRET_KEY_PATTERN.search(str(key)):
                found.append(dotted)
            found.extend(find_secret_keys(value, dotted))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(find_secret_keys(value, f"{prefix}[{index}]"))
    return found


def sampling_from_config(cfg: DictConfig) -> Sampling:
    """Check every sampling value's type and range (``types.SAMPLING_RANGES``, the Sentech API's)."""
    values = _section(cfg, "sampling")
    _check_keys("sampling", values, SAMPLING_KEYS)
    s = {k: values.get(k) for k in SAMPLING_KEYS}
    for key, valid in SAMPLING_RANGES.items():
        s[key] = _number("sampling", key, s[key], integer=valid.integer)
        if s[key] is not None and not valid.contains(s[key]):
            raise ConfigError(f"sampling.{key}={s[key]} is out of range; it must be {valid.describe()}.")
    return Sampling(**s)


def dataset_from_config(cfg: DictConfig) -> DatasetConfig:
    """The dataset section, checked."""
    values = _section(cfg, "dataset")
    _check_keys("dataset", values, DATASET_KEYS)
    if not values.get("path"):
        raise ConfigError("dataset.path is not set; pick a shipped dataset (dataset=capitals) or set dataset.path=FILE.parquet.")
    for key in ("limit", "num_shards", "shard_index", "batch_size"):
        _number("dataset", key, values.get(key), integer=True)
    limit = values.get("limit")
    if limit is not None and limit < 1:
        raise ConfigError(f"dataset.limit={limit} must be at least 1 (or null for every row).")
    num_shards = values.get("num_shards") or 1
    shard_index = values.get("shard_index") or 0
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(
            f"dataset.shard_index={shard_index} must be between 0 and dataset.num_shards-1 ({num_shards - 1})."
        )
    batch_size = values.get("batch_size") or 4096
    if batch_size < 1:
        raise ConfigError(f"dataset.batch_size={batch_size} must be at least 1.")
    name = values.get("name") or str(values["path"]).rsplit("/", 1)[-1].removesuffix(".parquet")
    return DatasetConfig(name=name, path=str(values["path"]), limit=limit, num_shards=num_shards,
                         shard_index=shard_index, batch_size=batch_size)


def runner_from_config(cfg: DictConfig) -> RunnerConfig:
    """The runner section, checked."""
    values = _section(cfg, "runner")
    _check_keys("runner", values, RUNNER_KEYS)
    merged = {**asdict(RunnerConfig()), **{k: v for k, v in values.items() if v is not None or k in ("timeout_s", "rpm", "tpm")}}
    for key in ("concurrency", "repeats", "max_retries", "flush_rows"):
        _number("runner", key, merged[key], integer=True)
    for key in ("timeout_s", "rpm", "tpm", "flush_s", "backoff_base_s", "backoff_max_s"):
        _number("runner", key, merged[key])
    if merged["concurrency"] < 1:
        raise ConfigError(f"runner.concurrency={merged['concurrency']} must be at least 1.")
    if merged["repeats"] < 1:
        raise ConfigError(f"runner.repeats={merged['repeats']} must be at least 1.")
    if merged["max_retries"] < 0:
        raise ConfigError(f"runner.max_retries={merged['max_retries']} must be 0 or more.")
    for key in ("timeout_s", "rpm", "tpm"):
        if merged[key] is not None and merged[key] <= 0:
            raise ConfigError(f"runner.{key}={merged[key]} must be positive (or null for no limit).")
    if merged["flush_rows"] < 1:
        raise ConfigError(f"runner.flush_rows={merged['flush_rows']} must be at least 1.")
    return RunnerConfig(**merged)


def validate(cfg: DictConfig) -> tuple[Sampling, DatasetConfig, RunnerConfig]:
    """All checks that must pass before the first request."""
    container = OmegaConf.to_container(cfg, resolve=False)
    secret_keys = find_secret_keys(container)
    if secret_keys:
        raise ConfigError(
            f"Config key '{secret_keys[0]}' looks like a credential; keys never go in config — "
            "export it in the environment variable named by backend.api_key_env (default SENTECH_API_KEY)."
        )
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"Unknown config key '{unknown[0]}'; top-level keys are: {', '.join(sorted(TOP_LEVEL_KEYS - {'hydra'}))}.")
    backend = cfg.get("backend")
    if not isinstance(backend, DictConfig) or not backend.get("kind"):
        raise ConfigError("backend.kind is not set; choose backend=remote or backend=local.")
    return sampling_from_config(cfg), dataset_from_config(cfg), runner_from_config(cfg)


def config_id(backend_kind: str, model: str, sampling: Sampling) -> str:
    """A stable 12-hex-digit hash of backend, model and sampling: the key of one configuration."""
    payload = json.dumps({"backend": backend_kind, "model": model, **asdict(sampling)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data for metadata, without Hydra's own section."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    container.pop("hydra", None)  # type: ignore[union-attr]
    return container  # type: ignore[return-value]


def register_resolvers() -> None:
    """The ``${models_dir:}`` and ``${repo_root:}`` interpolations used in ``conf/`` (idempotent)."""
    if not OmegaConf.has_resolver("models_dir"):
        OmegaConf.register_new_resolver("models_dir", lambda: str(default_models_dir()))
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
