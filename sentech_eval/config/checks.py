"""The checks a schema cannot express, and every config error as one sentence naming the key.

OmegaConf checks keys and types against ``config.schemas``; its errors come out as one
``ConfigError`` sentence naming the key (``config_error``; an unknown key names the nearest valid
one, ``unknown_key_error``). ``*_from_config(cfg)`` check one section each (ranges, combinations,
credentials) and return it typed; ``config.spec.job_spec`` runs them all once, before any request.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from sentech_eval.config.schemas import (
    ARRIVALS,
    BACKEND_SCHEMAS,
    CACHE_MODES,
    CACHE_ON_CORRUPT,
    SCHEMAS,
    TRACKERS,
    DatasetConfig,
    Price,
    PriceConfig,
    RunnerConfig,
    dataset_stem,
)
from sentech_eval.errors import ConfigError
from sentech_eval.secrets import (
    environment_secrets,
    find_credentials,
    is_credential_name,
    is_reference_name,
    redact_tree,
)
from sentech_eval.types import SAMPLING_PARAMS, SAMPLING_RANGES, Sampling

_KINDS = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


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


def resolved_value(cfg: DictConfig, key: str) -> Any:
    """``key``'s resolved value (None when only Hydra's running job can resolve it, e.g. ``${hydra:…}``)."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return None


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
        nullable = (
            schema is None
            or name not in {f.name for f in dataclasses.fields(schema)}
            or _nullable(typing.cast(type, schema), name)
        )
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


def unknown_key_error(
    full_key: str, known: list[str], *, schema: Any = None, override: str | None = None
) -> ConfigError:
    """An unknown key, naming the nearest valid one (a typo) or else every valid one.

    ``schema``: the dataclass the key was checked against, which no ``+`` extends (so no hint to use
    one); a backend's is named (``backend=<kind>``). Elsewhere the sentence says how to add the key:
    ``override`` (the typed override with its ``+``, e.g. ``+scorers.mine._target_=pkg.f``), or ``+KEY=…``.
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
        if known
        else ""
    )
    if schema_name:
        return ConfigError(f"Unknown config key '{full_key}' for {schema_name}; {hint}.")
    if dataclasses.is_dataclass(schema):
        return ConfigError(f"Unknown config key '{full_key}'; {hint}.")
    add = f"to add a new key on purpose, write {override or f'+{full_key}=…'}"
    return ConfigError(
        f"Unknown config key '{full_key}'; {hint} ({add})." if hint else f"Unknown config key '{full_key}'; {add}."
    )


PLUS_HINT = re.compile(r"To append to your (config|default list) use (\+\S+)")


def hydra_error(exc: BaseException) -> ConfigError:
    """One sentence for a Hydra composition error: an unknown key names the nearest valid one, and a key
    or config group that needs a ``+`` to be added says so, with the override to type."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import ConfigAttributeError

    plus = PLUS_HINT.search(str(exc))
    cause = exc.__cause__
    if (
        isinstance(cause, (ConfigAttributeError, ConfigKeyError))
        and getattr(cause, "parent_node", None) is not None
        and cause.key
    ):
        full_key = str(cause.full_key or cause.key)
        schema = OmegaConf.get_type(cause.parent_node)
        known = [str(k) for k in cause.parent_node.keys()]
        return unknown_key_error(full_key, known, schema=schema, override=plus.group(2) if plus else None)
    if plus and plus.group(1) == "default list":
        group = plus.group(2).lstrip("+").split("=", 1)[0]
        return ConfigError(
            f"The config has no {group} to override; write {plus.group(2)} (a + adds a config group the "
            "config does not choose by default)."
        )
    if plus:
        key = plus.group(2).lstrip("+").split("=", 1)[0]
        return ConfigError(f"Unknown config key '{key}'; to add a new key on purpose, write {plus.group(2)}.")
    if isinstance(exc, OverrideParseException):
        reason = " ".join(str(exc.message).split()).split(" See https://")[0].strip()
        return ConfigError(
            f"Cannot parse the override {exc.override!r} ({reason}); quote values with special "
            "characters, e.g. 'key=\"a(b)\"' (see https://hydra.cc/docs/advanced/override_grammar/basic/)."
        )
    return config_error(exc)


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


@functools.cache
def schema_node(schema: type) -> DictConfig:
    """``OmegaConf.structured(schema)``, built once per schema (1-2 ms each at every start otherwise):
    only ever merged into, which copies it."""
    return OmegaConf.structured(schema)


def checked_section(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The ``name`` section checked against its schema (keys and types), as plain data."""
    node = cfg.get(name)
    if node is not None and not isinstance(node, DictConfig):
        raise ConfigError(f"Config key '{name}' must be a mapping, got {type(node).__name__}.")
    try:
        # as plain data first: a node Hydra typed with the schema already may carry keys added with +
        plain = {} if node is None else OmegaConf.to_container(node, resolve=True)
        checked = OmegaConf.merge(schema_node(SCHEMAS[name][0]), plain)
        return OmegaConf.to_container(checked, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise config_error(exc, name) from None


def backend_settings(node: Any, schema: type) -> Any:
    """A ``backend`` node checked against its schema (keys, types; the schema's defaults filled in):
    an instance of ``schema`` (an instance already is one). Unknown keys and wrong types are one
    ``ConfigError`` sentence; so is a negative or non-finite ``price``.
    """
    if isinstance(node, schema):
        return node
    plain: dict[str, Any]
    if isinstance(node, DictConfig):
        plain = typing.cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
    elif isinstance(node, dict):
        plain = dict(node)
    else:
        raise ConfigError(f"Config key 'backend' must be a mapping, got {type(node).__name__}.")
    known = [f.name for f in dataclasses.fields(schema)]
    for key in plain:
        if key not in known:
            raise unknown_key_error(f"backend.{key}", known, schema=schema)
    if plain.get("price") is None:
        plain.pop("price", None)
    try:
        checked = OmegaConf.merge(schema_node(schema), plain)
        settings: Any = OmegaConf.to_object(checked)
    except OmegaConfBaseException as exc:
        raise config_error(exc, "backend") from None
    check_price(settings.price)
    return settings


def find_secret_keys(node: Any) -> list[str]:
    """Dotted names of config entries that hold a credential (by name or by a key-shaped value)."""
    return find_credentials(node, secrets=environment_secrets())


def sampling_from_config(cfg: DictConfig) -> Sampling:
    """The sampling section: keys and types by its schema, ranges by ``types.SAMPLING_RANGES`` (the Sentech API's)."""
    values = checked_section(cfg, "sampling")
    for key, valid in SAMPLING_RANGES.items():
        value = values[key]
        if value is not None and not valid.contains(value, wire_limit=False):
            shown = f"{value:g}" if isinstance(value, float) else value  # as typed: 3, not 3.0
            raise ConfigError(f"sampling.{key}={shown} is out of range; it must be {valid.describe()}.")
    return Sampling(**{key: values[key] for key in SAMPLING_PARAMS})


def dataset_from_config(cfg: DictConfig) -> DatasetConfig:
    """The dataset section, checked; ``name`` defaults to the file name."""
    values = checked_section(cfg, "dataset")
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
    values = checked_section(cfg, "runner")
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


def check_price(price: PriceConfig) -> Price | None:
    """``backend.price`` checked: None when no field is set, else a ``Price`` (unset fields 0)."""
    values = {f.name: getattr(price, f.name) for f in dataclasses.fields(price)}
    for key, value in values.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"backend.price.{key}={value:g} must be 0 or more (USD).")
    if all(value is None for value in values.values()):
        return None
    return Price(**{key: float(value) for key, value in values.items() if value is not None})


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


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data for metadata, without Hydra's own section (never resolved:
    a sweeper's copy has job fields Hydra fills in later)."""
    values: dict[str, Any] = {}
    for key in cfg.keys():
        if key == "hydra":
            continue
        node = cfg[key]
        if isinstance(node, (DictConfig, ListConfig)):
            node = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        values[str(key)] = node
    redacted: dict[str, Any] = redact_tree(values, environment_secrets())
    return redacted
