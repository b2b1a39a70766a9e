"""The run config: schemas, checks, Hydra composition, and the typed job spec built from them.

- ``schemas``   one dataclass per section (the ConfigStore schemas the YAML groups extend), constants
- ``checks``    the checks a schema cannot express, every config error as one sentence naming the key
- ``composer``  the ConfigStore registration, resolvers, and Hydra's compose API over ``conf/``
- ``spec``      ``job_spec(cfg) -> JobSpec``: the composed config checked once, frozen and typed

Everything below ``commands/`` takes a ``JobSpec``. The names here are re-exported for
``from sentech_eval.config import X``. Core floor: imports nothing of ours above core.
"""

from __future__ import annotations

from sentech_eval.config.checks import (
    DIRECTORY_NAME_KEYS,
    INT64_MAX,
    backend_settings,
    check_column_limits,
    check_directory_names,
    check_price,
    config_error,
    credential_in_config_error,
    dataset_from_config,
    find_secret_keys,
    hydra_error,
    number_setting,
    parse_pass_at,
    redacted_config,
    runner_from_config,
    sampling_from_config,
    unknown_key_error,
)
from sentech_eval.config.composer import (
    check_resolved_overrides,
    compose_config,
    composer,
    group_choices,
    register_configs,
    unknown_choice_message,
)
from sentech_eval.config.schemas import (
    ARRIVALS,
    BACKEND_SCHEMAS,
    CACHE_MODES,
    MAX_P99_SEND_LAG_S,
    MIN_ACHIEVED_FRACTION,
    SCHEMAS,
    TOP_LEVEL_KEYS,
    TRACKERS,
    BackendConfig,
    DatasetConfig,
    LocalBackendConfig,
    Price,
    PriceConfig,
    RaceConfig,
    RaceSettings,
    RemoteBackendConfig,
    RunnerConfig,
    SamplingConfig,
    dataset_stem,
    named_score_column,
)
from sentech_eval.config.spec import (
    JobSpec,
    RaceSpec,
    ScorerSpec,
    backend_from_config,
    config_id,
    job_spec,
    scorers_from_config,
)

__all__ = [
    "ARRIVALS",
    "BACKEND_SCHEMAS",
    "DIRECTORY_NAME_KEYS",
    "INT64_MAX",
    "CACHE_MODES",
    "MAX_P99_SEND_LAG_S",
    "MIN_ACHIEVED_FRACTION",
    "SCHEMAS",
    "TOP_LEVEL_KEYS",
    "TRACKERS",
    "BackendConfig",
    "DatasetConfig",
    "JobSpec",
    "LocalBackendConfig",
    "Price",
    "PriceConfig",
    "RaceConfig",
    "RaceSettings",
    "RaceSpec",
    "RemoteBackendConfig",
    "RunnerConfig",
    "SamplingConfig",
    "ScorerSpec",
    "backend_from_config",
    "backend_settings",
    "check_column_limits",
    "check_directory_names",
    "check_price",
    "check_resolved_overrides",
    "compose_config",
    "composer",
    "config_error",
    "config_id",
    "credential_in_config_error",
    "dataset_from_config",
    "dataset_stem",
    "find_secret_keys",
    "group_choices",
    "hydra_error",
    "job_spec",
    "named_score_column",
    "number_setting",
    "parse_pass_at",
    "redacted_config",
    "register_configs",
    "runner_from_config",
    "sampling_from_config",
    "scorers_from_config",
    "unknown_choice_message",
    "unknown_key_error",
]
