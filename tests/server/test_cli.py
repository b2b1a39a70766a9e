"""`sentech-eval serve` as a real subprocess: start-up line, refusal without a key, flag errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli
from server_helpers import SEED_CURL_DATA, post

from sentech_eval.commands.serve import build_parser, parse_config
from sentech_eval.server.testing import make_config, running_server, serve_args

SCRIPT = Path(sys.executable).parent / "sentech-eval"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sentech_eval.cli"]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sentech-eval serve ARGS…` in a process of its own (a refusal that failed to refuse would serve forever:
    the process's timeout ends the test)."""
    return run_cli("serve", *args, env=env, timeout=60)


def test_console_script_serves_the_seed_curl_example():
    env = {k: v for k, v in os.environ.items() if k != "SENTECH_API_KEY"}
    env["SENTECH_API_KEY"] = "cli-key"
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--engine", "echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"sentech-eval serve: listening on (http://127\.0\.0\.1:(\d+)/v1) \(engine echo\)\n", line)
        assert match, line
        assert int(match.group(2)) > 0
        reply = post(match.group(1), raw=SEED_CURL_DATA.encode(), key="cli-key")
        assert reply.status == 200
        assert reply.json()["object"] == "chat.completion"
        assert post(match.group(1), raw=SEED_CURL_DATA.encode(), key="nope").status == 401
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_refuses_to_start_without_a_key():
    result = serve("--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SENTECH_API_KEY" in lines[0] and "--no-auth" in lines[0]
    assert result.stdout == ""


def test_custom_key_variable_is_named_in_the_refusal():
    result = serve("--port", "0", "--api-key-env", "MY_SERVER_KEYS", env={"MY_SERVER_KEYS": " , "})
    assert result.returncode == 2
    assert "MY_SERVER_KEYS" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--error-rate", "1.5"], "--error-rate must be between 0 and 1"),
        (["--drop-rate", "-0.1"], "--drop-rate must be between 0 and 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--tokens-per-s", "0"], "--tokens-per-s must be > 0"),
    ],
)
def test_bad_flags_are_one_sentence(args, needle):
    result = serve("--no-auth", "--port", "0", *args)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_model_file_is_one_sentence(tmp_path):
    missing = tmp_path / "nowhere.gguf"
    result = serve("--no-auth", "--port", "0", "--engine", "llama", "--model", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr and "sentech-eval fetch-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag():
    text = build_parser("sentech-eval serve").format_help()
    for flag in [
        "--host",
        "--port",
        "--engine",
        "--model",
        "--api-key-env",
        "--no-auth",
        "--latency-ms",
        "--tokens-per-s",
        "--seed",
        "--error-rate",
        "--error-status",
        "--retry-after",
        "--drop-rate",
        "--slow-rate",
        "--slow-ms",
        "--max-body-bytes",
        "--workers",
    ]:
        assert flag in text
    for action in build_parser("x")._actions:
        assert action.help, action.option_strings


OPTION_SETS = [
    {},
    {
        "latency_ms": 2.5,
        "tokens_per_s": 40,
        "ttft_ms": 3,
        "capacity": 2,
        "output_tokens": 7,
        "seed": 9,
        "stream_usage": "never",
        "max_body_bytes": 4096,
        "datasets_dir": "datasets",
    },
    {
        "error_rate": 0.25,
        "error_status": 429,
        "retry_after": 0.5,
        "drop_rate": 0.1,
        "slow_rate": 0.2,
        "slow_ms": 4,
        "seed": 3,
        "workers": 2,
    },
    {"model": "/m/x.gguf", "n_ctx": 512, "n_threads": 1},
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_test_servers_get_the_config_the_cli_builds(options):
    """make_config (no flag parsing) builds the ServeConfig `serve` builds from the same flags."""
    engine = "llama" if "model" in options else "echo"
    assert make_config(engine, None, **options) == parse_config(serve_args(engine, options) + ["--no-auth"])


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"capacity": 0}, "--capacity must be >= 1"),
        ({"error_rate": 2}, "--error-rate must be between 0 and 1"),
        ({"stream_usage": "sometimes"}, "--stream-usage must be one of"),
        ({"workers": 0}, "--workers must be >= 1"),
    ],
)
def test_a_config_built_without_flags_is_checked_as_the_cli_checks_it(options, needle):
    from sentech_eval.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        make_config("echo", **options)


def test_running_server_subprocess_mode():
    with running_server(api_key="sub", subprocess=True, latency_ms=1) as url:
        assert post(url, raw=SEED_CURL_DATA.encode(), key="sub").status == 200


def test_workers_share_one_port_and_stop_together():
    import asyncio

    import aiohttp

    async def burst(url):
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer w"}) as session:

            async def one(i):
                body = {"messages": [{"role": "user", "content": f"request {i}"}], "temperature": 0}
                async with session.post(url + "/chat/completions", json=body) as resp:
                    return resp.status, (await resp.json())["choices"][0]["message"]["content"]

            return await asyncio.gather(*[one(i) for i in range(200)])

    with running_server(api_key="w", workers=2) as url:
        results = asyncio.run(burst(url))
    assert all(status == 200 for status, _ in results)
    assert [content for _, content in results] == [f"request {i}" for i in range(200)]
