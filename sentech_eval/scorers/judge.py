"""``judge``: LLM-as-judge. Any configured backend grades the output against the reference.

The rubric template is filled with ``{prompt}``, ``{reference}``, ``{output}``, ``{grade_min}``,
``{grade_max}`` (and any other column of the row, e.g. ``{prompt_id}``); other braces are left
alone, so JSON in a rubric is safe. The judge's reply is searched for ``grade_pattern`` (last
match wins) and the grade is normalised to [0, 1]:
``(grade - grade_min) / (grade_max - grade_min)``.

Columns: ``score_judge`` (normalised grade), ``score_judge_detail`` (the raw grade and the start
of the judge's reply, or the error), ``score_judge_latency_s``, ``score_judge_prompt_tokens``,
``score_judge_completion_tokens``. A failed judge request, an unparseable reply or a grade out
of range gives a null score with the reason in the detail: judge errors never stop a run.
Setting the judge up (unknown backend, missing key) does fail, before any request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig

from sentech_eval.backends.base import create_backend
from sentech_eval.backends.retry import complete_with_retries
from sentech_eval.config import backend_from_config
from sentech_eval.errors import ConfigError
from sentech_eval.normalize import one_line
from sentech_eval.scorers.base import detail_column, score_column
from sentech_eval.types import SAMPLING_FIELDS, Sampling

DEFAULT_RUBRIC = """You are grading an answer against a reference answer.

Question:
{prompt}

Reference answer:
{reference}

Answer to grade:
{output}

Does the answer say the same as the reference, correctly and completely? Give a whole number from \
{grade_min} (wrong) to {grade_max} (fully correct). End your reply with one line of the form
Grade: <number>"""

DEFAULT_GRADE_PATTERN = r"grade\s*[:=]\s*\**\s*([-+]?\d+(?:\.\d+)?)"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
DETAIL_CHARS = 300


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders whose name is in ``values``; leave every other brace alone."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            return m.group(0)
        value = values[key]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(sub, template)


def _tail(text: str | None, limit: int = DETAIL_CHARS) -> str:
    """The end of a reply (where a grade is expected), whitespace collapsed."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class JudgeScorer:
    """Grades each output with a judge model; see the module docstring for the columns."""

    name = "judge"

    def __init__(
        self,
        name: str | None = None,
        backend: Any = None,
        rubric: str = DEFAULT_RUBRIC,
        system: str | None = None,
        grade_min: float = 0,
        grade_max: float = 10,
        grade_pattern: str = DEFAULT_GRADE_PATTERN,
        sampling: Mapping[str, Any] | None = None,
        concurrency: int = 4,
        max_attempts: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        if name is not None:
            self.name = str(name)
        if backend is None or (isinstance(backend, (Mapping, DictConfig)) and not backend.get("kind")):
            raise ConfigError(
                f"Scorer {self.name!r} needs a judge backend: set scorers.{self.name}.backend "
                "(kind, model, ... like the run's backend config)."
            )
        if float(grade_max) <= float(grade_min):
            raise ConfigError(
                f"Scorer {self.name!r}: grade_max ({grade_max}) must be greater than grade_min ({grade_min})."
            )
        try:
            self.grade_regex = re.compile(grade_pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                f"Scorer {self.name!r}: grade_pattern {grade_pattern!r} is not a valid regular expression ({exc})."
            ) from None
        if self.grade_regex.groups < 1:
            raise ConfigError(f"Scorer {self.name!r}: grade_pattern must have a capture group around the number.")
        if int(concurrency) < 1 or int(max_attempts) < 1:
            raise ConfigError(f"Scorer {self.name!r}: concurrency and max_attempts must be at least 1.")
        sampling = dict(sampling or {"temperature": 0.0, "max_tokens": 256})
        unknown = sorted(set(sampling) - set(SAMPLING_FIELDS) - {"seed"})
        if unknown:
            raise ConfigError(
                f"Unknown key 'scorers.{self.name}.sampling.{unknown[0]}'; known keys are: {', '.join(SAMPLING_FIELDS + ('seed',))}."
            )
        self.sampling = Sampling(**sampling)
        self.rubric = str(rubric)
        self.system = system
        self.grade_min, self.grade_max = float(grade_min), float(grade_max)
        self.max_attempts = int(max_attempts)
        self.backoff_s = float(backoff_s)
        self._semaphore = asyncio.Semaphore(int(concurrency))
        self.backend = create_backend(backend_from_config(backend), int(concurrency))

    def columns(self) -> dict[str, pa.DataType]:
        base = score_column(self.name)
        return {
            base: pa.float64(),
            detail_column(self.name): pa.string(),
            f"{base}_latency_s": pa.float64(),
            f"{base}_prompt_tokens": pa.int64(),
            f"{base}_completion_tokens": pa.int64(),
        }

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages sent to the judge for one row."""
        values = {k: v for k, v in row.items() if isinstance(k, str)}
        values.update(grade_min=_fmt(self.grade_min), grade_max=_fmt(self.grade_max))
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": render(str(self.system), values)})
        msgs.append({"role": "user", "content": render(self.rubric, values)})
        return msgs

    def parse_grade(self, text: str | None) -> tuple[float | None, str]:
        """(normalised score, detail) from the judge's reply; score None when it cannot be used."""
        matches = list(self.grade_regex.finditer(text or ""))
        if not matches:
            return None, f"judge error: no grade found in reply: {_tail(text)!r}"
        raw = matches[-1].group(1)
        grade = float(raw)
        if not self.grade_min <= grade <= self.grade_max:
            return (
                None,
                f"judge error: grade {raw} is outside [{_fmt(self.grade_min)}, {_fmt(self.grade_max)}]: {_tail(text)!r}",
            )
        score = (grade - self.grade_min) / (self.grade_max - self.grade_min)
        return score, f"grade {raw}/{_fmt(self.grade_max)}: {one_line(text, DETAIL_CHARS)}"

    async def score(self, row: dict[str, Any]) -> dict[str, Any]:
        base = score_column(self.name)
        msgs = self.messages(row)
        async with self._semaphore:
            completion = await complete_with_retries(
                self.backend, msgs, self.sampling, max_attempts=self.max_attempts, base_s=self.backoff_s
            )
        out = {
            f"{base}_latency_s": completion.latency_s,
            f"{base}_prompt_tokens": completion.prompt_tokens,
            f"{base}_completion_tokens": completion.completion_tokens,
        }
        if completion.status != "ok":
            status = f" (HTTP {completion.http_status})" if completion.http_status else ""
            out[base], out[detail_column(self.name)] = (
                None,
                f"judge error{status}: {one_line(completion.error, DETAIL_CHARS)}",
            )
        else:
            out[base], out[detail_column(self.name)] = self.parse_grade(completion.output)
        return out

    async def aclose(self) -> None:
        await self.backend.aclose()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
