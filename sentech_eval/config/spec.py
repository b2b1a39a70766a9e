"""The job spec: the composed config, checked once and typed, for everything below ``commands/``.

``job_spec(cfg)`` is built at the command boundary (the ``run`` task, ``run --estimate``,
``score``, ``compare --judge``) and at the entry of Hydra's own plugins (the race sweeper); it runs
every check before the first request and returns a frozen ``JobSpec``. Nothing below ``commands/``
reads a ``DictConfig``, Hydra's globals or the environment for configuration: it takes the spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sentech_eval.config.checks import (
    DIRECTORY_NAME_KEYS,
    backend_settings,
    check_column_limits,
    check_directory_names,
    check_price,
    checked_section,
    config_error,
    credential_in_config_error,
    dataset_from_config,
    find_secret_keys,
    parse_pass_at,
    redacted_config,
    resolved_value,
    runner_from_config,
    sampling_from_config,
)
from sentech_eval.config.schemas import (
    BACKEND_SCHEMAS,
    TOP_LEVEL_KEYS,
    BackendConfig,
    DatasetConfig,
    LocalBackendConfig,
    Price,
    RaceSettings,
    RunnerConfig,
    named_score_column,
)
from sentech_eval.errors import ConfigError
from sentech_eval.types import Sampling


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer of the run: its name and options (plain data; ``_target_`` for a scorer of the user's)."""

    name: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class RaceSpec:
    """A race's settings (``race.*``) and the score column it ranks cells by."""

    settings: RaceSettings
    score_column: str


@dataclass(frozen=True)
class JobSpec:
    """One job, checked: what runs (backend, sampling), on what (dataset), how (runner), scored how
    (scorers), at what price, raced how (a race sweep only), and the saved config for the results."""

    experiment: str
    backend: BackendConfig
    sampling: Sampling
    dataset: DatasetConfig
    runner: RunnerConfig
    scorers: tuple[ScorerSpec, ...] = ()
    price: Price | None = None
    race: RaceSpec | None = None
    objective: str | None = None  # the score mean returned to Hydra sweepers (Optuna)
    pass_at: tuple[int, ...] = ()  # report.pass_at: the k of pass@k the report gives (read from saved_config)
    saved_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # resolved, redacted

    @property
    def model_name(self) -> str:
        """The ``model`` column's value: the remote model, or the local GGUF file's name."""
        if isinstance(self.backend, LocalBackendConfig):
            return Path(str(self.backend.model_path)).name
        return str(self.backend.model)


def job_spec(cfg: DictConfig, *, racing: bool = False) -> JobSpec:
    """The composed config (Hydra's own section is ignored) checked and typed; one ``ConfigError``
    sentence naming the key for the first thing wrong (credentials in config, unknown keys, types,
    ranges, combinations). ``race`` is built when the config has the section or ``racing`` (the race
    sweeper's base job)."""
    secret_keys = find_secret_keys(OmegaConf.to_container(cfg, resolve=False))
    if secret_keys:
        raise credential_in_config_error(secret_keys[0])
    unknown = sorted(set(map(str, cfg.keys())) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"Unknown config key '{unknown[0]}'; top-level keys are: {', '.join(sorted(TOP_LEVEL_KEYS - {'hydra'}))}."
        )
    check_directory_names({key: resolved_value(cfg, key) for key in DIRECTORY_NAME_KEYS})
    pass_at = report_from_config(cfg.get("report"))
    backend = backend_from_config(cfg.get("backend"))
    sampling, dataset, runner = sampling_from_config(cfg), dataset_from_config(cfg), runner_from_config(cfg)
    check_column_limits(sampling, runner)
    price = check_price(backend.price)
    if runner.max_cost_usd is not None and price is None:
        raise ConfigError(
            f"runner.max_cost_usd={runner.max_cost_usd:g} needs backend.price to know what a request "
            "costs, e.g. backend.price.input_per_mtok=0.15 backend.price.output_per_mtok=0.6 "
            "(or backend.price.per_hour for local)."
        )
    if runner.stop_at_ci_half_width is not None and dataset.shuffle_seed is None:
        # An early stop measures the prompts sent so far: they must be a random sample of the dataset.
        dataset = dataclasses.replace(dataset, shuffle_seed=0)
    scorers = scorers_from_config(cfg.get("scorers"))
    try:
        objective = cfg.get("objective")
        experiment = str(cfg.get("experiment") or dataset.name)
        saved = redacted_config(cfg)
    except Exception as exc:  # noqa: BLE001 - an interpolation that does not resolve: one sentence
        raise config_error(exc) from None
    return JobSpec(
        experiment=experiment,
        backend=backend,
        sampling=sampling,
        dataset=dataset,
        runner=runner,
        scorers=scorers,
        price=price,
        race=race_from_config(cfg, scorers) if racing or cfg.get("race") is not None else None,
        objective=None if objective is None else str(objective),
        pass_at=tuple(pass_at or ()),
        saved_config=saved,
    )


def report_from_config(report: Any) -> list[int] | None:
    """The ``report`` section (only ``report.pass_at``) checked: the k of pass@k, or None."""
    if report is None:
        return None
    if not isinstance(report, DictConfig) or set(report.keys()) - {"pass_at"}:
        extra = sorted(map(str, set(report.keys()) - {"pass_at"})) if isinstance(report, DictConfig) else []
        raise ConfigError(
            f"Unknown config key 'report.{extra[0]}'; the report section has: pass_at."
            if extra
            else "report must be a section (report.pass_at=[1,10])."
        )
    return parse_pass_at(report.get("pass_at"))


def backend_from_config(node: Any) -> BackendConfig:
    """A ``backend`` node (a run's, or a judge's) checked against the schema of its ``kind``."""
    if isinstance(node, BackendConfig):
        return node
    if not isinstance(node, (DictConfig, Mapping)) or not node.get("kind"):
        raise ConfigError("backend.kind is not set; choose backend=remote or backend=local.")
    kind = str(node.get("kind"))
    if kind not in BACKEND_SCHEMAS:
        raise ConfigError(f"Unknown backend kind {kind!r}; choose one of: {', '.join(sorted(BACKEND_SCHEMAS))}.")
    return backend_settings(node if isinstance(node, DictConfig) else dict(node), BACKEND_SCHEMAS[kind][0])


def scorers_from_config(node: Any) -> tuple[ScorerSpec, ...]:
    """The ``scorers`` node (a mapping name -> options, a list of names, or ``a,b``) as ScorerSpecs."""
    if node is None:
        return ()
    try:
        if isinstance(node, str):
            return tuple(ScorerSpec(n.strip(), {}) for n in node.split(",") if n.strip())
        if isinstance(node, (list, tuple, ListConfig)):
            return tuple(ScorerSpec(str(n), {}) for n in node)
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
    except Exception as exc:  # noqa: BLE001 - an interpolation that does not resolve: one sentence
        raise config_error(exc, "scorers") from None
    if not isinstance(node, Mapping):
        raise ConfigError(f"The scorers config must be a mapping name -> options, not {type(node).__name__}.")
    specs = []
    for name, options in node.items():
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"Scorer {name!r}: its config must be a mapping of options, not {options!r}.")
        specs.append(ScorerSpec(str(name), dict(options or {})))
    return tuple(specs)


def race_from_config(cfg: DictConfig, scorers: tuple[ScorerSpec, ...]) -> RaceSpec:
    """``race.*`` checked against RaceConfig; the score defaults to the run's only scorer."""
    values = checked_section(cfg, "race")
    score = values.pop("score", None)
    if not score:
        if len(scorers) != 1:
            raise ConfigError(
                "race.score is not set; name the score the race ranks cells by, e.g. race.score=contains "
                "(with scorers=[contains])."
            )
        score = scorers[0].name
    settings = RaceSettings(**values)  # checked and filled in by the schema: no setting is null
    try:
        settings.check()
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
    return RaceSpec(settings, named_score_column(str(score)))


def config_id(backend_kind: str, model: str, sampling: Sampling) -> str:
    """A stable 12-hex-digit hash of backend, model and sampling: the key of one configuration."""
    payload = json.dumps({"backend": backend_kind, "model": model, **asdict(sampling)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
