"""``sentech-eval serve``: its flags → a checked ``ServeConfig``, then the serving loop of ``server.serving``."""

from __future__ import annotations

import argparse
import os

from sentech_eval.errors import ConfigError
from sentech_eval.server.app import STREAM_USAGE
from sentech_eval.server.engines import DEFAULT_DATASETS_DIR, DEFAULT_GGUF, ENGINES
from sentech_eval.server.faults import ERROR_STATUSES
from sentech_eval.server.serving import ServeConfig, serve

DEFAULTS = ServeConfig()  # every flag's default is the config's (one place)


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
    g.add_argument("--host", default=DEFAULTS.host, help="interface to bind (default: %(default)s)")
    g.add_argument(
        "--port",
        type=int,
        default=DEFAULTS.port,
        help="port to bind; 0 picks a free port, printed on start (default: %(default)s)",
    )
    g.add_argument(
        "--api-key-env",
        default="SENTECH_API_KEY",
        metavar="VAR",
        help="environment variable holding the accepted API key(s), comma-separated (default: %(default)s)",
    )
    g.add_argument("--no-auth", action="store_true", help="accept requests without an API key")
    g.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULTS.options.max_body_bytes,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    g.add_argument(
        "--stream-usage",
        choices=STREAM_USAGE,
        default=DEFAULTS.options.stream_usage,
        help="token usage in streamed answers: always (on the last chunk; the Sentech contract), requested "
        "(only with stream_options.include_usage, as OpenAI and vLLM), never (as llama_cpp.server) (default: %(default)s)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=DEFAULTS.options.workers,
        help="server processes sharing the port (SO_REUSEPORT); each loads its own engine (default: %(default)s)",
    )
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULTS.engine,
        help="what produces the answers; oracle: right with a known probability of the sampling "
        "parameters, for checking races (docs/server.md) (default: %(default)s)",
    )
    g.add_argument(
        "--accuracy-peak",
        type=float,
        default=DEFAULTS.accuracy_peak,
        help="oracle engine: accuracy at its best setting, temperature 0.3 and top_p 0.9 (default: %(default)s)",
    )
    g.add_argument(
        "--model",
        metavar="PATH",
        help=f"GGUF file for --engine llama (default: {DEFAULT_GGUF}; the dir is $SENTECH_MODELS_DIR when set)",
    )
    g.add_argument(
        "--n-ctx", type=int, default=DEFAULTS.n_ctx, help="context length for --engine llama (default: %(default)s)"
    )
    g.add_argument(
        "--n-threads",
        type=int,
        default=None,
        help="CPU threads for --engine llama (default: the cores idle at start, i.e. available cores minus the "
        "load average, split between --workers; see docs/local.md)",
    )
    g.add_argument(
        "--parallel",
        type=int,
        default=DEFAULTS.parallel,
        metavar="N",
        help="--engine llama: decode N requests together in one context (continuous batching; shared prompt "
        "prefixes are computed once); 1 = one at a time; clients should send N at once (default: %(default)s; "
        "docs/local.md)",
    )
    g.add_argument(
        "--datasets-dir",
        metavar="DIR",
        help=f"echo engine: answer prompts found in DIR/*.parquet with their reference (default: {DEFAULT_DATASETS_DIR})",
    )
    g.add_argument(
        "--latency-ms",
        type=float,
        default=DEFAULTS.latency_ms,
        help="echo engine: fixed delay before each answer (default: %(default)s)",
    )
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
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds fault injection and answers to requests that send no seed (default: %(default)s)",
    )
    g = p.add_argument_group("fault injection (seeded by --seed, deterministic in request order)")
    g.add_argument(
        "--error-rate",
        type=float,
        default=DEFAULTS.options.faults.error_rate,
        help="fraction of requests answered with --error-status (default: %(default)s)",
    )
    g.add_argument(
        "--error-status",
        type=int,
        choices=ERROR_STATUSES,
        default=DEFAULTS.options.faults.error_status,
        help="status of injected errors (default: %(default)s)",
    )
    g.add_argument(
        "--retry-after",
        type=float,
        default=None,
        metavar="S",
        help="Retry-After seconds sent with injected 429/503 (default: none)",
    )
    g.add_argument(
        "--drop-rate",
        type=float,
        default=DEFAULTS.options.faults.drop_rate,
        help="fraction of requests whose connection is closed unanswered (default: %(default)s)",
    )
    g.add_argument(
        "--slow-rate",
        type=float,
        default=DEFAULTS.options.faults.slow_rate,
        help="fraction of requests delayed by --slow-ms (default: %(default)s)",
    )
    g.add_argument(
        "--slow-ms",
        type=float,
        default=DEFAULTS.options.faults.slow_ms,
        help="delay of slow requests, in milliseconds (default: %(default)s)",
    )
    return p


def read_api_keys(env_var: str) -> tuple[str, ...]:
    """The comma-separated keys in ``env_var`` (empty tuple when unset or blank)."""
    return tuple(k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip())


def parse_config(argv: list[str], prog: str = "sentech-eval serve") -> ServeConfig:
    """Parse the flags into a checked ServeConfig; ConfigError (one sentence) for a bad value or combination."""
    values = vars(build_parser(prog).parse_args(argv))
    api_key_env, no_auth = values.pop("api_key_env"), values.pop("no_auth")
    keys = read_api_keys(api_key_env)
    if not keys and not no_auth:
        raise ConfigError(
            f"No API key to accept: set the environment variable {api_key_env} "
            "(comma-separated keys allowed) or pass --no-auth."
        )
    # every other flag is a field's value (--n-ctx → n_ctx …): ServeConfig.from_values puts each in its place
    return ServeConfig.from_values(values, api_keys=keys, no_auth=no_auth)


def main(argv: list[str], prog: str = "sentech-eval serve") -> int:
    """Entry point of `sentech-eval serve`."""
    return serve(parse_config(argv, prog))
