"""Plain data records that flow through sentech-eval.

Immutable records (frozen dataclasses, and a named tuple for ``Prompt``, which is built once per
dataset row) with no logic beyond tiny conversions; ``Completion`` is the one mutable record.
This module imports nothing of ours.

- ``Sampling``   the sampling parameters of one configuration (None = not sent);
                 ``SAMPLING_RANGES`` their valid ranges (the config check and the server use these).
- ``Prompt``     one dataset row turned into chat messages.
- ``Completion`` the outcome of one request; every field has a default so a failed
                 request is still a complete record (``status="error"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "max_tokens")
# Every sampling parameter of a configuration: the request fields plus the seed.
SAMPLING_PARAMS = SAMPLING_FIELDS + ("seed",)
# Response header in which `sentech-eval serve` advertises how many requests it answers at once
# (also in GET /health as "capacity"); the remote backend warns when runner.concurrency exceeds it.
CAPACITY_HEADER = "X-Sentech-Capacity"
MAX_ADVERTISED_CAPACITY = 1_000_000  # a larger (or malformed) advertised value is ignored


INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Range:
    """The valid values of one sampling parameter."""

    low: float
    high: float
    low_open: bool = False  # low itself is not allowed
    integer: bool = False
    note: str = ""  # shown after the range, e.g. "0 disables top-k"

    def contains(self, value: float, *, wire_limit: bool = True) -> bool:
        """True when ``value`` lies in the range (the type is the caller's check).

        ``wire_limit=False`` skips an upper bound that only the wire format sets (≥ 2**31 - 1):
        the config leaves that one to the server, which answers 400.
        """
        if not (value > self.low if self.low_open else value >= self.low):
            return False
        return value <= self.high or (not wire_limit and self.high >= INT32_MAX)

    def describe(self) -> str:
        """The range in words: "between 0 and 2", "greater than 0 and at most 1", "at least 1"."""
        low, high = f"{self.low:g}", f"{self.high:g}"
        if self.high >= INT32_MAX:  # bounded only by the wire format: say the lower bound
            text = f"greater than {low}" if self.low_open else f"{low} or more" if self.low == 0 else f"at least {low}"
        elif self.low_open:
            text = f"greater than {low} and at most {high}"
        else:
            text = f"between {low} and {high}"
        return f"{text} ({self.note})" if self.note else text


# The Sentech API's ranges, checked once in the config (before a run) and by `sentech-eval serve`.
SAMPLING_RANGES: Mapping[str, Range] = MappingProxyType(
    {
        "temperature": Range(0.0, 2.0),
        "top_p": Range(0.0, 1.0, low_open=True),
        "top_k": Range(0, INT32_MAX, integer=True, note="0 disables top-k"),
        "frequency_penalty": Range(-2.0, 2.0),
        "presence_penalty": Range(-2.0, 2.0),
        "max_tokens": Range(1, INT32_MAX, integer=True),
        "seed": Range(0, 2**64 - 1, integer=True),
    }
)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters; a value left ``None`` is not sent to the backend."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def request_fields(self) -> dict[str, Any]:
        """The Sentech body fields that are set (seed excluded: it is not part of the contract)."""
        out = {}
        for name in SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def with_seed(self, seed: int | None) -> Sampling:
        """A copy with another seed (used for repeats: ``seed + repeat``)."""
        return Sampling(
            self.temperature,
            self.top_p,
            self.top_k,
            self.frequency_penalty,
            self.presence_penalty,
            self.max_tokens,
            seed,
        )


NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class Prompt(NamedTuple):
    """One dataset row: its id, chat messages, optional reference and carried-over columns.

    A named tuple, not a dataclass: one is built per dataset row on the runner's hot path, and a
    tuple is the cheapest immutable record Python builds.
    """

    id: str | int
    messages: tuple[dict[str, str], ...]
    reference: str | None = None
    extra: Mapping[str, Any] = NO_EXTRA


@dataclass(slots=True)
class Completion:
    """The result of one request, ok or not. Times are seconds from ``time.perf_counter``."""

    output: str | None = None
    finish_reason: str | None = None
    response_model: str | None = None  # the model the server says answered (not the one requested)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    status: str = "ok"  # "ok" | "error"
    http_status: int | None = None
    error: str | None = None
    attempts: int = 1
    retry_after_s: float | None = None  # a server's Retry-After, for the runner's backoff
    retryable: bool = False  # whether the runner may try this request again
    itl_s: list[float] | None = None  # streamed: gaps between content chunks, one per chunk after the first
    tpot_s: float | None = None  # streamed: (latency - ttft) / (completion_tokens - 1)
    usage_source: str | None = None  # where the token counts came from: "server" | "chunks" | "none"


def time_per_output_token(latency_s: float | None, ttft_s: float | None, completion_tokens: int | None) -> float | None:
    """TPOT as vLLM defines it: the time after the first token over the tokens after it."""
    if latency_s is None or ttft_s is None or completion_tokens is None or completion_tokens < 2:
        return None
    return (latency_s - ttft_s) / (completion_tokens - 1)


def last_user_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt of a chat: the last user message's content (the last message's if none is from the user)."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"]
