"""``json_valid``: the output parses as JSON and, optionally, validates against a JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from sentech_eval.errors import ConfigError
from sentech_eval.scorers.base import BaseScorer

_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


class JsonValid(BaseScorer):
    """1 when the output is valid JSON (and matches ``schema`` / ``schema_path`` if given), else 0.

    ``extract: true`` first takes the content of a Markdown code fence if there is one.
    The detail says why a row failed (parse error or the first schema violation).
    """

    name = "json_valid"

    def __init__(
        self, name: str | None = None, schema: dict | None = None, schema_path: str | None = None, extract: bool = False
    ) -> None:
        super().__init__(name)
        if schema is not None and schema_path:
            raise ConfigError(f"Scorer {self.name!r}: give either schema or schema_path, not both.")
        if schema_path:
            try:
                schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"Scorer {self.name!r}: cannot read JSON Schema {schema_path!r} ({exc}).") from None
        self.validator = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"Scorer {self.name!r}: the JSON Schema is invalid: {exc.message}.") from None
            self.validator = cls(schema)
        self.extract = bool(extract)

    def score_sync(self, row: dict[str, Any]) -> dict[str, Any]:
        text = "" if row.get("output") is None else str(row["output"])
        if self.extract:
            m = _FENCE.search(text)
            if m:
                text = m.group(1)
        try:
            value = json.loads(text)
        except ValueError as exc:
            return self.result(0.0, f"invalid JSON: {exc}")
        if self.validator is not None:
            error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return self.result(0.0, f"schema: {where}: {error.message}")
        return self.result(1.0)
