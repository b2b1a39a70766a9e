"""The local backend against the real embedded GGUF through the real llama.cpp (no mocks).

The model (SmolLM2-135M-Instruct Q4_1) is loaded once per module. Prompts carry the capitals
dataset's system message: with only the GGUF's default system prompt the 135M model's greedy
first token for the bare France question is a near tie ("L" -1.88 vs "The" -1.97 log-prob).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from llama_reference import direct_answer, load_reference
from omegaconf import OmegaConf

from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.config import LocalBackendConfig, compose_config
from sentech_eval.errors import BackendError, ConfigError
from sentech_eval.paths import default_models_dir
from sentech_eval.types import Sampling

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[local]')")

from sentech_eval.backends.local import LocalBackend, engine_settings  # noqa: E402
from sentech_eval.backends.local_worker import EngineSettings, LocalEngine  # noqa: E402

pytestmark = pytest.mark.local_model

REPO = Path(__file__).resolve().parents[2]
MODEL = default_models_dir() / EMBEDDED_MODEL.file_name
SYSTEM = "You are a helpful assistant. Answer with the name of the city only."


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


FRANCE = chat("What is the capital of France?")
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def run(coro):
    return asyncio.run(coro)


def local_cfg(**overrides):
    # One thread: llama.cpp's OpenMP threads spin at barriers and crawl on a busy shared machine.
    # parallel=1: the one-at-a-time path (continuous batching: tests/backends/test_local_batch.py).
    cfg = {"kind": "local", "model_path": str(MODEL), "n_ctx": 1024, "n_threads": 1, "parallel": 1}
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _model_present():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing; run `sentech-eval fetch-model`")


@pytest.fixture(scope="module")
def streamed():
    backend = LocalBackend.from_config(local_cfg(stream=True))
    yield backend
    run(backend.aclose())


@pytest.fixture(scope="module")
def whole():
    backend = LocalBackend.from_config(local_cfg(stream=False))
    yield backend
    run(backend.aclose())


@pytest.fixture(scope="module")
def reference_llm():
    """llama-cpp-python's own ``Llama``, loaded like the backend's (same file, n_ctx, threads)."""
    llm = load_reference(str(MODEL), n_ctx=1024, n_threads=1)
    yield llm
    llm.close()


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=0, seed=0),
        Sampling(temperature=0.8, top_p=0.9, top_k=40, seed=5),
        Sampling(temperature=0, max_tokens=4, seed=0),
    ],
    ids=["greedy", "seeded", "length"],
)
@pytest.mark.parametrize("backend", ["streamed", "whole"])
def test_answer_equals_llama_cpp_pythons_own_answer(request, reference_llm, backend, sampling):
    """Not "contains Paris" (that depends on this CPU's kernels): the exact answer llama-cpp-python gives."""
    out = run(request.getfixturevalue(backend).complete(FRANCE, sampling))
    args = {k: v for k, v in dataclasses.asdict(sampling).items() if v is not None}
    direct = direct_answer(reference_llm, FRANCE, **args)
    assert out.status == "ok", out.error
    assert out.output == direct["choices"][0]["message"]["content"]
    assert out.finish_reason == direct["choices"][0]["finish_reason"]
    usage = direct["usage"]
    assert (out.prompt_tokens, out.completion_tokens, out.total_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert request.getfixturevalue(backend).model == EMBEDDED_MODEL.file_name


def test_same_seed_same_output(streamed):
    sampling = Sampling(temperature=1.2, seed=1234, max_tokens=16)
    first = run(streamed.complete(STORY, sampling))
    second = run(streamed.complete(STORY, sampling))
    assert first.status == second.status == "ok"
    assert first.output == second.output
    assert first.completion_tokens == second.completion_tokens


def test_different_seeds_differ(streamed):
    outputs = [run(streamed.complete(STORY, Sampling(temperature=1.2, seed=s, max_tokens=12))).output for s in range(4)]
    assert len(set(outputs)) >= 3, outputs


def test_max_tokens_stops_with_length(streamed, whole):
    for backend in (streamed, whole):
        out = run(backend.complete(STORY, Sampling(temperature=0, max_tokens=5)))
        assert out.status == "ok", out.error
        assert out.completion_tokens <= 5
        assert out.finish_reason == "length"


def test_ttft_is_measured_and_below_latency(streamed, whole):
    out = run(streamed.complete(STORY, Sampling(temperature=0, max_tokens=16)))
    assert out.ttft_s is not None and out.latency_s is not None
    assert 0 < out.ttft_s < out.latency_s
    not_streamed = run(whole.complete(STORY, Sampling(temperature=0, max_tokens=16)))
    assert not_streamed.ttft_s is None and not_streamed.latency_s > 0


@pytest.mark.parametrize(
    ("messages", "sampling"),
    [
        (FRANCE, Sampling(temperature=0)),  # ends on the end-of-turn token: finish "stop"
        (STORY, Sampling(temperature=0, max_tokens=12)),  # cut by max_tokens: finish "length"
        (STORY, Sampling(temperature=0.9, top_p=0.95, top_k=50, seed=7, max_tokens=40)),
        (
            chat("Quelle est la capitale de l'Allemagne ? Réponds en français, avec des accents."),
            Sampling(temperature=0.7, seed=3, max_tokens=30),
        ),
    ],
)
def test_streamed_token_counts_equal_the_models_usage(streamed, whole, messages, sampling):
    a = run(streamed.complete(messages, sampling))
    b = run(whole.complete(messages, sampling))  # the non-streamed call: llama-cpp-python's own usage
    assert a.status == b.status == "ok"
    assert a.output == b.output
    assert a.finish_reason == b.finish_reason
    assert (a.prompt_tokens, a.completion_tokens, a.total_tokens) == (
        b.prompt_tokens,
        b.completion_tokens,
        b.total_tokens,
    )
    assert a.prompt_tokens > 0 and a.completion_tokens > 0


def test_every_sampling_parameter_is_applied(streamed):
    """top_k=1 is greedy whatever the temperature, so it must reach the sampler."""
    greedy = run(streamed.complete(STORY, Sampling(temperature=0, max_tokens=20))).output
    top1 = [
        run(streamed.complete(STORY, Sampling(temperature=1.5, top_k=1, seed=s, max_tokens=20))).output for s in (1, 2)
    ]
    assert top1 == [greedy, greedy]
    penalised = run(
        streamed.complete(STORY, Sampling(temperature=0, presence_penalty=2.0, frequency_penalty=2.0, max_tokens=20))
    )
    assert penalised.output != greedy


def test_scripted_clock_skips_the_role_only_chunk():
    ticks = itertools.count()
    engine = LocalEngine(
        EngineSettings(model_path=str(MODEL), n_ctx=512, n_threads=1, repack=False), clock=lambda: float(next(ticks))
    )
    try:
        out = engine.generate(FRANCE, {"temperature": 0, "max_tokens": 4})
    finally:
        engine.close()
    # clock: 0 at start, 1 at the role-only chunk, 2 at the first content chunk, ... , then the end.
    assert out.ttft_s == 2.0
    assert out.latency_s == out.completion_tokens + 3  # role chunk + one per token + final chunk + end


def test_prompt_cache_is_cleared_unless_reuse_is_asked():
    for reuse, expect_cached in ((False, False), (True, True)):
        engine = LocalEngine(
            EngineSettings(model_path=str(MODEL), n_ctx=512, n_threads=1, repack=False, reuse_prompt_cache=reuse)
        )
        try:
            first = engine.generate(FRANCE, {"temperature": 0})
            second = engine.generate(FRANCE, {"temperature": 0})
            assert first.output == second.output
            assert (engine.llm.last_cached_tokens > 0) is expect_cached
        finally:
            engine.close()


def test_generation_failure_is_an_error_row():
    backend = LocalBackend.from_config(local_cfg(n_ctx=100))  # rounded up to 256, as llama.cpp does
    try:
        assert backend.metadata()["n_ctx"] == 256
        out = run(backend.complete(chat("word " * 300), Sampling(temperature=0)))
    finally:
        run(backend.aclose())
    assert out.status == "error"
    assert "context window" in out.error
    assert run(backend.complete(FRANCE, Sampling(temperature=0))).status == "error"  # closed: still no raise


def test_metadata_names_the_gguf(streamed):
    meta = streamed.metadata()
    assert meta["architecture"] == "llama"
    assert meta["quantization"] == "Q4_1"
    assert meta["model_file"] == EMBEDDED_MODEL.file_name
    assert meta["llama_cpp_python_version"]
    assert meta["workers"] == 1 and meta["reuse_prompt_cache"] is False


def test_two_worker_processes_give_the_same_outputs(streamed):
    prompts = [FRANCE, chat("What is the capital of Italy?"), chat("What is the capital of Japan?"), STORY]
    sampling = Sampling(temperature=0, max_tokens=24)
    one = [run(streamed.complete(p, sampling)) for p in prompts]
    pool = LocalBackend.from_config(local_cfg(workers=2))

    async def all_at_once():
        return await asyncio.gather(*(pool.complete(p, sampling) for p in prompts))

    try:
        two = run(all_at_once())
        assert pool.metadata()["workers"] == 2 and pool.metadata()["n_threads"] >= 1
    finally:
        run(pool.aclose())
    assert [c.status for c in two] == ["ok"] * len(prompts)
    assert [c.output for c in two] == [c.output for c in one]
    assert [(c.prompt_tokens, c.completion_tokens) for c in two] == [
        (c.prompt_tokens, c.completion_tokens) for c in one
    ]
    assert all(c.ttft_s is not None and c.ttft_s < c.latency_s for c in two)


# --- set-up errors: one sentence naming the file and the fix
def test_missing_embedded_model_names_path_and_fetch_command(tmp_path):
    missing = tmp_path / EMBEDDED_MODEL.file_name
    with pytest.raises(BackendError) as err:
        LocalBackend.from_config(local_cfg(model_path=str(missing)))
    assert str(missing) in str(err.value)
    assert "sentech-eval fetch-model" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_llama31_8b_names_path_and_download(tmp_path):
    cfg = compose_config(["backend=llama31_8b"]).backend
    cfg.model_path = str(tmp_path / "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    with pytest.raises(BackendError) as err:
        LocalBackend.from_config(cfg)
    message = str(err.value)
    assert cfg.model_path in message
    assert "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF" in message and "huggingface-cli download" in message
    assert "\n" not in message


def test_download_without_huggingface_hub_says_how(tmp_path):
    import importlib.util

    if importlib.util.find_spec("huggingface_hub") is not None:
        pytest.skip("huggingface_hub is installed: download=true would go to the network")
    cfg = local_cfg(model_path=str(tmp_path / "m.gguf"), download=True, hf_repo="org/repo", hf_file="m.gguf")
    with pytest.raises(BackendError, match="pip install huggingface_hub"):
        LocalBackend.from_config(cfg)
    with pytest.raises(ConfigError, match="hf_repo"):
        LocalBackend.from_config(local_cfg(model_path=str(tmp_path / "m.gguf"), download=True))


def test_shipped_configs_point_at_the_models_dir():
    local = compose_config(["backend=local"]).backend
    assert Path(local.model_path) == MODEL
    assert local.kind == "local" and local.workers == 1 and local.reuse_prompt_cache is False
    assert local.n_ctx == LocalBackendConfig.n_ctx  # the schema's default: conf/backend/local.yaml does not repeat it
    assert compose_config(["backend=llama31_8b"]).backend.n_ctx == 4096


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="backend.workers"):
        LocalBackend.from_config(local_cfg(workers=0))
    with pytest.raises(ConfigError, match="backend.repack"):
        LocalBackend.from_config(local_cfg(repack="sometimes"))
    with pytest.raises(ConfigError, match="backend.model_path"):
        LocalBackend.from_config({"kind": "local", "model_path": None})


def test_not_a_gguf_is_a_backend_error(tmp_path):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(BackendError, match="could not load"):
        LocalBackend.from_config(local_cfg(model_path=str(bogus)))


def test_missing_llama_cpp_gives_the_install_hint():
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from sentech_eval.backends.local import LocalBackend\n"
        "from sentech_eval.errors import BackendError\n"
        f"try:\n    LocalBackend.from_config({{'kind': 'local', 'model_path': {str(MODEL)!r}}})\n"
        "except BackendError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "llama-cpp-python" in out.stdout and "pip install" in out.stdout, out.stdout + out.stderr


def test_sentech_eval_run_on_the_local_backend(tmp_path, reference_llm):
    """`sentech-eval run backend=local dataset.path=X.parquet sampling.temperature=0` answers what
    llama-cpp-python answers to the same messages on this machine."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    capitals = pq.read_table(REPO / "datasets" / "capitals.parquet")
    france = capitals.filter(pc.equal(capitals.column("country"), "France"))
    dataset = tmp_path / "france.parquet"
    pq.write_table(france, dataset)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "sentech_eval.cli",
        "run",
        "backend=local",
        "backend.n_threads=1",
        "backend.n_ctx=1024",
        f"dataset.path={dataset}",
        "sampling.temperature=0",
        "runner.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = pq.read_table(run_dir / "results.parquet").to_pylist()[0]
    assert row["backend"] == "local" and row["model"] == EMBEDDED_MODEL.file_name
    row0 = france.to_pylist()[0]
    messages = [{"role": "system", "content": row0["system"]}, {"role": "user", "content": row0["prompt"]}]
    direct = direct_answer(reference_llm, messages, temperature=0, top_p=0.9, top_k=40, seed=0, max_tokens=256)
    assert row["status"] == "ok" and row["output"] == direct["choices"][0]["message"]["content"]
    assert row["completion_tokens"] == direct["usage"]["completion_tokens"]
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert 0 < row["ttft_s"] < row["latency_s"]
    meta = json.loads(pq.read_schema(run_dir / "results.parquet").metadata[b"sentech_eval"])
    assert meta["backend"]["architecture"] == "llama" and meta["backend"]["quantization"] == "Q4_1"


@pytest.mark.parametrize(
    "cores,load,workers,expected",
    [
        (2, 0.1, 1, 2),  # quiet: every core
        (2, 1.6, 1, 1),  # one core busy elsewhere: a second thread would spin-wait for it
        (2, 9.0, 1, 1),  # overloaded: still one thread
        (8, 2.2, 2, 3),  # 6 idle cores shared by 2 workers
        (4, 0.0, 8, 1),  # more workers than cores: at least one thread each
    ],
)
def test_default_threads_count_the_idle_cores(monkeypatch, cores, load, workers, expected):
    from sentech_eval.backends import local

    monkeypatch.setattr(local, "available_cores", lambda: cores)
    monkeypatch.setattr(local.os, "getloadavg", lambda: (load, load, load))
    n, reason = local.default_n_threads(workers)
    assert n == expected
    assert f"{cores} cores" in reason and f"load average {load:.2f}" in reason


def test_cpu_dependent_choices_are_recorded_in_metadata(streamed):
    meta = streamed.metadata()
    assert meta["n_threads"] == 1 and meta["n_threads_reason"] == "backend.n_threads"
    assert isinstance(meta["cpu_amx"], bool)
    assert meta["repack"] is (not meta["cpu_amx"]) and meta["repack_reason"].startswith("auto:")
    auto = engine_settings(OmegaConf.create(local_cfg(n_threads=None)), workers=1)
    assert auto.n_threads >= 1 and auto.n_threads_reason.startswith("auto:")
