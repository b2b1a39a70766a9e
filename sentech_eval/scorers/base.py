"""The Scorer protocol, the registry of built-in scorers and ``build_scorers``.

A scorer turns one results row (a dict: ``output``, ``reference``, ``prompt``,
``completion_tokens`` ...) into score columns: ``score_<name>`` (float64; 1/0 for pass/fail)
and, where useful, ``score_<name>_detail`` (string). The runner calls ``score`` only for rows
with ``status == "ok"``; errored rows get null score columns.

Scorers come from the ``scorers`` config node, a mapping ``name -> config``. A config with a
``_target_`` is built with Hydra ``instantiate``: the target may be a Scorer class (called with
``name=`` plus the options) or a plain function ``f(output, reference, row, **options) -> float
| dict`` (sync or async), which is wrapped in a ``FunctionScorer``. A config without
``_target_`` takes the built-in registered under its name.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from sentech_eval.config import ScorerSpec, scorers_from_config
from sentech_eval.errors import ConfigError


@runtime_checkable
class Scorer(Protocol):
    """What the runner and ``sentech-eval score`` need from a scorer."""

    name: str

    def columns(self) -> dict[str, pa.DataType]:
        """The columns this scorer writes, with their Arrow types."""
        ...

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one ok row; returns values for (a subset of) ``columns()``."""
        ...

    async def aclose(self) -> None:
        """Release whatever the scorer holds (the judge's backend)."""
        ...


# name -> "module:Class"; imported lazily (the judge pulls in backends).
SCORERS: dict[str, str] = {
    "exact_match": "sentech_eval.scorers.text:ExactMatch",
    "contains": "sentech_eval.scorers.text:Contains",
    "token_f1": "sentech_eval.scorers.text:TokenF1",
    "regex": "sentech_eval.scorers.regex:RegexMatch",
    "numeric": "sentech_eval.scorers.numeric:NumericMatch",
    "json_valid": "sentech_eval.scorers.json_valid:JsonValid",
    "length": "sentech_eval.scorers.length:Length",
    "judge": "sentech_eval.scorers.judge:JudgeScorer",
    "code_exec": "sentech_eval.scorers.code_exec:CodeExec",
}


def score_column(name: str) -> str:
    """The main column of scorer ``name``."""
    return f"score_{name}"


def detail_column(name: str) -> str:
    """The detail column of scorer ``name``."""
    return f"score_{name}_detail"


class BaseScorer:
    """Shared plumbing for the built-ins: one float column plus one detail column."""

    name: str = "base"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = str(name)

    def columns(self) -> dict[str, pa.DataType]:
        return {score_column(self.name): pa.float64(), detail_column(self.name): pa.string()}

    def result(self, value: float | None, detail: str | None = None) -> dict[str, Any]:
        """The output dict for one row."""
        return {score_column(self.name): None if value is None else float(value), detail_column(self.name): detail}

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.score_sync(row)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def references(row: Mapping[str, Any]) -> list[str]:
    """The row's reference(s) as strings: a list/array reference gives several, None gives none."""
    ref = row.get("reference")
    if ref is None:
        return []
    if isinstance(ref, float) and math.isnan(ref):
        return []
    if isinstance(ref, (list, tuple)) or type(ref).__name__ == "ndarray":
        return [str(r) for r in ref if r is not None]
    return [str(ref)]


class FunctionScorer:
    """Wraps a user function ``f(output, reference, row) -> float | dict`` as a Scorer.

    A returned dict may hold ``score`` (float) and ``detail`` (str); any other keys go into the
    detail as JSON. An exception inside the function is recorded in the detail (score null),
    so one odd row does not stop a run.
    """

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        self.name = name
        self.func = func

    def columns(self) -> dict[str, pa.DataType]:
        return {score_column(self.name): pa.float64(), detail_column(self.name): pa.string()}

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        out_col, det_col = score_column(self.name), detail_column(self.name)
        try:
            value = self.func(row.get("output"), row.get("reference"), row)
            if inspect.isawaitable(value):
                value = await value
            score, detail = _coerce(value)
            return {out_col: score, det_col: detail}
        except Exception as exc:  # noqa: BLE001 - a user's function: record, do not crash
            return {out_col: None, det_col: f"error: {type(exc).__name__}: {exc}"}

    async def aclose(self) -> None:
        return None


def _coerce(value: Any) -> tuple[float | None, str | None]:
    """A user function's return value as (score, detail)."""
    if value is None:
        return None, None
    if isinstance(value, bool) or isinstance(value, numbers.Real):
        return float(value), None
    if isinstance(value, Mapping):
        rest = {k: v for k, v in value.items() if k not in ("score", "detail")}
        score = value.get("score")
        detail = value.get("detail")
        if detail is None and rest:
            detail = json.dumps(rest, default=str)
        return (None if score is None else float(score)), (None if detail is None else str(detail))
    raise TypeError(f"a scorer function must return a number, a dict or None, not {type(value).__name__}")


def _as_scorer(name: str, obj: Any) -> Scorer:
    """Turn what ``instantiate`` produced (a partial of a class or function, or an object) into a Scorer."""
    if isinstance(obj, functools.partial) and inspect.isclass(obj.func):
        cls = obj.func
        params = inspect.signature(cls).parameters
        accepts_name = "name" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        if accepts_name and "name" not in obj.keywords:
            obj = obj(name=name)
        else:
            obj = obj()
    if hasattr(obj, "score") and hasattr(obj, "columns"):
        if not getattr(obj, "name", None):
            obj.name = name
        if not hasattr(obj, "aclose"):
            obj.aclose = _noop_aclose
        return obj
    if callable(obj):
        if isinstance(obj, functools.partial):
            try:
                inspect.signature(obj.func).bind(None, None, None, *obj.args, **obj.keywords)
            except TypeError as exc:
                raise ConfigError(
                    f"Scorer {name!r}: {getattr(obj.func, '__qualname__', obj.func)} cannot be called as "
                    f"f(output, reference, row, **options) with these options ({exc})."
                ) from None
            except ValueError:  # builtins without a signature: nothing to check
                pass
        return FunctionScorer(name, obj)
    raise ConfigError(
        f"Scorer {name!r}: its _target_ built a {type(obj).__name__}, which is neither a Scorer "
        "(name, columns, score, aclose) nor a function f(output, reference, row)."
    )


async def _noop_aclose() -> None:
    return None


def build_scorer(name: str, cfg: Any = None) -> Scorer:
    """Build one scorer from its config node (``_target_`` + options) or from the registry by name."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if cfg is None:
        cfg = {}
    if isinstance(cfg, DictConfig):
        options = cfg
    elif isinstance(cfg, Mapping):
        options = OmegaConf.create(dict(cfg))
    else:
        raise ConfigError(f"Scorer {name!r}: its config must be a mapping of options, not {cfg!r}.")
    if "_target_" not in options:
        if name not in SCORERS:
            known = ", ".join(sorted(SCORERS))
            raise ConfigError(
                f"Unknown scorer {name!r}; choose one of: {known} (or give it a _target_ to your own function or class)."
            )
        module_name, class_name = SCORERS[name].split(":")
        target = f"{module_name}.{class_name}"
        options = OmegaConf.merge(OmegaConf.create({"_target_": target}), options)
    try:
        built = instantiate(options, _partial_=True, _convert_="all")
    except ConfigError:
        raise
    except Exception as exc:  # hydra wraps import errors and bad options in its own exceptions
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"Scorer {name!r}: cannot build {options.get('_target_')!r}: {_one_line(cause)}.") from exc
    try:
        return _as_scorer(name, built)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Scorer {name!r}: bad options for {options.get('_target_')!r}: {_one_line(exc)}.") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.rstrip(".") or type(exc).__name__


def build_scorers(scorers: Sequence[ScorerSpec] | Any) -> list[Scorer]:
    """All scorers of a job spec (``JobSpec.scorers``), or of a ``scorers`` config node (mapping
    name -> options, a list of names, or None)."""
    if not (isinstance(scorers, (tuple, list)) and all(isinstance(s, ScorerSpec) for s in scorers)):
        scorers = scorers_from_config(scorers)
    built = [build_scorer(spec.name, spec.options) for spec in scorers]
    seen: dict[str, str] = {}
    for scorer in built:
        for col in scorer.columns():
            if col in seen:
                raise ConfigError(f"Scorers {seen[col]!r} and {scorer.name!r} both write column {col!r}; rename one.")
            seen[col] = scorer.name
    return built


async def score_row(scorers: list[Scorer], row: dict[str, Any]) -> dict[str, Any]:
    """All scorers' columns for one row (ok rows only; errored rows get nulls from ``null_scores``)."""
    out: dict[str, Any] = {}
    results = await asyncio.gather(*(s.score(row) for s in scorers))
    for scorer, values in zip(scorers, results):
        cols = scorer.columns()
        for col in cols:
            out[col] = values.get(col)
    return out


def null_scores(scorers: list[Scorer]) -> dict[str, Any]:
    """Null values for every score column (for rows with ``status == "error"``)."""
    return {col: None for s in scorers for col in s.columns()}


def score_schema(scorers: list[Scorer]) -> dict[str, pa.DataType]:
    """Every score column with its Arrow type, in scorer order."""
    out: dict[str, pa.DataType] = {}
    for s in scorers:
        out.update(s.columns())
    return out


async def close_scorers(scorers: list[Scorer]) -> None:
    """``aclose`` every scorer."""
    for s in scorers:
        await s.aclose()
