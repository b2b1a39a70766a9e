"""Engines behind ``sentech-eval serve``: what actually produces an answer.

- ``EchoEngine``  deterministic, no model. Answers prompts of the shipped datasets with their
                  reference (so scorers can be exercised end to end) and echoes anything else.
                  Tokens are whitespace-separated words, so usage counts are honest for it.
- ``OracleEngine`` like echo, but right with a known probability ``oracle_accuracy(temperature,
                  top_p, penalties)``: a server whose best sampling setting is known (races, tests).
- ``LlamaEngine`` a GGUF model through llama-cpp-python, every sampling parameter explicit,
                  one call at a time in a worker thread so the event loop never blocks.

An engine gets a validated ``ChatRequest`` and returns a ``Generation``; ``stream`` yields text
deltas and ends with the ``Generation`` (whose ``text`` is the full answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sentech_eval.config import LocalBackendConfig
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.paths import datasets_dir, embedded_model_path
from sentech_eval.types import SAMPLING_PARAMS, Sampling, last_user_text

DEFAULT_DATASETS_DIR = datasets_dir()
DEFAULT_GGUF = embedded_model_path()  # at import; LlamaEngine looks it up again when built

# A whitespace token together with the whitespace before it: joining pieces restores the text.
_PIECE = re.compile(r"\s*\S+")


class BadRequest(ValueError):
    """A client error found by validation or by an engine; answered 400 ``{"message": …}``."""


@dataclass(slots=True)
class ChatRequest:
    """A validated request body (None = the client did not send the field)."""

    messages: list[dict[str, str]]
    model: str | None = None
    sampling: Sampling = Sampling()  # frozen: one shared default is safe
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a final usage-only chunk (OpenAI)


@dataclass(slots=True)
class Generation:
    """One finished answer with its token counts."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """What the server needs from an engine; subclass it to inherit the defaults of the optional parts."""

    name: str  # "echo" | "oracle" | "llama"
    model: str  # reported when a request names no model
    slots: int | None = None  # generations at once (more wait in a queue); None = no limit
    answers_as_requested_model: bool = False  # the response's "model" is the one the client named
    cancel_on_disconnect: bool = False  # the server cancels a handler whose client went away

    async def start(self) -> None:
        """Load what is needed before the server accepts requests."""
        ...

    async def complete(self, request: ChatRequest) -> Generation:
        """The whole answer at once."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[str | Generation]:
        """Text deltas as they are produced, then the final ``Generation``."""
        ...

    async def close(self) -> None:
        """Release the model."""
        ...


def load_by_prompt(paths: list[Path], column: str) -> dict[str, str]:
    """Map prompt text -> ``column``'s value from dataset Parquet files (keyed by their ``prompt`` column, or
    the last user message of ``messages``); files without that column, or unreadable, are skipped."""
    import pyarrow.parquet as pq

    table: dict[str, str] = {}
    for path in paths:
        try:
            names = set(pq.read_schema(path).names)
        except Exception:  # not our business to judge other files here: skip what we cannot read
            continue
        if column not in names or not ({"prompt", "messages"} & names):
            continue
        key_column = "prompt" if "prompt" in names else "messages"
        data = pq.read_table(path, columns=[key_column, column]).to_pydict()
        for key, value in zip(data[key_column], data[column]):
            if value is None or key is None:
                continue
            if key_column == "messages":
                if not key:
                    continue
                key = last_user_text([{"role": m.get("role"), "content": m.get("content") or ""} for m in key])
            table.setdefault(str(key).strip(), str(value))
    return table


def load_references(paths: list[Path]) -> dict[str, str]:
    """Map prompt text -> reference from dataset Parquet files."""
    return load_by_prompt(paths, "reference")


def load_solutions(paths: list[Path]) -> dict[str, str]:
    """Map prompt text -> canonical solution from dataset Parquet files with a ``canonical_solution`` column (code)."""
    return load_by_prompt(paths, "canonical_solution")


class Capacity:
    """At most ``slots`` holders at once; the others wait in arrival order (strict FIFO).

    Written out rather than ``asyncio.Semaphore`` so the order is guaranteed on every Python:
    a queueing model (capacity C, service time S, saturation at C / S requests/s) is only the
    truth for the server if nobody overtakes.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, queueing behind earlier arrivals if all are busy."""
        if self.busy < self.slots and not self._waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: busy is unchanged
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came just as the waiter left: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1


# Words appended to an answer to reach ``--output-tokens`` (one whitespace token each).
_FILLER = (" lorem", " ipsum", " dolor", " sit", " amet")


class EchoEngine(Engine):
    """Deterministic model-free engine with simulated latency, generation speed and capacity.

    Timing of one generation: it waits for a slot (``capacity``), then its first token comes
    ``latency + ttft`` after that and each further token ``1 / tokens_per_s`` later (``ttft``
    defaults to one token time, so without ``--ttft-ms`` an answer of n tokens takes
    ``latency + n / tokens_per_s``). A non-streamed answer is sent when its last token is due.
    """

    name = "echo"
    model = "sentech-eval/echo"
    answers_as_requested_model = True

    # Phrasings used at temperature > 0: all contain the reference, most are the bare answer
    # (the datasets ask for it), one in four is a sentence, so strict and lenient scorers differ.
    REFERENCE_PHRASINGS = ("{}", "{}.", "{}", "The answer is {}.")
    ECHO_PHRASINGS = ("{}", "You said: {}", "Echo: {}")

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        tokens_per_s: float | None = None,
        ttft_ms: float | None = None,
        capacity: int | None = None,
        output_tokens: int | None = None,
        seed: int = 0,
        datasets_dir: Path | None = DEFAULT_DATASETS_DIR,
    ) -> None:
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self.tokens_per_s = tokens_per_s if tokens_per_s and tokens_per_s > 0 else None
        token_s = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
        self.token_s = token_s  # time between two tokens of one stream
        self.ttft_s = max(0.0, ttft_ms) / 1000.0 if ttft_ms is not None else token_s
        self.capacity = Capacity(capacity) if capacity else None
        self.slots = capacity or None
        self.output_tokens = output_tokens if output_tokens and output_tokens > 0 else None
        self.datasets_dir = datasets_dir
        self.references: dict[str, str] = {}
        self._rng = random.Random(seed)  # for requests at temperature > 0 without their own seed
        self._token_counts: dict[str, int] = {}
        self._variants: dict[str, tuple[str, int, tuple[str, ...]]] = {}

    async def start(self) -> None:
        """Load prompt -> reference from ``datasets/*.parquet`` (if any) in a worker thread."""
        if self.datasets_dir is not None and self.datasets_dir.is_dir():
            paths = sorted(self.datasets_dir.glob("*.parquet"))
            if paths:
                self.references = await asyncio.to_thread(load_references, paths)

    async def close(self) -> None:
        """Nothing to release."""

    def answer(self, request: ChatRequest) -> str:
        """The full (untruncated) answer text for a request."""
        prompt = last_user_text(request.messages).strip()  # stripped: streamed pieces cannot carry edges
        variants = self._variants.get(prompt)
        if variants is None:
            variants = self._make_variants(prompt)
        temperature = request.sampling.temperature
        if not temperature:  # None or 0: stable
            return variants[0]
        seed = request.sampling.seed if request.sampling.seed is not None else self._rng.getrandbits(32)
        # a seeded, prompt-dependent pick among the phrasings (variants[1] is the prompt's crc32)
        pick = ((seed * 2654435761) ^ variants[1]) & 0xFFFFFFFF
        phrasings = variants[2]
        return phrasings[pick % len(phrasings)]

    def _make_variants(self, prompt: str) -> tuple[str, int, tuple[str, ...]]:
        """(stable answer, crc32 of the prompt, phrasings) for a prompt, memoized."""
        reference = self.references.get(prompt) if self.references else None
        if reference is None:
            stable, phrasings = prompt, tuple(p.format(prompt) for p in self.ECHO_PHRASINGS)
        else:
            stable, phrasings = reference, tuple(p.format(reference) for p in self.REFERENCE_PHRASINGS)
        variants = (stable, zlib.crc32(prompt.encode("utf-8", "surrogatepass")), phrasings)
        if len(self._variants) < 100_000:
            self._variants[prompt] = variants
        return variants

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Whitespace tokens over all message contents (memoized: datasets repeat system prompts)."""
        cache = self._token_counts
        total = 0
        for message in messages:
            content = message["content"]
            n = cache.get(content)
            if n is None:
                n = len(content.split())
                if len(cache) < 100_000:
                    cache[content] = n
            total += n
        return total

    def _generate(self, request: ChatRequest) -> tuple[list[str] | None, Generation]:
        """The answer, its pieces when needed (truncation or streaming) and its usage."""
        text = self.answer(request)
        prompt_tokens = self.prompt_tokens(request.messages)
        max_tokens = request.sampling.max_tokens
        if not request.stream and self.output_tokens is None:
            n = len(text.split())
            if max_tokens is None or n <= max_tokens:
                return None, Generation(text, "stop", prompt_tokens, n)
        pieces = _PIECE.findall(text)
        finish = "stop"
        if self.output_tokens is not None and len(pieces) < self.output_tokens:
            # fixed output length (as vLLM's ignore_eos): the answer, then filler words
            missing = self.output_tokens - len(pieces)
            pieces.extend(_FILLER * (missing // len(_FILLER)) + _FILLER[: missing % len(_FILLER)])
            if len(pieces) > self.output_tokens:
                del pieces[self.output_tokens :]
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            finish = "length"
        if pieces:
            pieces[0] = pieces[0].lstrip()
        return pieces, Generation("".join(pieces), finish, prompt_tokens, len(pieces))

    async def complete(self, request: ChatRequest) -> Generation:
        """Answer when the last token is due: ``latency + ttft + (completion_tokens - 1) / tokens_per_s``
        after a slot was free."""
        _, generation = self._generate(request)
        delay = self.latency_s + self.ttft_s + max(0, generation.completion_tokens - 1) * self.token_s
        capacity = self.capacity
        if capacity is None:
            if delay > 0:
                await asyncio.sleep(delay)
            return generation
        await capacity.acquire()
        try:
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            capacity.release()
        return generation

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Generation]:
        """Yield one piece per token: the first ``latency + ttft`` after a slot was free, then one
        every ``1 / tokens_per_s``."""
        pieces, generation = self._generate(request)
        capacity = self.capacity
        if capacity is not None:
            await capacity.acquire()
        try:
            loop = asyncio.get_running_loop()
            first = loop.time() + self.latency_s + self.ttft_s
            token_s = self.token_s
            for i, piece in enumerate(pieces or ()):
                wait = first + i * token_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                yield piece
        finally:
            if capacity is not None:
                capacity.release()
        yield generation


def oracle_diversity(temperature: float | None = None) -> float:
    """The oracle's share of fresh draws among code answers: min(1, temperature) (None = 0.7).

    At temperature 0 every sample of a prompt repeats one draw (a model's greedy answer); at 1 and
    above every sample is drawn afresh.
    """
    t = 0.7 if temperature is None else temperature
    return min(1.0, max(0.0, t))


def oracle_pass_at_k(k: int, temperature: float | None = None, top_p: float | None = None, peak: float = 0.8) -> float:
    """The true pass@k of the oracle's code answers at these settings (see ``OracleEngine``).

    A sample is a fresh draw with probability d (``oracle_diversity``), else the prompt's one shared
    draw; each draw is right with probability p (``oracle_accuracy``). No sample of k is right when
    the shared draw fails (if used) and every fresh one fails:
    P(none) = (1 − p)·((1 − d·p)^k − (d·(1 − p))^k) + (d·(1 − p))^k.
    """
    p = oracle_accuracy(temperature, top_p, peak=peak)
    d = oracle_diversity(temperature)
    fresh_all_fail = (d * (1.0 - p)) ** k
    return 1.0 - ((1.0 - p) * ((1.0 - d * p) ** k - fresh_all_fail) + fresh_all_fail)


def oracle_accuracy(
    temperature: float | None = None,
    top_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    peak: float = 0.8,
) -> float:
    """The oracle engine's true accuracy at these sampling parameters (None = 0.7, 1.0, 0, 0).

    ``peak − 0.35·|temperature − 0.3| − 0.3·|top_p − 0.9| − 0.1·(|frequency_penalty| + |presence_penalty|)``,
    clipped to [0.01, 0.99]: best at temperature 0.3, top_p 0.9 (0.80 by default); top_k has no effect.
    """
    t = 0.7 if temperature is None else temperature
    p = 1.0 if top_p is None else top_p
    penalties = abs(frequency_penalty or 0.0) + abs(presence_penalty or 0.0)
    return min(0.99, max(0.01, peak - 0.35 * abs(t - 0.3) - 0.3 * abs(p - 0.9) - 0.1 * penalties))


class OracleEngine(EchoEngine):
    """An engine whose accuracy is a known function of the sampling parameters (for races and tests).

    A prompt of a dataset found in ``datasets_dir`` is answered with its reference with probability
    ``oracle_accuracy(temperature, top_p, …)``, otherwise with a wrong answer. The draw is
    ``u = hash(seed, prompt)`` (seed: the request's, 0 when it sends none), correct when
    ``u < accuracy``: the same prompt and seed give the same draw at every setting, so a better
    setting is right wherever a worse one is (like a prompt that is easy for every setting).
    Prompts without a reference always get the wrong answer. Latency and usage as the echo engine.

    Code answers: a prompt of a dataset with a ``canonical_solution`` column (``dataset=humaneval``)
    is answered with that solution when right and with ``WRONG_CODE`` (a body that raises) when
    wrong. Code is sampled the way a model samples it: a sample is a fresh draw ``hash(seed,
    prompt)`` with probability ``oracle_diversity(temperature)`` = min(1, temperature) (itself
    drawn from the seed), else the prompt's one shared draw; so at temperature 0 all samples of a
    prompt agree and pass@k stays at pass@1, while higher temperatures trade accuracy for variety
    (the Codex paper's picture: the best temperature rises with k). The true pass@k is
    ``oracle_pass_at_k``.
    """

    name = "oracle"
    model = "sentech-eval/oracle"
    WRONG_ANSWER = "I am not sure."
    WRONG_CODE = "    raise NotImplementedError('the oracle answers wrong on purpose')\n"

    def __init__(self, *, accuracy_peak: float = 0.8, **options: Any) -> None:
        super().__init__(**options)
        self.accuracy_peak = accuracy_peak
        self.solutions: dict[str, str] = {}

    async def start(self) -> None:
        """Load references, and canonical solutions of code datasets."""
        await super().start()
        if self.datasets_dir is not None and self.datasets_dir.is_dir():
            paths = sorted(self.datasets_dir.glob("*.parquet"))
            if paths:
                self.solutions = await asyncio.to_thread(load_solutions, paths)

    def accuracy(self, request: ChatRequest) -> float:
        """This request's probability of the right answer."""
        s = request.sampling
        return oracle_accuracy(s.temperature, s.top_p, s.frequency_penalty, s.presence_penalty, peak=self.accuracy_peak)

    def answer(self, request: ChatRequest) -> str:
        """The reference with probability ``accuracy(request)``, drawn from (seed, prompt); else a wrong answer."""
        prompt = last_user_text(request.messages).strip()
        seed = 0 if request.sampling.seed is None else request.sampling.seed
        solution = self.solutions.get(prompt)
        if solution is not None:
            fresh = _uniform("fresh", seed, prompt) < oracle_diversity(request.sampling.temperature)
            u = _uniform("draw", seed, prompt) if fresh else _uniform("shared", 0, prompt)
            return solution if u < self.accuracy(request) else self.WRONG_CODE
        reference = self.references.get(prompt)
        if reference is None:
            return self.WRONG_ANSWER
        digest = hashlib.blake2b(f"{seed}\0{prompt}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        return reference if u < self.accuracy(request) else self.WRONG_ANSWER


def _uniform(purpose: str, seed: int, prompt: str) -> float:
    """A uniform number in [0, 1) drawn from (purpose, seed, prompt): the same inputs, the same number."""
    text = f"{purpose}\0{seed}\0{prompt}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0**64


class LlamaEngine(Engine):
    """A GGUF model served through llama-cpp-python; one generation at a time, or ``parallel``
    generations decoded together (continuous batching, ``sentech_eval.backends.local_batch``).

    Loading, sampling defaults and token counting are shared with the local backend
    (``sentech_eval.backends.local_worker``), so a served model and ``backend=local`` agree.
    """

    name = "llama"
    slots = 1  # one generation at a time (a Llama is not thread-safe)
    cancel_on_disconnect = True  # a generation whose client went away is stopped

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = LocalBackendConfig.n_ctx,
        n_threads: int | None = None,
        chat_format: str | None = None,
        seed: int = 0,
        parallel: int = 1,
    ) -> None:
        self.model_path = Path(model_path).expanduser() if model_path else embedded_model_path()
        self.parallel = parallel
        self.slots = parallel  # generations at once; more wait in the batch engine's queue
        self._batch: Any = None
        self.model = self.model_path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_threads_reason = "--n-threads"
        self.chat_format = chat_format
        self._seed_rng = random.Random(seed)  # seeds for requests that send none
        self._llm: Any = None
        self._lock: asyncio.Lock | None = None

    def check(self) -> None:
        """Cheap start-up checks (model file present, library importable), one sentence each."""
        if not self.model_path.is_file():
            raise ConfigError(
                f"The model file {self.model_path} does not exist; run `sentech-eval fetch-model` "
                "to put the embedded default in place, or pass --model PATH to a GGUF file."
            )
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise BackendError(
                "The llama engine needs llama-cpp-python, which is not installed; "
                "install it with `pip install -e '.[local]'`."
            ) from exc

    def _load(self) -> Any:
        self.check()
        from sentech_eval.backends.local import default_n_threads
        from sentech_eval.backends.local_worker import EngineSettings, cpu_has_amx, load_llama

        if not self.n_threads:
            self.n_threads, self.n_threads_reason = default_n_threads()
        settings = EngineSettings(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            chat_format=self.chat_format,
            repack=not cpu_has_amx(),  # llama.cpp's AMX kernels crash under some hypervisors
        )
        try:
            if self.parallel > 1:
                from sentech_eval.backends.local_batch import BatchEngine

                self._batch = BatchEngine(settings, self.parallel)
                return self._batch
            return load_llama(settings)
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
            raise BackendError(f"llama.cpp could not load the model {self.model_path}: {exc}") from exc

    async def start(self) -> None:
        """Load the model in a worker thread."""
        self._lock = asyncio.Lock()
        if self._llm is None:
            self._llm = await asyncio.to_thread(self._load)

    async def close(self) -> None:
        """Free the model."""
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)
        self._batch = None

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        from sentech_eval.backends.local_worker import sampling_arguments

        sampling = {name: getattr(request.sampling, name) for name in SAMPLING_PARAMS}
        if sampling["seed"] is None:
            sampling["seed"] = self._seed_rng.getrandbits(31)  # seeded server: reproducible in request order
        args = sampling_arguments(sampling)  # the local backend's defaults and fixed parameters
        args["max_tokens"] = request.sampling.max_tokens  # unset: the context window bounds the answer
        args["seed"] %= 2**32
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in request.messages], **args}

    def _stream_sync(self, request: ChatRequest, emit: Any, stop: threading.Event) -> None:
        """Run a streamed generation, calling ``emit(kind, value)`` per delta and at the end.

        llama-cpp-python streams no usage; ``CountingLlama`` counts exactly what the same call
        would report without streaming. ``stop`` (set when the client left) ends it early.
        """
        llm = self._llm
        llm.reset()  # each request starts clean: no KV prefix reuse flattering TTFT
        finish = "stop"
        chunks = llm.create_chat_completion(stream=True, **self._kwargs(request))
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                content = choice.get("delta", {}).get("content")
                if content:
                    emit("delta", content)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if stop.is_set():
                    return
        except ValueError as exc:  # "Requested tokens (…) exceed context window of …"
            if "context window" in str(exc):
                raise BadRequest(f"The prompt is too long for this model ({exc}).") from exc
            raise
        finally:
            chunks.close()
        emit("end", Generation("", finish, llm.last_prompt_tokens, llm.last_completion_tokens))

    async def complete(self, request: ChatRequest) -> Generation:
        """The streamed generation, collected: same text and usage as a non-streamed call, but a
        client that disconnects (the handler is cancelled) stops the model at the next token
        instead of holding the lock until the answer is complete."""
        final: Generation | None = None
        async for item in self.stream(request):
            if isinstance(item, Generation):
                final = item
        assert final is not None
        return final

    async def _stream_batched(self, request: ChatRequest) -> AsyncIterator[str | Generation]:
        """Deltas from the batch engine's scheduler thread, then the ``Generation``; a client that
        goes away (the handler is cancelled) frees its sequence at the next step."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str] = asyncio.Queue()
        kwargs = self._kwargs(request)
        messages = kwargs.pop("messages")
        pending = self._batch.submit(
            messages, kwargs, on_content=lambda text: loop.call_soon_threadsafe(deltas.put_nowait, text)
        )
        done = asyncio.wrap_future(pending.future)
        getter: asyncio.Future[str] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    break
                yield getter.result()
            while not deltas.empty():
                yield deltas.get_nowait()
            completion = done.result()
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not pending.future.done():
                pending.cancel()  # the client went away: its sequence is freed at the next step
        if completion.status != "ok":
            if "does not fit the context" in (completion.error or ""):
                raise BadRequest(f"The prompt is too long for this model ({completion.error})")
            raise BackendError(completion.error or "the batch engine failed")
        yield Generation(
            completion.output or "",
            completion.finish_reason or "stop",
            completion.prompt_tokens or 0,
            completion.completion_tokens or 0,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Generation]:
        """Deltas from a producer thread as llama.cpp makes them, then the ``Generation``."""
        assert self._lock is not None, "start() first"
        if self._batch is not None:
            async for item in self._stream_batched(request):
                yield item
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def produce() -> None:
            try:
                self._stream_sync(request, emit, stop)
            except BaseException as exc:  # noqa: BLE001 - handed over to the event loop side
                emit("error", exc)

        async with self._lock:
            worker = loop.run_in_executor(None, produce)
            parts: list[str] = []
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "delta":
                        parts.append(value)
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        value.text = "".join(parts)
                        yield value
                        break
            finally:
                stop.set()  # a client that went away stops the generation at the next token
                await worker


ENGINES = ("echo", "oracle", "llama")  # `serve --engine` choices


def build_engine(name: str, **options: Any) -> Engine:
    """The engine called ``name`` with the options that apply to it."""
    if name == "echo":
        keys = ("latency_ms", "tokens_per_s", "ttft_ms", "capacity", "output_tokens", "seed", "datasets_dir")
        return EchoEngine(**{k: v for k, v in options.items() if k in keys and v is not None})
    if name == "oracle":
        keys = ("latency_ms", "tokens_per_s", "seed", "datasets_dir", "accuracy_peak")
        return OracleEngine(**{k: v for k, v in options.items() if k in keys and v is not None})
    if name == "llama":
        keys = ("model_path", "n_ctx", "n_threads", "chat_format", "seed", "parallel")
        return LlamaEngine(**{k: v for k, v in options.items() if k in keys and v is not None})
    raise ConfigError(f"Unknown engine {name!r}; choose one of: {', '.join(ENGINES)}.")
