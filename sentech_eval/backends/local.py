"""The local backend: a GGUF model run in-process by llama.cpp (llama-cpp-python).

``backend=local`` (the embedded SmolLM2-135M) and ``backend=llama31_8b`` both build a
``LocalBackend``. The model never runs on the event loop:

- ``workers=1``: one dedicated thread owns one ``Llama`` (a ``Llama`` is not thread-safe);
- ``workers=N>1``: N spawned processes, each with its own ``Llama`` and ``n_threads ≈ cores/N``,
  each answering one request at a time; a request goes to whichever worker is free;
- ``parallel=N>1`` (the default picks N, see ``choose_parallel``): one model and one context holding N
  sequences decoded together by ``local_batch.BatchEngine`` (continuous batching, shared prefixes).
  ``parallel=1`` is the one-at-a-time thread above.

Setup problems (missing file, missing llama_cpp, a file llama.cpp cannot load) raise
``BackendError`` before the first request; a failed generation is a ``Completion`` with
``status="error"``. Semantics of sampling, timing and token counts: see ``local_worker``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.util
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentech_eval.backends.base import Backend
from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.config import LocalBackendConfig, backend_settings
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.paths import default_models_dir
from sentech_eval.types import Completion, Sampling

N_CTX_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of this
INSTALL_HINT = (
    "install it with `pip install -e '.[local]'` (llama-cpp-python builds from source, ~5 min; "
    "for a GPU build see docs/local.md)"
)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_n_threads(workers: int = 1) -> tuple[int, str]:
    """llama.cpp threads per worker when the config leaves ``n_threads`` null, and why.

    llama.cpp's threads spin-wait at every barrier: when one of them cannot get a core (another
    process is busy), each token waits for it and generation slows many-fold. So the default
    counts only the cores idle right now (available cores minus the 1-minute load average), split
    between the workers, at least 1. Figures: docs/local.md; measure with benchmarks/bench_threads.py.
    """
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        load = 0.0
    idle = max(1, int(cores - load + 0.5))
    n = max(1, min(cores, idle) // workers)
    return n, f"auto: {cores} cores, load average {load:.2f}, {workers} worker(s) -> {n} thread(s) each"


PARALLEL_CPU = 8  # sequences per step on a CPU: more adds latency for little throughput (docs/local.md)
PARALLEL_GPU = 16  # with layers on a GPU, decoding is memory-bound and more sequences pay
PARALLEL_MEMORY_SHARE = 0.25  # the KV cache of all sequences may take this share of the available memory


def available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo's MemAvailable; None elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def choose_parallel(gpu: bool, kv_bytes_per_sequence: int, memory: int | None) -> tuple[int, str]:
    """``backend.parallel`` when the config leaves it null: sequences decoded together, and why.

    On a CPU decoding is compute-bound: batching gains ~1.4x by 8 sequences and little after (and
    each more sequence adds latency), so 8; with layers on a GPU decoding is memory-bound, so 16.
    Either is cut so that the KV cache of every sequence (plus the shared prefix) fits in a quarter of
    the available memory. Figures: docs/local.md, benchmarks/bench_batching.py.
    """
    n = PARALLEL_GPU if gpu else PARALLEL_CPU
    why = f"{'GPU offload' if gpu else 'CPU only'} -> {n}"
    if memory is not None and kv_bytes_per_sequence > 0:
        fits = int(memory * PARALLEL_MEMORY_SHARE // kv_bytes_per_sequence) - 1
        if fits < n:
            n = max(1, fits)
            why += f", cut to {n}: the KV cache ({kv_bytes_per_sequence / 2**20:.0f} MiB per sequence) must fit"
            why += f" in {PARALLEL_MEMORY_SHARE:.0%} of {memory / 2**30:.1f} GiB available"
        else:
            why += (
                f" (KV cache {kv_bytes_per_sequence / 2**20:.0f} MiB per sequence, {memory / 2**30:.1f} GiB available)"
            )
    return n, f"auto: {why}"


def missing_model_message(path: Path, cfg: LocalBackendConfig) -> str:
    """One sentence: which file is missing and how to obtain it."""
    if path.name == EMBEDDED_MODEL.file_name:
        dest = "" if path.parent.resolve() == default_models_dir().resolve() else f" --dest {path.parent}"
        how = f"run `sentech-eval fetch-model{dest}` to put the embedded default model there"
    elif cfg.hf_repo and cfg.hf_file:
        repo, name = cfg.hf_repo, cfg.hf_file
        how = (
            f"download it with `huggingface-cli download {repo} {name} --local-dir {path.parent}` "
            "or set backend.download=true (needs huggingface_hub)"
        )
    else:
        how = "check the path"
    return f"Model file {path} does not exist; {how}, or point backend.model_path at your GGUF file."


def _download_from_hub(path: Path, cfg: LocalBackendConfig) -> None:
    """Fetch ``hf_repo``/``hf_file`` into ``path``'s directory with huggingface_hub."""
    repo, name = cfg.hf_repo, cfg.hf_file
    if not (repo and name):
        raise ConfigError("backend.download=true needs backend.hf_repo and backend.hf_file to be set.")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise BackendError(
            f"backend.download=true needs huggingface_hub to fetch {repo}/{name}; "
            "install it with `pip install huggingface_hub` or download the file yourself."
        )
    from huggingface_hub import hf_hub_download

    try:
        got = Path(hf_hub_download(repo_id=repo, filename=name, local_dir=str(path.parent)))
    except Exception as exc:  # network, auth, missing file: all setup failures
        raise BackendError(f"Could not download {name} from the Hugging Face repo {repo} ({exc}).") from exc
    if got.resolve() != path.resolve():
        os.replace(got, path)


def engine_settings(cfg: Any, workers: int) -> Any:
    """Check the backend config node against ``LocalBackendConfig`` (keys, types, defaults) and the
    ranges, and turn it into ``EngineSettings`` (after the file check)."""
    from sentech_eval.backends.local_worker import EngineSettings, cpu_has_amx

    local = cfg if isinstance(cfg, LocalBackendConfig) else backend_settings(cfg, LocalBackendConfig)
    if local.n_ctx < 1:
        raise ConfigError(f"backend.n_ctx must be at least 1 (got {local.n_ctx}).")
    # llama.cpp pads the context to a multiple of 256 but llama-cpp-python sizes its token
    # buffer by the requested value; a mismatch overflows that buffer, so ask for the padded size.
    n_ctx = -(-local.n_ctx // N_CTX_PAD) * N_CTX_PAD
    if local.n_batch < 1:
        raise ConfigError(f"backend.n_batch must be at least 1 (got {local.n_batch}).")
    if local.n_threads is not None:
        n_threads, threads_reason = local.n_threads, "backend.n_threads"
    else:
        n_threads, threads_reason = default_n_threads(workers)
    if n_threads < 1:
        raise ConfigError(f"backend.n_threads must be at least 1 or null (got {n_threads}).")
    repack, repack_reason = local.repack, "backend.repack"
    if not isinstance(repack, bool):
        if repack != "auto":
            raise ConfigError(f"backend.repack must be true, false or auto (got {repack!r}).")
        repack = not cpu_has_amx()
        repack_reason = "auto: " + ("off, the CPU has AMX" if not repack else "on, the CPU has no AMX")
    return EngineSettings(
        model_path=str(local.model_path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_batch=local.n_batch,
        n_gpu_layers=local.n_gpu_layers,
        chat_format=local.chat_format,
        reuse_prompt_cache=local.reuse_prompt_cache,
        stream=local.stream,
        repack=repack,
        verbose=local.verbose,
        n_threads_reason=threads_reason,
        repack_reason=repack_reason,
    )


class LocalBackend(Backend):
    """GGUF chat completions through llama.cpp, in a worker thread or worker processes."""

    kind = "local"

    def __init__(self, settings: Any, workers: int = 1, parallel: int | None = 1):
        """``parallel``: sequences decoded together (None = choose from the machine and model; 1 =
        one request at a time, as before batching)."""
        self.settings = settings
        self.workers = workers
        self.parallel = parallel or 0
        self.parallel_reason = "backend.parallel" if parallel else ""
        # More requests in flight than workers only wait in the executor's queue, a wait that
        # latency_s (timed on the worker) does not see; a runner may cap its concurrency here.
        self.max_concurrency = workers
        self.model = Path(settings.model_path).name
        self._engine = None
        self._batch: Any = None
        self._closed = False
        try:
            if parallel != 1:
                self._start_batching(parallel)
            elif workers == 1:
                self._start_thread()
            else:
                self._start_processes()
        except BackendError:
            self._shutdown()
            raise
        except Exception as exc:  # llama.cpp could not load the file
            self._shutdown()
            raise BackendError(
                f"llama.cpp could not load the model {settings.model_path} ({type(exc).__name__}: {exc}); "
                "check that it is a GGUF file this llama-cpp-python version supports."
            ) from exc

    @classmethod
    def from_config(cls, cfg: Any, concurrency: int = 1) -> LocalBackend:
        """Build from the ``backend`` config node; BackendError if the model or llama_cpp is missing."""
        local = backend_settings(cfg, LocalBackendConfig)
        if not local.model_path:
            raise ConfigError("backend.model_path is not set; give the path of a GGUF model file.")
        path = Path(str(local.model_path)).expanduser()
        if not path.is_file():
            if local.download:
                _download_from_hub(path, local)
            else:
                raise BackendError(missing_model_message(path, local))
        try:
            import llama_cpp  # noqa: F401 - only checking that it can be imported
        except ImportError as exc:
            raise BackendError(
                f"The local backend needs llama-cpp-python, which cannot be imported ({exc}); {INSTALL_HINT}."
            ) from exc
        workers = local.workers
        if workers < 1:
            raise ConfigError(f"backend.workers must be at least 1 (got {workers}).")
        parallel = local.parallel
        if parallel is not None and parallel < 1:
            raise ConfigError(f"backend.parallel must be at least 1 or null (got {parallel}).")
        if workers > 1:
            if parallel is not None and parallel > 1:
                raise ConfigError(
                    f"backend.parallel={parallel} and backend.workers={workers} cannot be combined: "
                    "batching runs in one process; set backend.workers=1 (or backend.parallel=1)."
                )
            parallel = 1
        settings = engine_settings(local, workers)
        settings = dataclasses.replace(settings, model_path=str(path))
        return cls(settings, workers=workers, parallel=parallel)

    # --- workers
    def _start_batching(self, parallel: int | None) -> None:
        from sentech_eval.backends.local_batch import BatchEngine

        self._batch = BatchEngine(self.settings, parallel, choose=self._choose_parallel)
        self.parallel = self._batch.parallel
        self.max_concurrency = self.parallel  # the runner keeps every slot busy (it warns when it cannot)
        self._metadata = self._batch.describe()

    def _choose_parallel(self, kv_bytes_per_sequence: int) -> int:
        gpu = self.settings.n_gpu_layers != 0
        n, self.parallel_reason = choose_parallel(gpu, kv_bytes_per_sequence, available_memory())
        return n

    def _start_thread(self) -> None:
        from sentech_eval.backends.local_worker import LocalEngine

        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        # The model is created (and later used and freed) only on the worker thread.
        self._engine = self._executor.submit(LocalEngine, self.settings).result()
        self._describe = self._engine.describe
        self._generate = self._engine.generate
        self._metadata = self._executor.submit(self._engine.describe).result()

    def _start_processes(self) -> None:
        from sentech_eval.backends import local_worker

        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=local_worker.init_process,
            initargs=(self.settings,),
        )
        self._generate = local_worker.generate_in_process
        try:
            # Wait until the workers have loaded their models, so a bad file fails here.
            futures = [self._executor.submit(local_worker.describe_in_process) for _ in range(self.workers)]
            described = [f.result() for f in futures]
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise BackendError(
                f"The local backend's worker processes died while loading {self.settings.model_path}; "
                "run with backend.workers=1 to see llama.cpp's error."
            ) from exc
        self._metadata = {k: v for k, v in described[0].items() if k != "pid"}

    # --- Backend protocol
    def metadata(self) -> dict[str, Any]:
        """The GGUF's architecture and quantization, llama.cpp build, and the worker set-up."""
        return {
            **self._metadata,
            "workers": self.workers,
            "parallel": self.parallel,
            "parallel_reason": self.parallel_reason,
            "reuse_prompt_cache": self.settings.reuse_prompt_cache,
            "stream": self.settings.stream,
        }

    def cache_identity(self) -> dict[str, Any]:
        """What identifies this model's answers for the response cache: the GGUF file (the cache
        replaces its path by the file's sha256), the llama.cpp build and the load settings.

        ``parallel`` is not part of it, as ``workers`` and ``n_threads`` are not: how many requests
        share a batch changes float sums in the last bits (at temperature 0 a few answers differ;
        docs/local.md measures how many), not the model or the sampling, so an answer cached at one
        setting is an answer of the same model and sampling at any other."""
        meta = self._metadata
        return {
            "backend": self.kind,
            "model": self.model,
            "model_path": self.settings.model_path,
            "llama_cpp_python": meta.get("llama_cpp_python_version"),
            "n_ctx": meta.get("n_ctx"),
            "chat_format": meta.get("chat_format"),
            "n_gpu_layers": self.settings.n_gpu_layers,
            "stream": self.settings.stream,
            "seed_sent": True,
        }

    async def complete(self, messages: Sequence[dict[str, str]], sampling: Sampling) -> Completion:
        """Run one chat completion on a free worker; failures come back as ``status="error"``."""
        if self._closed:
            return Completion(status="error", error="The local backend is closed.")
        params = {f.name: getattr(sampling, f.name) for f in dataclasses.fields(Sampling)}
        if self._batch is not None:
            from sentech_eval.backends.local_worker import sampling_arguments

            request = self._batch.submit(list(messages), sampling_arguments(params))
            try:
                return await asyncio.wrap_future(request.future)
            except asyncio.CancelledError:
                request.cancel()  # frees its slot at the next step; the others go on
                raise
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._generate, list(messages), params)
        except concurrent.futures.process.BrokenProcessPool as exc:
            return Completion(status="error", error=f"A local worker process died ({exc}).")
        except RuntimeError as exc:  # executor shut down under us
            return Completion(status="error", error=f"The local backend could not run the request ({exc}).")

    async def aclose(self) -> None:
        """Stop the workers and free the model(s)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.close()
        executor = getattr(self, "_executor", None)
        if executor is None:
            return
        if self._engine is not None:
            try:
                executor.submit(self._engine.close).result()
            except Exception:  # already broken: nothing left to free
                pass
            self._engine = None
        executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
