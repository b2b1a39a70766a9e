"""How `sentech-eval serve` runs: its flags → ServeConfig, then engine + app → listening socket(s) until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sentech_eval.backends.local import default_n_threads
from sentech_eval.config import LocalBackendConfig
from sentech_eval.errors import ConfigError
from sentech_eval.server.app import DEFAULT_MAX_BODY_BYTES, STREAM_USAGE, ServerOptions, create_app, start_site
from sentech_eval.server.engines import DEFAULT_DATASETS_DIR, DEFAULT_GGUF, build_engine
from sentech_eval.server.faults import ERROR_STATUSES, FaultConfig


@dataclass
class ServeConfig:
    """Everything `serve` needs; built from flags by ``parse_config`` or directly by tests."""

    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "echo"
    model_path: str | None = None
    n_ctx: int = LocalBackendConfig.n_ctx  # the same default as backend=local (sentech_eval/config.py)
    n_threads: int | None = None
    datasets_dir: str | None = None
    options: ServerOptions = field(default_factory=ServerOptions)
    latency_ms: float = 0.0
    tokens_per_s: float | None = None
    ttft_ms: float | None = None
    capacity: int | None = None
    output_tokens: int | None = None
    seed: int = 0
    workers: int = 1
    accuracy_peak: float = 0.8

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
            accuracy_peak=self.accuracy_peak,
        )


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argparse parser of `sentech-eval serve`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run a Sentech-compatible chat-completions server (POST /v1/chat/completions) on a local port: "
            "the `echo` engine answers deterministically without a model (dataset prompts get their reference), "
            "the `llama` engine serves a GGUF model through llama-cpp-python. Seeded fault injection "
            "simulates a flaky API."
        ),
    )
    g = p.add_argument_group("listening and auth")
    g.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free port, printed on start (default: %(default)s)")
    g.add_argument(
        "--api-key-env",
        default="SENTECH_API_KEY",
        metavar="VAR",
        help="environment variable holding the accepted API key(s), comma-separated (default: %(default)s)",
    )
    g.add_argument("--no-auth", action="store_true", help="accept requests without an API key")
    g.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413 (default: %(default)s)"
    )
    g.add_argument(
        "--stream-usage", choices=STREAM_USAGE, default="always",
        help="token usage in streamed answers: always (on the last chunk; the Sentech contract), requested "
        "(only with stream_options.include_usage, as OpenAI and vLLM), never (as llama_cpp.server) (default: %(default)s)",
    )
    g.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT); each loads its own engine (default: %(default)s)"
    )
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("echo", "oracle", "llama"), default="echo",
                   help="what produces the answers; oracle: right with a known probability of the sampling "
                        "parameters, for checking races (docs/server.md) (default: %(default)s)")
    g.add_argument("--accuracy-peak", type=float, default=0.8,
                   help="oracle engine: accuracy at its best setting, temperature 0.3 and top_p 0.9 (default: %(default)s)")
    g.add_argument("--model", metavar="PATH", help=f"GGUF file for --engine llama (default: {DEFAULT_GGUF}; the dir is $SENTECH_MODELS_DIR when set)")
    g.add_argument("--n-ctx", type=int, default=LocalBackendConfig.n_ctx, help="context length for --engine llama (default: %(default)s)")
    g.add_argument(
        "--n-threads", type=int, default=None, help="CPU threads for --engine llama (default: the cores idle at start, i.e. available cores minus the "
        "load average, split between --workers; see docs/local.md)"
    )
    g.add_argument(
        "--datasets-dir",
        metavar="DIR",
        help=f"echo engine: answer prompts found in DIR/*.parquet with their reference (default: {DEFAULT_DATASETS_DIR})",
    )
    g.add_argument("--latency-ms", type=float, default=0.0, help="echo engine: fixed delay before each answer (default: %(default)s)")
    g.add_argument(
        "--tokens-per-s",
        type=float,
        default=None,
        help="echo engine: simulated generation speed in tokens/s per stream (adds completion_tokens/rate; paces streamed chunks; default: off)",
    )
    g.add_argument(
        "--ttft-ms",
        type=float,
        default=None,
        help="echo engine: time to first token, after a slot is free and --latency-ms; later tokens follow at "
        "--tokens-per-s (default: one token time, 0 without --tokens-per-s)",
    )
    g.add_argument(
        "--capacity",
        type=int,
        default=None,
        metavar="C",
        help="echo engine: at most C generations at once, the others queue in arrival order, so the server "
        "saturates at C / (time per request) requests/s like a real one (default: unlimited)",
    )
    g.add_argument(
        "--output-tokens",
        type=int,
        default=None,
        metavar="N",
        help="echo engine: every answer is exactly N tokens (the answer, then filler words; max_tokens still "
        "cuts it), like vLLM's ignore_eos (default: the answer's own length)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seeds fault injection and answers to requests that send no seed (default: %(default)s)"
    )
    g = p.add_argument_group("fault injection (seeded by --seed, deterministic in request order)")
    g.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered with --error-status (default: %(default)s)")
    g.add_argument("--error-status", type=int, choices=ERROR_STATUSES, default=500, help="status of injected errors (default: %(default)s)")
    g.add_argument(
        "--retry-after", type=float, default=None, metavar="S", help="Retry-After seconds sent with injected 429/503 (default: none)"
    )
    g.add_argument("--drop-rate", type=float, default=0.0, help="fraction of requests whose connection is closed unanswered (default: %(default)s)")
    g.add_argument("--slow-rate", type=float, default=0.0, help="fraction of requests delayed by --slow-ms (default: %(default)s)")
    g.add_argument("--slow-ms", type=float, default=0.0, help="delay of slow requests, in milliseconds (default: %(default)s)")
    return p


def read_api_keys(env_var: str) -> tuple[str, ...]:
    """The comma-separated keys in ``env_var`` (empty tuple when unset or blank)."""
    return tuple(k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip())


def parse_config(argv: list[str], prog: str = "sentech-eval serve") -> ServeConfig:
    """Parse and check the flags; ConfigError (one sentence) for a bad combination."""
    args = build_parser(prog).parse_args(argv)
    keys = read_api_keys(args.api_key_env)
    if not keys and not args.no_auth:
        raise ConfigError(
            f"No API key to accept: set the environment variable {args.api_key_env} "
            "(comma-separated keys allowed) or pass --no-auth."
        )
    faults = FaultConfig(
        seed=args.seed,
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after_s=args.retry_after,
        drop_rate=args.drop_rate,
        slow_rate=args.slow_rate,
        slow_ms=args.slow_ms,
    )
    problems = faults.problems()
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_body_bytes < 1:
        problems.append(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    if args.workers < 1:
        problems.append(f"--workers must be >= 1, got {args.workers}")
    if args.latency_ms < 0:
        problems.append(f"--latency-ms must be >= 0, got {args.latency_ms}")
    if args.tokens_per_s is not None and args.tokens_per_s <= 0:
        problems.append(f"--tokens-per-s must be > 0, got {args.tokens_per_s}")
    if args.ttft_ms is not None and args.ttft_ms < 0:
        problems.append(f"--ttft-ms must be >= 0, got {args.ttft_ms}")
    if args.capacity is not None and args.capacity < 1:
        problems.append(f"--capacity must be >= 1, got {args.capacity}")
    if args.output_tokens is not None and args.output_tokens < 1:
        problems.append(f"--output-tokens must be >= 1, got {args.output_tokens}")
    if not 0 < args.accuracy_peak <= 1:
        problems.append(f"--accuracy-peak must be in (0, 1], got {args.accuracy_peak}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")
    return ServeConfig(
        host=args.host,
        port=args.port,
        engine=args.engine,
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_threads=args.n_threads,
        datasets_dir=args.datasets_dir,
        options=ServerOptions(api_keys=keys, no_auth=args.no_auth, max_body_bytes=args.max_body_bytes, faults=faults,
                              stream_usage=args.stream_usage, workers=args.workers),
        latency_ms=args.latency_ms,
        tokens_per_s=args.tokens_per_s,
        ttft_ms=args.ttft_ms,
        capacity=args.capacity,
        output_tokens=args.output_tokens,
        seed=args.seed,
        workers=args.workers,
        accuracy_peak=args.accuracy_peak,
    )


def listening_line(config: ServeConfig, port: int) -> str:
    """The one line printed once the server accepts connections (tests parse the port from it)."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    extra = f", {config.workers} workers" if config.workers > 1 else ""
    line = f"sentech-eval serve: listening on http://{host}:{port}/v1 (engine {config.engine}{extra})"
    slots = 1 if config.engine == "llama" else config.capacity  # the engine's generations at once
    if slots:
        # more in flight only queue here; clients read the same number from /health or the
        # X-Sentech-Capacity header of every answer (the remote backend warns when it sends more)
        capacity = slots * config.workers
        line += (f"; answers {capacity} request(s) at a time: run clients with "
                 f"runner.concurrency={capacity}, more only queue inside the server")
    return line


async def _serve(config: ServeConfig, port: int, *, reuse_port: bool, announce: bool, ready_fd: int | None = None) -> None:
    engine = config.build_engine()
    app = create_app(engine, config.options)
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
    seed = config.seed + 1_000_003 * index
    faults = dataclasses.replace(config.options.faults, seed=seed)
    # a llama worker gets its share of the cores unless --n-threads says otherwise
    n_threads = config.n_threads or default_n_threads(config.workers)[0]
    return dataclasses.replace(
        config, seed=seed, n_threads=n_threads, options=dataclasses.replace(config.options, faults=faults)
    )


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
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

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


def _stop_children(children: list[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
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


