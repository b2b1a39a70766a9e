"""How `sentech-eval serve` runs: a checked ServeConfig, then engine + app → listening socket(s) until Ctrl-C / SIGTERM.

The flags are parsed in ``sentech_eval.commands.serve``; both it and the test servers build the
ServeConfig with ``ServeConfig.from_values``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from sentech_eval.backends.local import default_n_threads
from sentech_eval.config import LocalBackendConfig
from sentech_eval.errors import ConfigError
from sentech_eval.server.app import STREAM_USAGE, ServerOptions, create_app, start_site
from sentech_eval.server.engines import DEFAULT_DATASETS_DIR, ENGINES, Engine, build_engine
from sentech_eval.server.faults import FaultConfig

# a `serve` value (flag) named unlike its field: value name -> field
RENAMED = {"model": "model_path", "retry_after": "retry_after_s"}
# fields that hold no flag's value: the nested sections, and the keys (read from the environment)
_NOT_VALUES = {"options", "faults", "api_keys", "no_auth"}


def _value_fields(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` that each hold one `serve` flag's value."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_VALUES]


@dataclass
class ServeConfig:
    """Everything `serve` needs; built by ``from_values`` (flags or test options) or directly.

    ``check()`` refuses a configuration that cannot be served, in one sentence naming the flag.
    ``seed`` (``--seed``) seeds both the engine and the fault injector.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "echo"
    model_path: str | None = None
    n_ctx: int = LocalBackendConfig.n_ctx  # the same default as backend=local (sentech_eval/config/schemas.py)
    n_threads: int | None = None
    parallel: int = 1  # --engine llama: sequences decoded together (continuous batching, backends.local_batch)
    datasets_dir: str | None = None
    options: ServerOptions = field(default_factory=ServerOptions)
    latency_ms: float = 0.0
    tokens_per_s: float | None = None
    ttft_ms: float | None = None
    capacity: int | None = None
    output_tokens: int | None = None
    seed: int = 0
    accuracy_peak: float = 0.8

    @classmethod
    def value_names(cls) -> list[str]:
        """The names ``from_values`` takes, one per `serve` flag but the auth ones (``n_ctx`` for ``--n-ctx``):
        the fields of ServeConfig, ServerOptions and FaultConfig, but for ``RENAMED``."""
        name_of = {f: name for name, f in RENAMED.items()}
        return [name_of.get(f, f) for cls_ in (cls, ServerOptions, FaultConfig) for f in _value_fields(cls_)]

    @classmethod
    def from_values(
        cls, values: Mapping[str, Any], *, api_keys: Iterable[str] = (), no_auth: bool = False
    ) -> ServeConfig:
        """A checked ServeConfig from flat values named as the `serve` flags (``value_names``), each put in the
        field of ServeConfig, ServerOptions or FaultConfig it names; a value None or absent keeps its default.

        TypeError for a name that is no flag's; ConfigError (one sentence) for a value ``check`` refuses.
        """
        unknown = set(values) - set(cls.value_names())
        if unknown:
            raise TypeError(
                f"unknown serve value(s): {', '.join(sorted(unknown))}; known: {', '.join(cls.value_names())}"
            )
        given = {RENAMED.get(name, name): value for name, value in values.items() if value is not None}
        for name in ("model_path", "datasets_dir"):  # a path may come as a Path
            if name in given:
                given[name] = str(given[name])

        def fields_of(schema: type) -> dict[str, Any]:
            return {f: given[f] for f in _value_fields(schema) if f in given}

        options = ServerOptions(
            **fields_of(ServerOptions),
            api_keys=tuple(api_keys),
            no_auth=no_auth,
            faults=FaultConfig(**fields_of(FaultConfig)),
        )
        return cls(**fields_of(cls), options=options).check()

    @property
    def workers(self) -> int:
        """Server processes sharing the port (``options.workers``: the app advertises capacity × workers)."""
        return self.options.workers

    def problems(self) -> list[str]:
        """Why this configuration cannot be served, each naming the `serve` flag to change (empty when it can)."""
        out = self.options.faults.problems()
        if self.engine not in ENGINES:
            out.append(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.options.stream_usage not in STREAM_USAGE:
            out.append(f"--stream-usage must be one of {', '.join(STREAM_USAGE)}, got {self.options.stream_usage!r}")
        if not 0 <= self.port <= 65535:
            out.append(f"--port must be between 0 and 65535, got {self.port}")
        if self.options.max_body_bytes < 1:
            out.append(f"--max-body-bytes must be >= 1, got {self.options.max_body_bytes}")
        if self.workers < 1:
            out.append(f"--workers must be >= 1, got {self.workers}")
        if self.parallel < 1:
            out.append(f"--parallel must be >= 1, got {self.parallel}")
        elif self.parallel > 1 and self.engine != "llama":
            out.append(f"--parallel applies to --engine llama only (got --engine {self.engine})")
        if self.latency_ms < 0:
            out.append(f"--latency-ms must be >= 0, got {self.latency_ms}")
        if self.tokens_per_s is not None and self.tokens_per_s <= 0:
            out.append(f"--tokens-per-s must be > 0, got {self.tokens_per_s}")
        if self.ttft_ms is not None and self.ttft_ms < 0:
            out.append(f"--ttft-ms must be >= 0, got {self.ttft_ms}")
        if self.capacity is not None and self.capacity < 1:
            out.append(f"--capacity must be >= 1, got {self.capacity}")
        if self.output_tokens is not None and self.output_tokens < 1:
            out.append(f"--output-tokens must be >= 1, got {self.output_tokens}")
        if not 0 < self.accuracy_peak <= 1:
            out.append(f"--accuracy-peak must be in (0, 1], got {self.accuracy_peak}")
        return out

    def check(self) -> ServeConfig:
        """This configuration, or ConfigError (one sentence listing every problem)."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems) + ".")
        return self

    def build_app(self, engine: Engine) -> web.Application:
        """The app serving ``engine`` with this configuration's options, its faults seeded by ``seed``."""
        return create_app(engine, self.options, self.seed)

    def build_engine(self):
        """A fresh engine for this configuration (not started)."""
        return build_engine(
            self.engine,
            latency_ms=self.latency_ms,
            tokens_per_s=self.tokens_per_s,
            ttft_ms=self.ttft_ms,
            capacity=self.capacity,
            output_tokens=self.output_tokens,
            seed=self.seed,
            datasets_dir=Path(self.datasets_dir) if self.datasets_dir else DEFAULT_DATASETS_DIR,
            model_path=self.model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            parallel=self.parallel,
            accuracy_peak=self.accuracy_peak,
        )


def listening_line(config: ServeConfig, port: int) -> str:
    """The one line printed once the server accepts connections (tests parse the port from it)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    extra = f", {config.workers} workers" if config.workers > 1 else ""
    line = f"sentech-eval serve: listening on http://{host}:{port}/v1 (engine {config.engine}{extra})"
    slots = config.parallel if config.engine == "llama" else config.capacity  # the engine's generations at once
    if slots:
        # more in flight only queue here; clients read the same number from /health or the
        # X-Sentech-Capacity header of every answer (the remote backend warns when it sends more)
        capacity = slots * config.workers
        line += (
            f"; answers {capacity} request(s) at a time: run clients with "
            f"runner.concurrency={capacity}, more only queue inside the server"
        )
    return line


async def _serve(
    config: ServeConfig, port: int, *, reuse_port: bool, announce: bool, ready_fd: int | None = None
) -> None:
    app = config.build_app(config.build_engine())
    runner, real_port = await start_site(app, config.host, port, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        if announce:
            print(listening_line(config, real_port), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def worker_config(config: ServeConfig, index: int) -> ServeConfig:
    """Worker ``index``'s config: its own seed (workers must not inject the same fault sequence)."""
    # a llama worker gets its share of the cores unless --n-threads says otherwise
    n_threads = config.n_threads or default_n_threads(config.workers)[0]
    return dataclasses.replace(config, seed=config.seed + 1_000_003 * index, n_threads=n_threads)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket that fixes the port the workers will share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _serve_workers(config: ServeConfig) -> int:
    """Fork ``config.workers`` processes that each listen on the same port (SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers > 1 needs SO_REUSEPORT, which this platform lacks; use --workers 1.")
    reserved = _reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    read_fd, write_fd = os.pipe()
    children: list[int] = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            reserved.close()
            code = 0
            try:
                _die_with_parent()
                mine = worker_config(config, index)
                asyncio.run(_serve(mine, port, reuse_port=True, announce=False, ready_fd=write_fd))
            except BaseException as exc:  # noqa: BLE001 - a child must never return into the parent's code
                print(f"sentech-eval serve: worker {os.getpid()} failed: {exc}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        children.append(pid)
    os.close(write_fd)
    ready = 0
    while ready < config.workers:
        chunk = os.read(read_fd, config.workers)
        if not chunk:  # every writer closed before all were ready: a worker died
            break
        ready += len(chunk)
    os.close(read_fd)
    reserved.close()
    if ready < config.workers:
        _stop_children(children)
        raise ConfigError(f"Only {ready} of {config.workers} server workers started; see the messages above.")
    print(listening_line(config, port), flush=True)

    def forward(signum, _frame):
        _terminate(children)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        code = code or os.waitstatus_to_exitcode(status)
    return 0 if code in (0, -signal.SIGTERM) else 1


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker if the parent dies (even by kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _terminate(children: list[int]) -> None:
    """SIGTERM to every child still there."""
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _stop_children(children: list[int]) -> None:
    _terminate(children)
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def serve(config: ServeConfig) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    if config.engine == "llama":
        # Fail fast, with one sentence, before binding anything (missing library or model file).
        config.build_engine().check()
    if config.workers > 1:
        return _serve_workers(config)
    asyncio.run(_serve(config, config.port, reuse_port=False, announce=True))
    return 0
