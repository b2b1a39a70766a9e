"""The remote backend against a real OpenAI-compatible server: llama-cpp-python's own
``python -m llama_cpp.server`` serving the embedded GGUF on a loopback port (no imitation).

One server for the module (the model loads once). Every run is the real `sentech-eval run`
CLI with ``backend=remote``; the assertions are properties (token counts equal to the server's
own JSON usage for the same request, the streaming identity, open-loop columns, goodput), never
the model's words. llama_cpp.server differs from the Sentech contract in ways this module pins:
it ignores ``stream_options.include_usage`` (no usage chunk: counts come from the chunks), wraps
its validation errors as HTTP 500 with a Python repr and a stack frame, and answers a bad key
with FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, run_cli

from sentech_eval.backends.remote_answers import error_message
from sentech_eval.paths import embedded_model_path

pytest.importorskip(
    "llama_cpp.server.app", reason="llama_cpp.server needs the test extra (pip install -e '.[local,test]')"
)

pytestmark = pytest.mark.local_model

MODEL = embedded_model_path()
NAME = "smollm2-135m"  # the server answers with the model name it was asked for
LIMIT = 3  # capitals rows per run
MAX_TOKENS = 8
STARTUP_S = 180.0
# What every run shares: greedy decoding, short answers, the capitals system message.
COMMON = (
    "backend=remote",
    f"backend.model={NAME}",
    "dataset=capitals",
    f"dataset.limit={LIMIT}",
    "sampling.temperature=0",
    f"sampling.max_tokens={MAX_TOKENS}",
    "scorers=[contains]",
    "runner.progress=false",
    "runner.concurrency=1",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, key: str = TEST_KEY) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


# llama_cpp.server has no flag for llama.cpp's extra buffer types (weight repacking, AMX kernels), whose
# AMX path dies with a general-protection fault under some hypervisors (docs/local.md, "AMX CPUs"): on such
# CPUs the server is started with them off, as the project's own loader does (backend.repack=auto).
WITHOUT_EXTRA_BUFTS = """
import runpy
import llama_cpp.llama_cpp as c
default_params = c.llama_model_default_params
def without_extra_bufts():
    params = default_params()
    params.use_extra_bufts = False
    return params
c.llama_model_default_params = without_extra_bufts
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def server_command() -> list[str]:
    """``python -m llama_cpp.server``, or the same with repacking off on a CPU with AMX."""
    from sentech_eval.backends.local_worker import cpu_has_amx

    if cpu_has_amx():
        return [sys.executable, "-c", WITHOUT_EXTRA_BUFTS]
    return [sys.executable, "-m", "llama_cpp.server"]


@contextmanager
def llama_server(*flags: str) -> Iterator[str]:
    """`python -m llama_cpp.server` on the embedded GGUF (one thread, key TEST_KEY); yields its /v1 URL.

    One thread for prompt and generation: llama.cpp's OpenMP threads spin at barriers and crawl on a
    busy 2-core machine (the server's default batch threads made each request 10× slower here).
    """
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [
            *server_command(),
            "--model",
            str(MODEL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--api_key",
            TEST_KEY,
            "--verbose",
            "false",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:  # ready when /v1/models answers 200 (the model is loaded before uvicorn listens)
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with code {proc.returncode} before listening")
            try:
                if _get(f"{base_url}/models") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {STARTUP_S:g} s")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The server as docs/load.md runs it for a benchmark: requests queue rather than interrupt each other."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing; run `sentech-eval fetch-model`")
    with llama_server("--interrupt_requests", "false") as base_url:
        yield base_url


def capitals_messages() -> dict[str, list[dict]]:
    """prompt id -> the chat messages the run sends (the shipped capitals file: system + user)."""
    from sentech_eval.paths import datasets_dir

    table = pd.read_parquet(datasets_dir() / "capitals.parquet").head(LIMIT)
    return {
        row.id: [{"role": "system", "content": row.system}, {"role": "user", "content": row.prompt}]
        for row in table.itertuples()
    }


def direct_usage(base_url: str, messages: list[dict], **fields) -> dict:
    """The server's own JSON answer to one non-streamed request (its ``usage`` and content)."""
    body = {"model": NAME, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS, **fields}
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def run_remote(base_url: str, out, *args: str):
    proc = run_cli(
        "run", *COMMON, f"backend.base_url={base_url}", f"hydra.run.dir={out}", *args, env={"SENTECH_API_KEY": TEST_KEY}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    from sentech_eval import load_results

    return load_results(out), proc.stderr


@pytest.fixture(scope="module")
def whole(server, tmp_path_factory):
    return run_remote(server, tmp_path_factory.mktemp("whole") / "run")[0]


@pytest.fixture(scope="module")
def streamed(server, tmp_path_factory):
    return run_remote(server, tmp_path_factory.mktemp("streamed") / "run", "backend.stream=true")


def test_non_streamed_rows_carry_the_servers_own_usage(server, whole):
    assert len(whole) == LIMIT and set(whole["status"]) == {"ok"}
    assert set(whole["response_model"]) == {NAME}
    assert set(whole["usage_source"]) == {"server"}
    messages = capitals_messages()
    for row in whole.itertuples():
        answer = direct_usage(server, messages[row.prompt_id])
        usage = answer["usage"]
        assert row.prompt_tokens == usage["prompt_tokens"]  # the same prompt, tokenised by the same server
        assert row.total_tokens == row.prompt_tokens + row.completion_tokens
        if row.output == answer["choices"][0]["message"]["content"]:  # greedy: the same answer, the same count
            assert row.completion_tokens == usage["completion_tokens"]
        assert 1 <= row.completion_tokens <= MAX_TOKENS


def test_streamed_rows_have_token_timings_and_count_chunks_as_tokens(whole, streamed):
    streamed, stderr = streamed
    assert "no prompt count from the server" in stderr  # not "0 prompt" tokens
    assert len(streamed) == LIMIT and set(streamed["status"]) == {"ok"}
    # llama_cpp.server ignores stream_options.include_usage (its streams carry no usage at all), so the
    # client counts one content chunk as one token and says so; the prompt count stays unknown.
    assert set(streamed["usage_source"]) == {"chunks"}
    assert streamed["prompt_tokens"].isna().all()
    by_prompt = whole.set_index("prompt_id")
    for row in streamed.itertuples():
        assert 0 < row.ttft_s <= row.latency_s
        gaps = list(row.itl_s)
        assert len(gaps) == row.completion_tokens - 1 and all(g >= 0 for g in gaps)
        # latency − ttft = sum(itl) + the tail after the last content chunk: the finish chunk and [DONE].
        # Measured here: 2-3 ms after a max_tokens cut ("length"); after a "stop" one more decode step
        # (the end-of-turn token, no content) of about one inter-token gap (20-30 ms).
        tail = row.latency_s - row.ttft_s - sum(gaps)
        step = 2 * max(gaps, default=row.ttft_s) if row.finish_reason == "stop" else 0.0
        assert -1e-6 <= tail <= 0.15 + step, (row.finish_reason, row.latency_s, row.ttft_s, gaps)
        if row.completion_tokens > 1:
            assert row.tpot_s == pytest.approx((row.latency_s - row.ttft_s) / (row.completion_tokens - 1))
        same = by_prompt.loc[row.prompt_id]
        if row.output == same["output"]:  # one chunk per token: the chunk count is the server's own count
            assert row.completion_tokens == same["completion_tokens"]


def test_open_loop_run_and_goodput_report(server, tmp_path):
    out = tmp_path / "open"
    df, _ = run_remote(
        server,
        out,
        "backend.stream=true",
        "runner.arrival=poisson",
        "runner.rate=4",
        "runner.arrival_seed=7",
        "runner.concurrency=4",
    )
    assert len(df) == LIMIT and set(df["status"]) == {"ok"} and set(df["arrival"]) == {"poisson"}
    scheduled = df["scheduled_s"].sort_values().to_numpy()
    assert scheduled[0] == 0 and (scheduled[1:] > 0).all()
    assert (df["send_lag_s"] >= 0).all() and (df["e2e_from_schedule_s"] >= df["latency_s"] - 1e-6).all()
    proc = run_cli("report", str(out), "slo.ttft_s=30", "slo.score=contains")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    load = pd.read_parquet(out / "load.parquet")
    assert len(load) == 1
    row = load.iloc[0]
    assert row["slo_attainment"] == pytest.approx(1.0)  # 30 s: every request within the TTFT limit
    assert row["goodput_rps"] > 0 and row["goodput_rps"] == pytest.approx(row["throughput_rps"])
    assert 0 <= row["quality_goodput_rps"] <= row["goodput_rps"]
    assert row["ttft_s_p50"] <= row["ttft_s_p99"]
    assert "goodput_rps" in proc.stdout


def test_server_errors_become_one_sentence_rows(server, tmp_path):
    # A wrong key: FastAPI's {"detail": "Invalid API key"} with 401; the run stops with one sentence.
    proc = run_cli(
        "run",
        *COMMON,
        f"backend.base_url={server}",
        f"hydra.run.dir={tmp_path / 'key'}",
        env={"SENTECH_API_KEY": "wrong-key-123"},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Invalid API key" in proc.stderr
    # A wrong base URL (no /v1): FastAPI's 404 {"detail": "Not Found"}, with where to look.
    proc = run_cli(
        "run",
        *COMMON,
        f"backend.base_url={server.removesuffix('/v1')}",
        "dataset.limit=1",
        f"hydra.run.dir={tmp_path / 'url'}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert "Traceback" not in proc.stderr and "HTTP 404" in proc.stderr and "ends in /v1" in proc.stderr
    # A value the server's schema refuses (our config refuses top_p > 1 before sending, so it is posted
    # here directly): llama_cpp.server answers HTTP 500 with a pydantic repr and a stack frame; the
    # error text keeps the field and the reason, on one line.
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "top_p": 9}
    request = urllib.request.Request(
        f"{server}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    raw = refused.value.read()
    assert b"File " in raw  # what the server sent: a stack frame in the message
    message = error_message(refused.value.code, raw)
    assert message == f"HTTP {refused.value.code}: body.top_p: Input should be less than or equal to 1"


def test_an_answer_the_server_interrupts_is_an_error_not_a_short_answer(tmp_path):
    """llama_cpp.server's default (--interrupt_requests true) ends a streamed answer with [DONE] and no
    finish_reason as soon as another request waits: such a row must not pass as a (short) answer."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing; run `sentech-eval fetch-model`")
    with llama_server() as base_url:
        proc = run_cli(
            "run",
            *COMMON,
            f"backend.base_url={base_url}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "backend.stream=true",
            "runner.concurrency=3",
            "runner.max_retries=0",
            env={"SENTECH_API_KEY": TEST_KEY},
        )
    assert "Traceback" not in proc.stderr
    from sentech_eval import load_results

    df = load_results(tmp_path / "run")
    assert len(df) == LIMIT
    ok, cut = df[df["status"] == "ok"], df[df["status"] == "error"]
    assert ok["finish_reason"].notna().all()
    assert len(cut) >= 1  # three requests at once: the first two are cut when the next one queues
    assert cut["error"].str.contains("without a finish_reason").all() and "--interrupt_requests false" in proc.stderr
