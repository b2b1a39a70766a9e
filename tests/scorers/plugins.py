"""User-style scorers, plugged in from config with ``_target_`` (as a user's own module would be)."""

from __future__ import annotations

import os
import signal

import pyarrow as pa


def starts_with_reference(output, reference, row, case_sensitive: bool = False):
    """A plain function scorer: 1.0 when the output starts with the reference."""
    if reference is None:
        return None
    out, ref = (output or ""), reference
    if not case_sensitive:
        out, ref = out.lower(), ref.lower()
    return float(out.startswith(ref))


def word_count(output, reference, row):
    """A function scorer returning a dict with a detail."""
    words = len((output or "").split())
    return {"score": float(words <= 3), "detail": f"{words} words", "words": words}


async def async_len(output, reference, row):
    """An async function scorer."""
    return float(len(output or ""))


def explode(output, reference, row):
    """A scorer whose function raises: the error is recorded in the detail."""
    raise ValueError("boom on " + str(row.get("prompt_id")))


_calls = {"n": 0}


def die_midway(output, reference, row, after: int = 5):
    """Kills its own process (SIGKILL) after ``after`` rows: a crash in the middle of scoring."""
    _calls["n"] += 1
    if _calls["n"] > after:
        os.kill(os.getpid(), signal.SIGKILL)
    return 1.0


class PromptLength:
    """A user Scorer class with its own columns."""

    def __init__(self, name: str = "prompt_length", unit: str = "chars") -> None:
        self.name = name
        self.unit = unit

    def columns(self):
        return {f"score_{self.name}": pa.float64()}

    async def score(self, row):
        prompt = row.get("prompt") or ""
        return {f"score_{self.name}": float(len(prompt) if self.unit == "chars" else len(prompt.split()))}

    async def aclose(self):
        return None
