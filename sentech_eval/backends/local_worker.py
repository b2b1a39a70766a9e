"""The worker side of the local backend: one ``llama_cpp.Llama`` answering one request at a time.

``LocalEngine`` owns one model and turns (messages, sampling) into a ``Completion``. It is
used as-is by the single worker thread (``workers=1``) and, through ``init_process`` /
``generate_in_process``, inside each worker process (``workers>1``). Nothing here is async and
nothing here is shared between threads: one engine, one caller.

Semantics (kept identical to the remote backend):
- every sampling parameter is passed on every call; unset ones get API-like defaults
  (``SAMPLING_DEFAULTS``), plus ``min_p=0`` and ``repeat_penalty=1`` so llama-cpp-python's own
  defaults (min_p 0.05, top_k 40, temperature 0.2) never leak in;
- ``ttft_s`` is the time to the first streamed chunk with non-empty content;
- token counts are the model's own: the usage block when not streaming, and when streaming
  the exact token lists the model evaluated (``CountingLlama`` watches ``generate``), which
  equal the usage numbers of the same call made without streaming.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_c
from llama_cpp import Llama

from sentech_eval.config import LocalBackendConfig
from sentech_eval.types import Completion, time_per_output_token

# What an unset sampling parameter means, chosen to match an OpenAI-style API.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,  # 0 = disabled in llama.cpp
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "max_tokens": 256,
}
# Always sent, never left to llama-cpp-python's defaults.
FIXED_SAMPLING: dict[str, Any] = {
    "min_p": 0.0,
    "repeat_penalty": 1.0,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
}


@dataclass(frozen=True)
class EngineSettings:
    """Everything a worker needs to load its model (picklable: sent to worker processes)."""

    model_path: str
    n_ctx: int = LocalBackendConfig.n_ctx  # the config schema's defaults: one place (sentech_eval/config/schemas.py)
    n_threads: int = 1
    n_batch: int = LocalBackendConfig.n_batch
    n_gpu_layers: int = LocalBackendConfig.n_gpu_layers
    chat_format: str | None = LocalBackendConfig.chat_format
    reuse_prompt_cache: bool = LocalBackendConfig.reuse_prompt_cache
    stream: bool = LocalBackendConfig.stream
    repack: bool = True  # llama.cpp "extra buffer types" (CPU weight repacking, AMX)
    verbose: bool = False
    n_threads_reason: str = "set"  # how n_threads was chosen (recorded in the results' metadata)
    repack_reason: str = "set"  # how repack was chosen


def cpu_has_amx() -> bool:
    """True when /proc/cpuinfo advertises Intel AMX tiles (Linux only; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux; None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """Make ``Llama()`` load with ``use_extra_bufts`` set (llama-cpp-python has no argument for it).

    llama.cpp's extra buffer types repack weights for AMX / AVX kernels; the AMX path dies with a
    general-protection fault (``ldtilecfg``) under some hypervisors, which kills the process.
    """
    if use_extra_bufts:
        yield
        return
    with _PARAMS_LOCK:
        original = llama_cpp_c.llama_model_default_params

        def without_extra_bufts():  # noqa: ANN202 - ctypes struct
            params = original()
            params.use_extra_bufts = False
            return params

        llama_cpp_c.llama_model_default_params = without_extra_bufts
        try:
            yield
        finally:
            llama_cpp_c.llama_model_default_params = original


class CountingLlama(Llama):
    """A ``Llama`` that remembers the token counts of its last generation.

    ``generate`` receives the full prompt tokens and yields every sampled token; the completion
    loop keeps all of them except a final end-of-generation token. So after a call:
    ``prompt_tokens = len(prompt)`` and ``completion_tokens = yielded - (last was EOG)``,
    exactly the numbers llama-cpp-python puts in a non-streamed ``usage``.
    """

    last_prompt_tokens: int = 0
    last_completion_tokens: int = 0
    last_cached_tokens: int = 0  # tokens already in the KV cache when the generation began

    def generate(self, tokens, *args, **kwargs):  # type: ignore[override]
        tokens = list(tokens)
        self.last_prompt_tokens = len(tokens)
        self.last_completion_tokens = 0
        self.last_cached_tokens = self.n_tokens
        vocab = self._model.vocab
        for token in super().generate(tokens, *args, **kwargs):
            if not llama_cpp_c.llama_vocab_is_eog(vocab, token):
                self.last_completion_tokens += 1
            yield token


def load_llama(settings: EngineSettings) -> CountingLlama:
    """Load the GGUF in ``settings`` (exceptions from llama.cpp propagate to the caller)."""
    with _model_params(settings.repack):
        return CountingLlama(
            model_path=settings.model_path,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            n_threads_batch=settings.n_threads,
            n_batch=settings.n_batch,
            n_gpu_layers=settings.n_gpu_layers,
            chat_format=settings.chat_format,
            # Presence/frequency penalties look at the whole generation, as an API's do.
            last_n_tokens_size=settings.n_ctx,
            verbose=settings.verbose,
        )


_FILE_TYPES = {
    value: name[len("LLAMA_FTYPE_") :].removeprefix("MOSTLY_")
    for name, value in vars(llama_cpp_c).items()
    if name.startswith("LLAMA_FTYPE_") and isinstance(value, int)
}


def sampling_arguments(sampling: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``create_chat_completion``: every parameter, defaults filled in.

    ``sampling`` holds the ``Sampling`` fields (None = unset). A missing seed becomes a fresh
    random one, so a seedless run is random but each call is still fully specified.
    """
    args = {
        name: (sampling.get(name) if sampling.get(name) is not None else default)
        for name, default in SAMPLING_DEFAULTS.items()
    }
    seed = sampling.get("seed")
    args["seed"] = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
    args.update(FIXED_SAMPLING)
    return args


class LocalEngine:
    """One model answering one chat request at a time; see the module docstring for semantics."""

    def __init__(self, settings: EngineSettings, clock: Callable[[], float] = time.perf_counter):
        self.settings = settings
        self.clock = clock
        self.model_name = Path(settings.model_path).name  # what a local answer records as response_model
        self.llm = load_llama(settings)

    def describe(self) -> dict[str, Any]:
        """GGUF and llama.cpp facts for the results' metadata."""
        meta = self.llm.metadata
        arch = meta.get("general.architecture")
        file_type = meta.get("general.file_type")
        try:
            quantization = _FILE_TYPES.get(int(file_type), str(file_type)) if file_type is not None else None
        except ValueError:
            quantization = str(file_type)
        system_info = llama_cpp_c.llama_print_system_info().decode("utf-8", "replace").strip(" |")
        return {
            "model_file": Path(self.settings.model_path).name,
            "model_bytes": os.path.getsize(self.settings.model_path),
            "architecture": arch,
            "model_name": meta.get("general.name"),
            "size_label": meta.get("general.size_label"),
            "quantization": quantization,
            "file_type": int(file_type) if file_type is not None and str(file_type).isdigit() else file_type,
            "context_length": int(meta[f"{arch}.context_length"]) if f"{arch}.context_length" in meta else None,
            "chat_format": self.llm.chat_format,
            "n_ctx": self.llm.n_ctx(),
            "n_threads": self.settings.n_threads,
            "n_threads_reason": self.settings.n_threads_reason,
            "cpu_model": cpu_model(),
            "cpu_amx": cpu_has_amx(),
            "repack_reason": self.settings.repack_reason,
            "n_batch": self.settings.n_batch,
            "n_gpu_layers": self.settings.n_gpu_layers,
            "repack": self.settings.repack,
            "llama_cpp_python_version": llama_cpp.__version__,
            "llama_cpp_system_info": system_info,
            "gpu_offload_supported": bool(llama_cpp_c.llama_supports_gpu_offload()),
        }

    def generate(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> Completion:
        """One chat completion; any failure becomes ``Completion(status="error")``."""
        args = sampling_arguments(sampling)
        if not self.settings.reuse_prompt_cache:
            self.llm.reset()  # n_tokens = 0: no KV prefix is reused, the prompt is evaluated in full
        clock = self.clock
        start = clock()
        try:
            if self.settings.stream:
                return self._streamed(messages, args, start)
            return self._whole(messages, args, start)
        except Exception as exc:  # a failed generation is data, not an exception
            return Completion(status="error", error=f"{type(exc).__name__}: {exc}", latency_s=clock() - start)

    def _streamed(self, messages: list[dict[str, str]], args: dict[str, Any], start: float) -> Completion:
        clock = self.clock
        parts: list[str] = []
        times: list[float] = []  # clock at each content chunk
        ttft = None
        finish_reason = None
        for chunk in self.llm.create_chat_completion(messages=messages, stream=True, **args):
            now = clock()
            choice = chunk["choices"][0]
            content = choice["delta"].get("content")
            if content:
                if ttft is None:
                    ttft = now - start
                times.append(now)
                parts.append(content)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        latency = clock() - start
        prompt_tokens = self.llm.last_prompt_tokens
        completion_tokens = self.llm.last_completion_tokens
        return Completion(
            output="".join(parts),
            finish_reason=finish_reason,
            response_model=self.model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            latency_s=latency,
            ttft_s=ttft,
            itl_s=[b - a for a, b in zip(times, times[1:])],
            usage_source="server",
            tpot_s=time_per_output_token(latency, ttft, completion_tokens),
        )

    def _whole(self, messages: list[dict[str, str]], args: dict[str, Any], start: float) -> Completion:
        response = self.llm.create_chat_completion(messages=messages, stream=False, **args)
        latency = self.clock() - start
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        return Completion(
            output=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            response_model=self.model_name,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"),
            latency_s=latency,
            ttft_s=None,
            usage_source="server" if usage.get("completion_tokens") is not None else "none",
        )

    def close(self) -> None:
        """Free the model."""
        self.llm.close()


# --- worker-process side (workers > 1): one engine per process, set up by the pool initializer.
_PROCESS_ENGINE: LocalEngine | None = None


def init_process(settings: EngineSettings) -> None:
    """Pool initializer: load this process's own model."""
    global _PROCESS_ENGINE
    _PROCESS_ENGINE = LocalEngine(settings)


def describe_in_process() -> dict[str, Any]:
    """This process's model facts (also proves the model loaded)."""
    assert _PROCESS_ENGINE is not None, "init_process did not run"
    return {**_PROCESS_ENGINE.describe(), "pid": os.getpid()}


def generate_in_process(messages: list[dict[str, str]], sampling: dict[str, Any]) -> Completion:
    """Run one request on this process's model."""
    assert _PROCESS_ENGINE is not None, "init_process did not run"
    return _PROCESS_ENGINE.generate(messages, sampling)
