"""The response cache with the local backend: the real embedded GGUF through the real llama.cpp.

A second run answers every row from the cache with the first run's exact outputs, and the key
carries the GGUF file's sha256, the llama-cpp-python version and the load settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cache_support import run_in_process

from sentech_eval import load_results
from sentech_eval.backends.model_files import EMBEDDED_MODEL
from sentech_eval.engine.results import read_metadata
from sentech_eval.paths import default_models_dir

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[local]')")
pytestmark = pytest.mark.local_model

MODEL = default_models_dir() / EMBEDDED_MODEL.file_name
REPO = Path(__file__).resolve().parents[2]


def test_a_local_run_is_answered_from_the_cache_the_second_time(tmp_path):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing; run `sentech-eval fetch-model`")
    overrides = [
        "backend=local",
        f"backend.model_path={MODEL}",
        "backend.n_ctx=512",
        "backend.n_threads=1",
        f"dataset.path={REPO / 'datasets' / 'capitals.parquet'}",
        "dataset.limit=3",
        "sampling.max_tokens=8",
        "runner.cache=on",
        f"runner.cache_dir={tmp_path / 'c'}",
        "runner.progress=false",
    ]
    first, _ = run_in_process(tmp_path / "a", overrides)
    second, err = run_in_process(tmp_path / "b", overrides)
    assert first["cached"] == 0 and second["cached"] == 3 and "measured no latency" in err
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert (a["status"] == "ok").all() and b["cached"].all()
    assert a.set_index("prompt_id")["output"].to_dict() == b.set_index("prompt_id")["output"].to_dict()
    context = read_metadata(tmp_path / "b" / "results.parquet")["cache"]["context"]
    assert context["gguf_sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert context["backend"] == "local" and context["n_ctx"] == 512 and context["llama_cpp_python"]
    assert "model_path" not in context
    # another load setting is another key: nothing is served
    third, _ = run_in_process(
        tmp_path / "c2", [o if o != "backend.n_ctx=512" else "backend.n_ctx=768" for o in overrides]
    )
    assert third["cached"] == 0
