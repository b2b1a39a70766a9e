"""Continuous batching for the local backend: one model, one context, N sequences decoded together.

``BatchEngine`` owns one ``llama_cpp.Llama`` (its model, tokenizer and chat template) and a second
llama.cpp context made for ``parallel`` sequences (``n_seq_max``, a KV stream per sequence). One scheduler
thread runs the loop; callers on any thread ``submit`` chat requests and get a
``concurrent.futures.Future`` of a ``Completion``. Each step of the loop:

1. admits queued requests into free slots. A slot keeps the KV cells of its last request; a request
   goes to the free slot whose cells share the most leading tokens with its prompt and reuses them
   as they are (no copy). A prefix that the prompt shares with other queued prompts (system prompt,
   few-shot preamble) and that its slot does not hold is prefilled once into a dedicated prefix
   sequence and its KV cells are copied (``llama_memory_seq_cp``) into the slot: it is never
   recomputed per row;
2. builds one ``llama_batch``: the next token of every generating sequence, then prompt chunks of the
   newly admitted ones within ``n_batch`` tokens (a long prompt is spread over several steps and never
   stalls the others);
3. calls ``llama_decode`` once, samples each sequence with its own sampler chain, detokenizes
   incrementally and ends sequences on EOS, a stop string or ``max_tokens``. A finished sequence's
   slot is refilled at the next step (after waiting ``REFILL_WAIT_S`` at most for the successors
   the runner sends); its cells stay for the next request, unless it failed.

Semantics are those of ``local_worker.LocalEngine`` (llama-cpp-python's ``create_chat_completion``):
the chat template and stop strings come from the very handler llama-cpp-python uses (its
``create_completion`` call is captured instead of run), the sampler chain is the one
``Llama._init_sampler`` builds (penalties over the whole generation, then greedy at temperature 0, or
top_k, typical, top_p, min_p, temperature and a seeded ``dist``), the stop-string, multi-byte and
``max_tokens`` rules of ``Llama._create_completion``. Times: ``latency_s`` from ``submit`` to the end,
``ttft_s`` to the first content token, ``itl_s`` between content tokens (``time.perf_counter``).

Faults end only their own sequence: a cancelled request, a prompt longer than the context (an error
row), a failed template, a ``llama_decode`` error (the sequences in that batch get error rows; the
queue goes on).
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp._internals as llama_internals
import llama_cpp.llama_cpp as llama_cpp_c
from llama_cpp._utils import suppress_stdout_stderr

from sentech_eval.backends.local_worker import EngineSettings, LocalEngine
from sentech_eval.types import Completion, time_per_output_token

# One KV stream per sequence (False) keeps each sequence's attention in the shapes of one-at-a-time
# decoding, so far more answers are byte-identical to it; a unified cache (True) shares a prefix's
# cells without copying and was ~25% faster on capitals (docs/local.md has the figures).
UNIFIED_KV = False
# Flash attention stays off, as in today's path (llama-cpp-python's default): on, batching was ~10% faster
# (no shared prefix 6.23 vs 5.63 rows/s at N=8) but only 69% of those answers (88% on capitals) were
# identical to today's path, against 95% (97%) with it off (2026-12-06, benchmarks/README.md).
CTX_PAD = 256  # llama.cpp rounds a context up to a multiple of this
MIN_SHARED_PREFIX = 8  # tokens: a shorter common prefix is cheaper to recompute than to manage
PREFIX_SCAN = 64  # queued prompts looked at when searching a prefix to share
# After requests end, the scheduler waits this long (at most) for their successors before the next step,
# so a slot is refilled at once rather than a step later (the runner submits one per answer it gets).
REFILL_WAIT_S = 0.01
_UTF8_LEADS = ((0xF0, 4), (0xE0, 3), (0xC0, 2))  # lead-byte mask -> sequence length


class _Captured(Exception):
    """Raised in place of ``Llama.create_completion``: carries the arguments the chat handler built."""

    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("captured")
        self.kwargs = kwargs


def _capture_completion(**kwargs: Any) -> None:
    raise _Captured(kwargs)


def kv_bytes_per_token(llm: Any) -> int:
    """Bytes of f16 K and V cache one token takes in every layer of ``llm``'s model."""
    model = llm._model.model
    n_head = max(1, llama_cpp_c.llama_model_n_head(model))
    head_dim = llama_cpp_c.llama_model_n_embd(model) // n_head
    return int(llama_cpp_c.llama_model_n_layer(model) * llama_cpp_c.llama_model_n_head_kv(model) * head_dim * 2 * 2)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def incomplete_utf8_tail(data: bytes) -> int:
    """Bytes at the end of ``data`` that begin a UTF-8 character not yet complete (0..3)."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back
            continue
        for mask, length in _UTF8_LEADS:
            if byte & mask == mask:
                return back if length > back else 0
        return 0
    return 0


def held_back_for_stops(text: bytes, stops: Sequence[bytes]) -> int:
    """The longest suffix of ``text`` that could still grow into a stop string (not shown yet)."""
    held = 0
    for stop in stops:
        for i in range(min(len(stop), len(text)), held, -1):
            if text.endswith(stop[:i]):
                held = i
                break
    return held


@dataclass(eq=False)
class BatchRequest:
    """One chat request on its way through the scheduler."""

    messages: list[dict[str, str]]
    arguments: dict[str, Any]  # create_chat_completion's sampling arguments (``sampling_arguments``)
    submitted: float
    future: concurrent.futures.Future[Completion] = field(default_factory=concurrent.futures.Future)
    on_content: Callable[[str], None] | None = None  # called on the scheduler thread with each text delta
    cancelled: bool = False
    # filled in by the scheduler (intake)
    prompt: list[int] = field(default_factory=list)
    stops: list[bytes] = field(default_factory=list)
    completion_args: dict[str, Any] = field(default_factory=dict)  # what the chat handler passed on
    problem: str | None = None  # why it cannot run (an error row)

    def cancel(self) -> None:
        """Stop this request at the next step (any thread); its slot is freed."""
        self.cancelled = True


@dataclass(eq=False)
class _Sequence:
    """A request admitted into a slot (llama.cpp sequence id ``seq``)."""

    seq: int
    request: BatchRequest
    sampler: llama_internals.LlamaSampler
    max_tokens: int
    pending: list[int]  # prompt tokens still to prefill
    pos: int = 0  # the position of the next token to decode
    waiting_prefix: int = 0  # > 0: waits for the prefix job, then copies this many positions
    next_token: int | None = None  # sampled, to be decoded at ``pos``
    batch_index: int = -1  # index of this sequence's logits in the current batch (-1: none)
    completion: list[int] = field(default_factory=list)
    text: bytes = b""
    shown: int = 0  # bytes of ``text`` already handed out as content
    multibyte_fix: int = 0
    content_times: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _PrefixJob:
    """A shared prefix being prefilled into the prefix sequence; sequences wait for it."""

    tokens: list[int]
    done: int = 0
    in_batch: int = 0
    waiters: list[_Sequence] = field(default_factory=list)


class BatchEngine:
    """N sequences of one model decoded together by one scheduler thread (see the module docstring)."""

    def __init__(
        self,
        settings: EngineSettings,
        parallel: int | None,
        *,
        choose: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Load the model on the scheduler thread (its exceptions are raised here). ``parallel=None``:
        ``choose(kv_bytes_per_sequence)`` picks the number of sequences once the model is known."""
        self.settings = settings
        self.parallel = parallel or 0
        self._choose = choose
        self.clock = clock
        self._queue: collections.deque[BatchRequest] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._described: dict[str, Any] = {}
        self.steps = 0  # llama_decode calls (for tests and benchmarks)
        self.prefix_prefills = 0  # shared prefixes prefilled
        self.shared_tokens = 0  # prompt tokens copied from a shared prefix instead of computed
        self.prefix_copies = 0  # copies of the prefix sequence's cells into a slot
        self.reused_tokens = 0  # prompt tokens whose cells a slot still held from its previous request
        self._thread = threading.Thread(target=self._main, name="llama-batch", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    # --- public side (any thread)
    def submit(
        self,
        messages: list[dict[str, str]],
        arguments: dict[str, Any],
        on_content: Callable[[str], None] | None = None,
    ) -> BatchRequest:
        """Queue one chat request; its ``future`` gets the ``Completion`` (never an exception).

        ``arguments``: the sampling keywords of ``create_chat_completion`` as
        ``local_worker.sampling_arguments`` makes them (every parameter, a seed);
        ``on_content`` is called on the scheduler thread with each piece of answer text."""
        request = BatchRequest(list(messages), dict(arguments), self.clock(), on_content=on_content)
        with self._wake:
            if self._closing:
                request.future.set_result(Completion(status="error", error="The local backend is closed."))
                return request
            self._queue.append(request)
            self._wake.notify()
        return request

    def describe(self) -> dict[str, Any]:
        """GGUF and llama.cpp facts (as ``LocalEngine.describe``) plus the batching context."""
        return dict(self._described)

    def close(self) -> None:
        """Stop the scheduler (requests still queued or running get error rows) and free the model."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    # --- the scheduler thread
    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        try:
            self._loop()
        finally:
            self._free()

    def _load(self) -> None:
        settings = self.settings
        # The Llama brings the model, tokenizer, chat handler and metadata; its own context (unused)
        # is the smallest llama.cpp makes. Each sequence gets the window today's context has.
        self.n_ctx_seq = -(-settings.n_ctx // CTX_PAD) * CTX_PAD
        self._engine = LocalEngine(dataclasses.replace(settings, n_ctx=CTX_PAD))
        llm = self.llm = self._engine.llm
        llm.create_completion = _capture_completion  # type: ignore[method-assign]
        if not self.parallel:
            if self._choose is None:
                raise ValueError("BatchEngine needs parallel or choose")
            self.parallel = max(1, self._choose(self.n_ctx_seq * kv_bytes_per_token(llm)))
        self.prefix_seq = self.parallel  # sequences 0..N-1 are the slots, N holds the shared prefix
        params = llama_cpp_c.llama_context_default_params()
        ctypes.pointer(params)[0] = llm.context_params
        params.n_seq_max = self.parallel + 1
        params.kv_unified = UNIFIED_KV
        params.n_ctx = self.n_ctx_seq * (self.parallel + 1)
        params.n_batch = max(settings.n_batch, self.parallel + 1)
        params.n_ubatch = params.n_batch
        self.n_batch = params.n_batch
        # llama.cpp's context log (and, with a unified cache, its warning that N + 1 windows exceed the
        # training context, which does not apply: each sequence stays within n_ctx_seq) stays off the terminal.
        with suppress_stdout_stderr(disable=settings.verbose):
            self.ctx = llama_internals.LlamaContext(model=llm._model, params=params, verbose=settings.verbose)
        self.memory = llama_cpp_c.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp_c.llama_batch_init(self.n_batch, 0, self.parallel + 1)
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self._piece = ctypes.create_string_buffer(256)
        self._slots: list[_Sequence | None] = [None] * self.parallel
        # the tokens whose KV cells each free slot still holds (positions 0..len-1), from its last request
        self._held: list[list[int]] = [[] for _ in range(self.parallel)]
        self._ended = 0  # requests ended since the last admission (each may bring a successor)
        self._prefix: list[int] = []  # tokens held by the prefix sequence
        self._job: _PrefixJob | None = None
        self._described = {
            **self._engine.describe(),
            "n_ctx": self.n_ctx_seq,
            "kv_cells": self.ctx.n_ctx(),
            "parallel": self.parallel,
        }

    def _free(self) -> None:
        error = "The local backend closed before this request finished."
        for slot in self._slots:
            if slot is not None:
                self._finish(slot, error=error)
        with self._wake:
            queued, self._queue = list(self._queue), collections.deque()
        for request in queued:
            request.future.set_result(Completion(status="error", error=error))
        llama_cpp_c.llama_batch_free(self.batch)
        self.ctx.close()
        self._engine.close()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._queue and not self._busy():
                    self._wake.wait()
                self._await_refills()
                if self._closing:
                    return
            self._drop_cancelled()
            self._admit()
            if self._busy():
                self._step()

    def _busy(self) -> bool:
        return any(slot is not None for slot in self._slots)

    def _await_refills(self) -> None:
        """Wait (``REFILL_WAIT_S`` at most, holding ``_wake``) for the successors of the requests that
        just ended: the runner submits the next request when it gets an answer, a moment after the end."""
        expected = min(self._ended, self._slots.count(None))
        self._ended = 0
        if not expected or not self._busy():
            return
        deadline = time.perf_counter() + REFILL_WAIT_S
        while not self._closing and len(self._queue) < expected:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.wait(remaining)

    # --- admission
    def _prepare(self, request: BatchRequest) -> str | None:
        """Template and tokenize a request once; an error sentence when it cannot run."""
        if request.problem is None and not request.prompt:
            request.problem = self._intake(request)
        return request.problem

    def _intake(self, request: BatchRequest) -> str | None:
        try:
            try:
                self.llm.create_chat_completion(messages=request.messages, stream=True, **request.arguments)
            except _Captured as captured:
                kwargs = captured.kwargs
            else:
                return "The chat handler of this model did not produce a prompt."
        except Exception as exc:  # a template that rejects these messages
            return f"The chat template could not format the messages ({type(exc).__name__}: {exc})."
        prompt = kwargs["prompt"]
        if isinstance(prompt, str):
            prompt = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        request.prompt = list(prompt)
        if len(request.prompt) >= self.n_ctx_seq:
            return (
                f"The prompt has {len(request.prompt)} tokens, which does not fit the context of "
                f"{self.n_ctx_seq} tokens; shorten it or raise backend.n_ctx."
            )
        stop = kwargs.get("stop") or []
        request.stops = [s.encode("utf-8") for s in ([stop] if isinstance(stop, str) else stop)]
        request.completion_args = kwargs
        return None

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot is not None and slot.request.cancelled:
                self._finish(slot, error="The request was cancelled.")

    def _admit(self) -> None:
        while None in self._slots:
            with self._wake:
                if not self._queue:
                    return
                request = self._queue.popleft()
            if request.cancelled:
                request.future.set_result(Completion(status="error", error="The request was cancelled."))
                continue
            problem = self._prepare(request)
            if problem is not None:
                latency = self.clock() - request.submitted
                request.future.set_result(Completion(status="error", error=problem, latency_s=latency))
                continue
            self._place(request, self._free_slot_for(request.prompt))

    def _free_slot_for(self, prompt: list[int]) -> int:
        """The free slot whose held cells share the most leading tokens with ``prompt`` (lowest id on ties)."""
        best, best_shared = -1, -1
        for seq, slot in enumerate(self._slots):
            if slot is None:
                shared = common_prefix_length(self._held[seq], prompt)
                if shared > best_shared:
                    best, best_shared = seq, shared
        return best

    def _place(self, request: BatchRequest, seq: int) -> None:
        args = request.completion_args
        prompt = request.prompt
        max_tokens = args.get("max_tokens")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = self.n_ctx_seq - len(prompt)
        max_tokens = min(max_tokens, self.n_ctx_seq - len(prompt))  # as llama-cpp-python caps it
        slot = _Sequence(seq, request, self._sampler(args), max_tokens, pending=prompt)
        self._slots[seq] = slot
        usable = len(prompt) - 1  # the last prompt token is always decoded: its logits start the answer
        # The slot's own cells from its previous request are reused at no cost; the prefix sequence's are
        # copied (with a KV stream per sequence the whole stream), worth it when they bring MIN_SHARED_PREFIX more.
        held = min(common_prefix_length(self._held[seq], prompt), usable)
        self._held[seq] = []
        job = self._job
        if job is not None:
            share = min(common_prefix_length(job.tokens, prompt), usable)
            if share >= MIN_SHARED_PREFIX and share >= held + MIN_SHARED_PREFIX:
                llama_cpp_c.llama_memory_seq_rm(self.memory, seq, -1, -1)
                slot.waiting_prefix = share
                job.waiters.append(slot)
                return
        have = min(common_prefix_length(self._prefix, prompt), usable) if job is None else 0
        wanted = 0
        if job is None:
            with self._wake:
                queued = list(self._queue)[:PREFIX_SCAN]
            for other in queued:
                if self._prepare(other) is None:
                    wanted = max(wanted, common_prefix_length(prompt, other.prompt))
            wanted = min(wanted, usable)
        # a new prefix when it saves at least MIN_SHARED_PREFIX more tokens than the one held (no thrashing)
        if job is None and wanted >= MIN_SHARED_PREFIX and wanted >= max(have, held) + MIN_SHARED_PREFIX:
            llama_cpp_c.llama_memory_seq_rm(self.memory, self.prefix_seq, -1, -1)
            llama_cpp_c.llama_memory_seq_rm(self.memory, seq, -1, -1)
            self._prefix = []
            self._job = _PrefixJob(prompt[:wanted], waiters=[slot])
            slot.waiting_prefix = wanted
            self.prefix_prefills += 1
        elif have >= MIN_SHARED_PREFIX and have >= held + MIN_SHARED_PREFIX:
            self._copy_prefix(slot, have)
        else:
            self._reuse_held(slot, held)

    def _reuse_held(self, slot: _Sequence, length: int) -> None:
        """Start ``slot`` on the first ``length`` prompt tokens its cells already hold; drop the rest."""
        llama_cpp_c.llama_memory_seq_rm(self.memory, slot.seq, length, -1)
        slot.pos = length
        slot.pending = slot.request.prompt[length:]
        self.reused_tokens += length

    def _copy_prefix(self, slot: _Sequence, length: int) -> None:
        self.prefix_copies += 1
        llama_cpp_c.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        if UNIFIED_KV:
            llama_cpp_c.llama_memory_seq_cp(self.memory, self.prefix_seq, slot.seq, 0, length)
        else:
            llama_cpp_c.llama_memory_seq_cp(self.memory, self.prefix_seq, slot.seq, -1, -1)
            if length < len(self._prefix):
                llama_cpp_c.llama_memory_seq_rm(self.memory, slot.seq, length, -1)
        slot.pos = length
        slot.pending = slot.request.prompt[length:]
        self.shared_tokens += length

    def _sampler(self, args: dict[str, Any]) -> llama_internals.LlamaSampler:
        """The chain ``Llama._init_sampler`` builds for these arguments, seeded as ``_create_completion``."""
        seed = args.get("seed")
        seed = (int(seed) if seed is not None else random.SystemRandom().randrange(2**32)) & 0xFFFFFFFF
        temp = float(args.get("temperature", 0.8))
        sampler = llama_internals.LlamaSampler()
        sampler.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=self.n_ctx_seq,  # the whole generation, as LocalEngine (last_n_tokens_size = n_ctx)
            penalty_repeat=float(args.get("repeat_penalty", 1.0)),
            penalty_freq=float(args.get("frequency_penalty", 0.0)),
            penalty_present=float(args.get("presence_penalty", 0.0)),
        )
        mirostat = int(args.get("mirostat_mode", 0))
        if temp < 0.0:
            sampler.add_dist(seed)
        elif temp == 0.0:
            sampler.add_greedy()
        elif mirostat == 1:
            tau, eta = float(args.get("mirostat_tau", 5.0)), float(args.get("mirostat_eta", 0.1))
            sampler.add_mirostat(self.n_vocab, seed, tau, eta, 100)
        elif mirostat == 2:
            sampler.add_mirostat_v2(seed, float(args.get("mirostat_tau", 5.0)), float(args.get("mirostat_eta", 0.1)))
        else:
            sampler.add_top_k(int(args.get("top_k", 40)))
            sampler.add_typical(float(args.get("typical_p", 1.0)), 1)
            sampler.add_top_p(float(args.get("top_p", 0.95)), 1)
            sampler.add_min_p(float(args.get("min_p", 0.05)), 1)
            sampler.add_temp(temp)
            sampler.add_dist(seed)
        return sampler

    # --- one step
    def _step(self) -> None:
        batch = self.batch
        n = 0
        live = [slot for slot in self._slots if slot is not None]

        def add(token: int, pos: int, seqs: Sequence[int], logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = len(seqs)
            for k, seq in enumerate(seqs):
                batch.seq_id[n][k] = seq
            batch.logits[n] = logits
            n += 1

        # What each sequence contributes: its next token (always), else a prompt chunk within the
        # budget, the prefix job last. Tokens go in ascending sequence id: with a KV stream per
        # sequence llama.cpp runs a micro-batch per run of consecutive ids (split_equal), so this
        # order keeps a step in as few forward passes as possible.
        budget = self.n_batch - sum(slot.next_token is not None for slot in live)
        takes: dict[int, int] = {}
        for slot in live:
            if slot.next_token is None and not slot.waiting_prefix and slot.pending and budget > 0:
                takes[slot.seq] = min(len(slot.pending), budget)
                budget -= takes[slot.seq]
        job = self._job
        job_take = min(len(job.tokens) - job.done, budget) if job is not None else 0
        prefilling: list[tuple[_Sequence, int]] = []
        for slot in live:
            slot.batch_index = -1
            if slot.next_token is not None:
                slot.batch_index = n
                add(slot.next_token, slot.pos, (slot.seq,), True)
            elif slot.seq in takes:
                take = takes[slot.seq]
                last = take == len(slot.pending)
                for i in range(take):
                    add(slot.pending[i], slot.pos + i, (slot.seq,), last and i == take - 1)
                if last:
                    slot.batch_index = n - 1
                prefilling.append((slot, take))
        if job is not None:
            for i in range(job.done, job.done + job_take):
                add(job.tokens[i], i, (self.prefix_seq,), False)
            job.in_batch = job_take
        if n == 0:
            return
        batch.n_tokens = n
        code = llama_cpp_c.llama_decode(self.ctx.ctx, batch)
        self.steps += 1
        if code != 0:
            self._decode_failed(code, live, prefilling)
            return
        now = self.clock()
        for slot, take in prefilling:
            slot.pending = slot.pending[take:]
            slot.pos += take
        if job is not None:
            job.done += job.in_batch
            if job.done == len(job.tokens):
                self._prefix_ready(job)
        for slot in live:
            if slot.batch_index < 0:
                continue
            if slot.next_token is not None:
                slot.pos += 1
                slot.next_token = None
            token = slot.sampler.sample(self.ctx, slot.batch_index)
            self._accept(slot, token, now)

    def _prefix_ready(self, job: _PrefixJob) -> None:
        self._prefix = job.tokens
        self._job = None
        for slot in job.waiters:
            share, slot.waiting_prefix = slot.waiting_prefix, 0
            if self._slots[slot.seq] is slot:
                self._copy_prefix(slot, share)

    def _decode_failed(self, code: int, live: list[_Sequence], prefilling: list[tuple[_Sequence, int]]) -> None:
        """End the sequences that were in the failed batch (error rows); the others and the queue go on."""
        error = f"llama_decode failed (code {code}) for this request's batch; the request was ended."
        in_batch = {slot.seq for slot in live if slot.next_token is not None} | {s.seq for s, _ in prefilling}
        for slot in live:
            if slot.seq in in_batch:
                self._finish(slot, error=error)
        job = self._job
        if job is not None and job.in_batch:
            llama_cpp_c.llama_memory_seq_rm(self.memory, self.prefix_seq, -1, -1)
            self._prefix, self._job = [], None
            for slot in job.waiters:  # fall back to prefilling their whole prompt
                slot.waiting_prefix = 0

    def _piece_of(self, token: int) -> bytes:
        n = llama_cpp_c.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp_c.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    def _accept(self, slot: _Sequence, token: int, now: float) -> None:
        """One sampled token: the rules of ``Llama._create_completion`` (EOG, multi-byte, stops, max_tokens)."""
        if llama_cpp_c.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, finish_reason="stop", now=now)
            return
        slot.completion.append(token)
        slot.text += self._piece_of(token)
        text = slot.text
        for k, char in enumerate(text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    slot.multibyte_fix = num - k
        if slot.multibyte_fix > 0:
            slot.multibyte_fix -= 1
            return self._continue(slot, token)
        found = [stop for stop in slot.request.stops if stop in text]
        if found:
            self._finish(slot, finish_reason="stop", now=now, text=text[: text.index(found[0])])
            return
        visible = len(text) - max(incomplete_utf8_tail(text), held_back_for_stops(text, slot.request.stops))
        if visible > slot.shown:
            self._show(slot, text[slot.shown : visible], now)
            slot.shown = visible
        if len(slot.completion) >= slot.max_tokens:
            self._finish(slot, finish_reason="length", now=now)
            return
        self._continue(slot, token)

    def _continue(self, slot: _Sequence, token: int) -> None:
        slot.next_token = token

    def _show(self, slot: _Sequence, data: bytes, now: float) -> None:
        delta = data.decode("utf-8", errors="ignore")
        if not delta:
            return
        slot.content_times.append(now)
        if slot.request.on_content is not None:
            slot.request.on_content(delta)

    def _finish(
        self,
        slot: _Sequence,
        *,
        finish_reason: str | None = None,
        now: float | None = None,
        text: bytes | None = None,
        error: str | None = None,
    ) -> None:
        """Free the slot and answer the request. The slot keeps the cells of what it decoded (its next
        request may start with the same tokens), unless the request failed."""
        self._slots[slot.seq] = None
        self._ended += 1
        if error is None:
            self._held[slot.seq] = (slot.request.prompt + slot.completion)[: slot.pos]
        else:
            llama_cpp_c.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            self._held[slot.seq] = []
        slot.sampler.close()
        request = slot.request
        now = self.clock() if now is None else now
        latency = now - request.submitted
        prompt_tokens = len(request.prompt)
        completion_tokens = len(slot.completion)
        if error is not None:
            completion = Completion(status="error", error=error, latency_s=latency)
        else:
            final = slot.text if text is None else text
            if len(final) > slot.shown:  # what was held back (a partial stop or character) is shown last
                self._show(slot, final[slot.shown :], now)
            times = slot.content_times if self.settings.stream else []  # stream=false: no ttft, as today
            ttft = times[0] - request.submitted if times else None
            completion = Completion(
                output=final.decode("utf-8", errors="ignore"),
                finish_reason=finish_reason,
                response_model=self._engine.model_name,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                latency_s=latency,
                ttft_s=ttft,
                itl_s=[b - a for a, b in zip(times, times[1:])] if self.settings.stream else None,
                usage_source="server",
                tpot_s=time_per_output_token(latency, ttft, completion_tokens),
            )
        if not request.future.done():
            request.future.set_result(completion)
