"""The response cache: the key (engine/cache_keys.py, one test per key field), what is and is not cached
(engine/cache.py), the SQLite file shared by several processes and a damaged file (engine/cache_store.py)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from sentech_eval.backends.remote import RemoteBackend
from sentech_eval.engine.cache import RunCache, open_run_cache
from sentech_eval.engine.cache_keys import backend_context, key_of, messages_sha256
from sentech_eval.engine.cache_store import ResponseStore, cache_path
from sentech_eval.errors import CacheError
from sentech_eval.types import Completion, Prompt, Sampling

MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"})
SAMPLING = Sampling(
    temperature=0.7, top_p=0.9, top_k=40, frequency_penalty=0.0, presence_penalty=0.0, max_tokens=64, seed=3
)
REMOTE = {"backend": "remote", "base_url": "http://127.0.0.1:9/v1", "model": "m-1", "stream": False, "seed_sent": True}
LOCAL = {
    "backend": "local",
    "model": "tiny.gguf",
    "gguf_sha256": "a" * 64,
    "llama_cpp_python": "0.3.36",
    "n_ctx": 2048,
    "chat_format": None,
    "n_gpu_layers": 0,
    "stream": True,
    "seed_sent": True,
}


def ok(output: str = "4") -> Completion:
    return Completion(
        output=output,
        finish_reason="stop",
        prompt_tokens=9,
        completion_tokens=1,
        total_tokens=10,
        latency_s=0.125,
        ttft_s=None,
        http_status=200,
    )


def run_cache(tmp_path: Path, context: dict, mode: str = "on", run_id: str = "run-a", **kw) -> RunCache:
    return RunCache(ResponseStore(cache_path(tmp_path)), mode, context, run_id=run_id, dataset="d", **kw)


def write_one(
    tmp_path: Path,
    context: dict,
    messages=MESSAGES,
    sampling=SAMPLING,
    repeat: int = 0,
    completion: Completion | None = None,
) -> None:
    cache = run_cache(tmp_path, context)
    lookup = cache.lookup(Prompt("p1", messages), repeat, sampling)
    assert lookup is not None and lookup.answer is None
    cache.remember(lookup, completion or ok(), 1_700_000_000.5, "p1", repeat)
    cache.close()


def find(tmp_path: Path, context: dict, messages=MESSAGES, sampling=SAMPLING, repeat: int = 0, **kw):
    cache = run_cache(tmp_path, context, run_id="run-b", **kw)
    try:
        return cache.lookup(Prompt("p1", messages), repeat, sampling).answer
    finally:
        cache.close()


# ------------------------------------------------------------------ a hit, and one miss per key field
def test_the_same_request_hits_with_the_original_answer_and_measurements(tmp_path):
    write_one(tmp_path, REMOTE)
    answer = find(tmp_path, REMOTE)
    assert answer is not None
    assert (
        answer.output,
        answer.finish_reason,
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.total_tokens,
        answer.latency_s,
        answer.http_status,
    ) == ("4", "stop", 9, 1, 10, 0.125, 200)
    assert answer.run_id == "run-a" and answer.started_at == 1_700_000_000.5


BACKEND_FIELD_CHANGES = {
    "backend kind": ("backend", "other"),
    "base_url": ("base_url", "http://127.0.0.1:10/v1"),
    "model": ("model", "m-2"),
    "stream": ("stream", True),
    "seed sent or not": ("seed_sent", False),
}
LOCAL_FIELD_CHANGES = {
    "GGUF sha256": ("gguf_sha256", "b" * 64),
    "llama.cpp version": ("llama_cpp_python", "0.3.37"),
    "n_ctx": ("n_ctx", 4096),
    "chat format": ("chat_format", "chatml"),
    "GPU layers": ("n_gpu_layers", -1),
}


@pytest.mark.parametrize("field, value", BACKEND_FIELD_CHANGES.values(), ids=BACKEND_FIELD_CHANGES.keys())
def test_changing_a_backend_field_misses(tmp_path, field, value):
    write_one(tmp_path, REMOTE)
    assert find(tmp_path, {**REMOTE, field: value}) is None
    assert find(tmp_path, REMOTE) is not None


@pytest.mark.parametrize("field, value", LOCAL_FIELD_CHANGES.values(), ids=LOCAL_FIELD_CHANGES.keys())
def test_changing_a_local_model_field_misses(tmp_path, field, value):
    write_one(tmp_path, LOCAL)
    assert find(tmp_path, {**LOCAL, field: value}) is None
    assert find(tmp_path, LOCAL) is not None


SAMPLING_CHANGES = {
    "temperature": {"temperature": 0.8},
    "top_p": {"top_p": 1.0},
    "top_k": {"top_k": 41},
    "top_k not sent": {"top_k": None},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "presence_penalty": {"presence_penalty": -0.5},
    "max_tokens": {"max_tokens": 65},
    "seed": {"seed": 4},
}


@pytest.mark.parametrize("change", SAMPLING_CHANGES.values(), ids=SAMPLING_CHANGES.keys())
def test_changing_a_sampling_field_misses(tmp_path, change):
    write_one(tmp_path, REMOTE)
    changed = Sampling(**{**{f: getattr(SAMPLING, f) for f in SAMPLING.__slots__}, **change})
    assert find(tmp_path, REMOTE, sampling=changed) is None
    assert find(tmp_path, REMOTE) is not None


MESSAGE_CHANGES = {
    "user text": (MESSAGES[0], {"role": "user", "content": "What is 2 + 3?"}),
    "system text": ({"role": "system", "content": "Be very brief."}, MESSAGES[1]),
    "no system message": (MESSAGES[1],),
    "role": ({"role": "user", "content": "Be brief."}, MESSAGES[1]),
    "one more turn": (*MESSAGES, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"}),
}


@pytest.mark.parametrize("messages", MESSAGE_CHANGES.values(), ids=MESSAGE_CHANGES.keys())
def test_changing_the_messages_misses(tmp_path, messages):
    write_one(tmp_path, REMOTE)
    assert find(tmp_path, REMOTE, messages=messages) is None


def test_the_gguf_file_content_is_part_of_the_key(tmp_path):
    """A local backend's model path is replaced by the file's sha256: other bytes, same name -> miss."""

    class Identity:  # what LocalBackend.cache_identity() returns, without loading a model
        def __init__(self, path):
            self.path = path

        def cache_identity(self):
            return {**{k: v for k, v in LOCAL.items() if k != "gguf_sha256"}, "model_path": str(self.path)}

    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    store = ResponseStore(cache_path(tmp_path / "c"))
    first = backend_context(Identity(model), store.file_sha256)
    assert "model_path" not in first and len(first["gguf_sha256"]) == 64
    model.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(model, ns=(1, 1))  # a new mtime: the remembered hash is not reused
    second = backend_context(Identity(model), store.file_sha256)
    assert second["gguf_sha256"] != first["gguf_sha256"]
    digest = messages_sha256(MESSAGES)
    assert key_of(first, digest) != key_of(second, digest)
    store.close()


def test_temperature_one_and_one_point_zero_are_one_key(tmp_path):
    write_one(tmp_path, REMOTE, sampling=Sampling(temperature=1, seed=0))
    assert find(tmp_path, REMOTE, sampling=Sampling(temperature=1.0, seed=0)) is not None


# ------------------------------------------------------------------ what is (not) written or served
def test_errors_are_never_written(tmp_path):
    cache = run_cache(tmp_path, REMOTE)
    lookup = cache.lookup(Prompt("p1", MESSAGES), 0, SAMPLING)
    cache.remember(lookup, Completion(status="error", http_status=500, error="HTTP 500: boom"), 1.0, "p1", 0)
    cache.close()
    assert cache.written == 0
    assert find(tmp_path, REMOTE) is None


def test_repeats_with_their_own_seeds_hit_per_repeat(tmp_path):
    cache = run_cache(tmp_path, REMOTE)
    for repeat in range(3):
        sampling = SAMPLING.with_seed(SAMPLING.seed + repeat)
        cache.remember(
            cache.lookup(Prompt("p1", MESSAGES), repeat, sampling), ok(f"answer {repeat}"), 1.0, "p1", repeat
        )
    cache.close()
    for repeat in range(3):
        answer = find(tmp_path, REMOTE, sampling=SAMPLING.with_seed(SAMPLING.seed + repeat), repeat=repeat)
        assert answer.output == f"answer {repeat}"
    assert find(tmp_path, REMOTE, sampling=SAMPLING.with_seed(SAMPLING.seed + 3), repeat=3) is None


def test_a_seedless_request_at_temperature_above_zero_is_not_served_unless_allowed(tmp_path):
    unseeded = SAMPLING.with_seed(None)
    write_one(tmp_path, REMOTE, sampling=unseeded)
    assert find(tmp_path, REMOTE, sampling=unseeded) is None
    assert find(tmp_path, REMOTE, sampling=unseeded, unseeded_ok=True).output == "4"
    # unseeded repeats are still kept apart by their number
    assert find(tmp_path, REMOTE, sampling=unseeded, repeat=1, unseeded_ok=True) is None


def test_a_seed_that_is_not_sent_does_not_make_a_request_reproducible(tmp_path):
    context = {**REMOTE, "seed_sent": False}
    write_one(tmp_path, context)
    assert find(tmp_path, context) is None
    assert find(tmp_path, context, unseeded_ok=True) is not None


def test_greedy_requests_are_served_without_a_seed(tmp_path):
    greedy = Sampling(temperature=0.0, max_tokens=8)
    write_one(tmp_path, {**REMOTE, "seed_sent": False}, sampling=greedy)
    assert find(tmp_path, {**REMOTE, "seed_sent": False}, sampling=greedy) is not None


def test_refresh_writes_without_reading_and_only_reads_without_writing(tmp_path):
    write_one(tmp_path, REMOTE, completion=ok("old"))
    refresh = run_cache(tmp_path, REMOTE, mode="refresh")
    lookup = refresh.lookup(Prompt("p1", MESSAGES), 0, SAMPLING)
    assert lookup.answer is None  # refresh never reads
    refresh.remember(lookup, ok("new"), 2.0, "p1", 0)
    refresh.close()
    assert find(tmp_path, REMOTE).output == "new"
    only = run_cache(tmp_path, REMOTE, mode="only")
    other = Sampling(temperature=0.0)
    miss = only.lookup(Prompt("p1", MESSAGES), 0, other)
    only.remember(miss, ok("never"), 3.0, "p1", 0)
    only.close()
    assert find(tmp_path, REMOTE, sampling=other) is None


BATCH = 64  # merge_rows in these tests


def test_writes_are_kept_in_memory_then_merged_in_batches(tmp_path):
    cache = run_cache(tmp_path, REMOTE, merge_rows=BATCH)
    for i in range(BATCH + 3):
        messages = ({"role": "user", "content": f"q{i}"},)
        cache.remember(cache.lookup(Prompt("p1", messages), 0, SAMPLING), ok(), 1.0, f"p{i}", 0)
    reader = ResponseStore(cache_path(tmp_path))
    assert reader.stats()["entries"] <= BATCH  # one full batch went to the writer thread; 3 wait for close
    reader.close()
    cache.close()
    assert cache.written == BATCH + 3
    store = ResponseStore(cache_path(tmp_path))
    assert store.stats()["entries"] == BATCH + 3
    store.close()


def test_batches_reach_the_file_during_the_run_and_the_rest_at_close(tmp_path):
    cache = run_cache(tmp_path, REMOTE, merge_rows=BATCH)
    for i in range(2 * BATCH + 5):
        messages = ({"role": "user", "content": f"q{i}"},)
        cache.remember(cache.lookup(Prompt("p1", messages), 0, SAMPLING), ok(f"a{i}"), 1.0, f"p{i}", 0)
        if i == BATCH:  # the first full batch was handed over: once written, it is in the file
            cache.flush_wait()
            reader = ResponseStore(cache_path(tmp_path))
            assert reader.stats()["entries"] == BATCH + 1
            reader.close()
    cache.close()
    assert cache.written == 2 * BATCH + 5
    last = ({"role": "user", "content": f"q{2 * BATCH + 4}"},)
    assert find(tmp_path, REMOTE, messages=last).output == f"a{2 * BATCH + 4}"


# ------------------------------------------------------------------ several processes, one file
def _writer_process(path: str, start: int, count: int, barrier) -> None:
    # merges of 100 answers: the two processes' transactions interleave many times
    cache = RunCache(ResponseStore(path), "on", REMOTE, run_id=f"proc-{start}", dataset="d", merge_rows=100)
    barrier.wait()
    for i in range(start, start + count):
        messages = ({"role": "user", "content": f"question {i}"},)
        cache.remember(cache.lookup(Prompt("p1", messages), 0, SAMPLING), ok(str(i)), 1.0, f"p{i}", 0)
        if i % 50 == 0:
            cache.flush()  # many small transactions, interleaved with the other process's
    cache.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(cache_path(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer_process, args=(path, start, 1500, barrier)) for start in (0, 1500)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResponseStore(path)
    assert store.stats()["entries"] == 3000
    assert (
        store.get(
            key_of(
                {**REMOTE, **{k: v for k, v in _fields(SAMPLING).items()}},
                messages_sha256(({"role": "user", "content": "question 2999"},)),
            )
        ).output
        == "2999"
    )
    store.close()


def _fields(sampling: Sampling) -> dict:
    from sentech_eval.engine.cache_keys import sampling_key_fields

    return sampling_key_fields(sampling)


# ------------------------------------------------------------------ a damaged file


def test_a_damaged_file_turns_the_cache_off_or_stops_the_run_by_setting(tmp_path, capsys):
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage" * 1000)
    backend = RemoteBackend("http://127.0.0.1:9/v1", "m", "k")
    assert open_run_cache(backend, mode="on", cache_dir=str(tmp_path), run_id="r", dataset="d") is None
    err = capsys.readouterr().err
    assert "unusable" in err and "goes on without the cache" in err and err.count("\n") == 1
    with pytest.raises(CacheError):
        open_run_cache(backend, mode="on", cache_dir=str(tmp_path), run_id="r", dataset="d", on_corrupt="stop")


def test_a_file_damaged_during_the_run_stops_using_the_cache(tmp_path, capsys):
    for i in range(300):  # enough entries for pages beyond the first
        write_one(tmp_path, REMOTE, messages=({"role": "user", "content": f"question {i} " * 40},))
    cache = run_cache(tmp_path, REMOTE)
    path = cache_path(tmp_path)
    with open(path, "r+b") as handle:  # the disk goes bad under the running process
        handle.seek(4096)
        handle.write(os.urandom(path.stat().st_size - 4096))
    assert cache.lookup(Prompt("p1", ({"role": "user", "content": "question 5 " * 40},)), 0, SAMPLING) is None
    assert not cache.active
    err = capsys.readouterr().err
    assert "malformed" in err and "goes on without the cache" in err and err.count("\n") == 1
    assert cache.lookup(Prompt("p1", MESSAGES), 0, SAMPLING) is None  # and stays off, quietly
    assert capsys.readouterr().err == ""


def test_clear_by_model_and_age(tmp_path):
    write_one(tmp_path, REMOTE)
    write_one(tmp_path, {**REMOTE, "model": "m-2"})
    store = ResponseStore(cache_path(tmp_path))
    assert store.clear(older_than_s=3600) == 0
    assert store.clear(model="m-2") == 1
    assert store.stats()["entries"] == 1 and list(store.stats()["models"]) == ["m-1"]
    assert store.clear() == 1
    store.close()


def test_a_prefetched_batch_gives_the_same_answers_as_single_lookups(tmp_path):
    prompts = [Prompt(f"p{i}", ({"role": "user", "content": f"q{i}"},)) for i in range(1200)]
    cache = run_cache(tmp_path, REMOTE)
    for prompt in prompts[::2]:  # every other prompt is in the cache
        cache.remember(cache.lookup(prompt, 0, SAMPLING), ok(f"a-{prompt.id}"), 1.0, str(prompt.id), 0)
    cache.close()
    single = run_cache(tmp_path, REMOTE)
    expected = [single.lookup(p, 0, SAMPLING) for p in prompts]
    single.close()
    bulk = run_cache(tmp_path, REMOTE)
    bulk.before_batch(prompts, 0, SAMPLING)
    got = [bulk.lookup(p, 0, SAMPLING) for p in prompts]
    assert [(g.key, g.answer and g.answer.output) for g in got] == [
        (e.key, e.answer and e.answer.output) for e in expected
    ]
    assert sum(g.answer is not None for g in got) == 600 and bulk.hits == 600 and bulk.misses == 600
    bulk.close()


def test_a_prefetched_key_is_never_used_for_other_messages_under_the_same_id(tmp_path):
    write_one(tmp_path, REMOTE)
    cache = run_cache(tmp_path, REMOTE)
    cache.before_batch([Prompt("p1", MESSAGES)], 0, SAMPLING)
    other = Prompt("p1", ({"role": "user", "content": "something else"},))
    lookup = cache.lookup(other, 0, SAMPLING)
    assert lookup.answer is None and lookup.messages_sha256 == messages_sha256(other.messages)
    cache.close()


def test_a_backend_that_cannot_say_what_answers_is_not_cached(tmp_path, capsys):
    from sentech_eval.backends.scripted import ScriptedBackend, answer

    backend = ScriptedBackend(lambda call: answer())
    assert backend.cache_identity() is None  # the Backend protocol's default
    assert open_run_cache(backend, mode="on", cache_dir=str(tmp_path), run_id="r", dataset="d") is None
    assert "goes on without the cache" in capsys.readouterr().err
