"""Hydra composition: the schemas in the ConfigStore, the resolvers, and the compose API over ``conf/``.

``register_configs`` puts every schema of ``config.schemas`` into Hydra's ConfigStore and registers
the ``${models_dir:}`` / ``${datasets_dir:}`` / ``${stem:}`` resolvers; ``composer`` (and
``compose_config`` for one composition) composes the run config as ``sentech-eval run`` would, for the
commands that compose it themselves (``score``, ``compare --judge``, ``run --estimate``). Hydra's
errors come out as one ``ConfigError`` sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentech_eval.config.checks import (
    DIRECTORY_NAME_KEYS,
    check_directory_names,
    hydra_error,
    resolved_value,
)
from sentech_eval.config.schemas import BACKEND_SCHEMAS, SCHEMAS, dataset_stem
from sentech_eval.errors import ConfigError
from sentech_eval.paths import CONF_PACKAGE, conf_dir, conf_search_path, datasets_dir, default_models_dir
from sentech_eval.secrets import secret_in_resolved


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
            if isinstance(exc.__cause__ or exc.__context__, OmegaConfBaseException) or "use +" in str(exc):
                raise hydra_error(exc) from None  # a key's name or type, or a + it needs: the sentence says
            raise ConfigError(f"Bad override: {' '.join(str(exc).split()).rstrip('.')}.") from None

    register_configs()
    GlobalHydra.instance().clear()
    init: initialize_config_module | initialize_config_dir
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
    literal: dict[str, str | None] = {}
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
        values[key] = resolved_value(cfg, key)
    plain: dict[str, Any] = {}
    for key in map(str, cfg.keys()):
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
