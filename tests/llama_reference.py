"""llama-cpp-python's own answer, the reference for tests of the local backend and the llama server.

A small model's greedy answer depends on the CPU's kernels (AVX2, AVX-512, AMX) whenever two
tokens are close, so tests never assert the text; they assert that our path gives exactly what
``Llama.create_chat_completion`` gives for the same call on the same machine.
"""

from __future__ import annotations

from typing import Any

# Every llama.cpp sampling knob the project fixes (see backends/local_worker.FIXED_SAMPLING), written
# out here so that a change there shows up as a difference from this reference.
FIXED = {"min_p": 0.0, "repeat_penalty": 1.0, "typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0}


def load_reference(model_path: str, *, n_ctx: int, n_threads: int) -> Any:
    """A ``Llama`` on ``model_path`` loaded as the project loads it (same repack choice for this CPU)."""
    from sentech_eval.backends.local_worker import EngineSettings, cpu_has_amx, load_llama

    return load_llama(
        EngineSettings(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, repack=not cpu_has_amx())
    )


def direct_answer(
    llm: Any,
    messages: list[dict[str, str]],
    *,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
    top_k: int = 0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    max_tokens: int = 256,
) -> dict[str, Any]:
    """``create_chat_completion`` (not streamed) from a clean KV cache, every sampling value explicit."""
    llm.reset()
    return llm.create_chat_completion(
        messages=messages,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        max_tokens=max_tokens,
        seed=seed,
        **FIXED,
    )
