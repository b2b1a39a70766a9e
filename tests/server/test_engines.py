"""The echo engine: honest whitespace usage, dataset references, determinism, simulated time."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from server_helpers import SEED_BODY, post

from sentech_eval.server.engines import ChatRequest, EchoEngine
from sentech_eval.server.testing import running_server
from sentech_eval.types import Sampling

KEY = "engine-key"


def ask(url, content, **fields):
    body = {
        **SEED_BODY,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        **fields,
    }
    reply = post(url, body, key=KEY)
    assert reply.status == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("datasets")
    pd.DataFrame(
        {"id": ["a", "b"], "prompt": ["What is 2 + 2?", "Name a colour."], "reference": ["4", "Deep sky blue"]}
    ).to_parquet(d / "tiny.parquet")
    pd.DataFrame(
        {
            "id": [1],
            "messages": [[{"role": "system", "content": "x"}, {"role": "user", "content": "Hi there"}]],
            "reference": ["Hello!"],
        }
    ).to_parquet(d / "chat.parquet")
    (d / "broken.parquet").write_text("not parquet")
    return d


@pytest.fixture(scope="module")
def echo(dataset_dir):
    with running_server(api_key=KEY, datasets_dir=dataset_dir) as url:
        yield url


def test_answers_dataset_prompts_with_their_reference(echo):
    assert ask(echo, "What is 2 + 2?", temperature=0)["choices"][0]["message"]["content"] == "4"
    assert ask(echo, "  Name a colour.\n", temperature=0)["choices"][0]["message"]["content"] == "Deep sky blue"
    assert ask(echo, "Hi there", temperature=0)["choices"][0]["message"]["content"] == "Hello!"


def test_echoes_unknown_prompts(echo):
    body = ask(echo, "tell me   something new", temperature=0)
    assert body["choices"][0]["message"]["content"] == "tell me   something new"
    assert body["usage"] == {"prompt_tokens": 2 + 4, "completion_tokens": 4, "total_tokens": 10}


def test_shipped_datasets_are_answered_by_default(echo_server):
    import pyarrow.parquet as pq

    from sentech_eval.server.engines import DEFAULT_DATASETS_DIR

    files = sorted(DEFAULT_DATASETS_DIR.glob("*.parquet"))
    if not files:
        pytest.skip("no shipped datasets/*.parquet yet")
    row = pq.read_table(files[0], columns=["prompt", "reference"]).slice(3, 1).to_pylist()[0]
    reply = post(echo_server, {**SEED_BODY, "temperature": 0, "messages": [{"role": "user", "content": row["prompt"]}]})
    assert reply.json()["choices"][0]["message"]["content"] == row["reference"]


def test_temperature_zero_is_stable_and_seeded_answers_reproduce(echo):
    outputs = {
        ask(echo, "What is 2 + 2?", temperature=0, seed=s)["choices"][0]["message"]["content"] for s in range(10)
    }
    assert outputs == {"4"}
    by_seed = [
        ask(echo, "What is 2 + 2?", temperature=1.0, seed=s)["choices"][0]["message"]["content"] for s in range(30)
    ]
    again = [
        ask(echo, "What is 2 + 2?", temperature=1.0, seed=s)["choices"][0]["message"]["content"] for s in range(30)
    ]
    assert by_seed == again
    assert len(set(by_seed)) > 1
    assert all("4" in text for text in by_seed)


def test_usage_is_honest_whitespace_counting(echo):
    for seed in range(10):
        body = ask(echo, "What is 2 + 2?", temperature=1.5, seed=seed)
        content = body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == len(content.split())
        assert body["usage"]["prompt_tokens"] == len("Be brief. What is 2 + 2?".split())


def test_max_tokens_truncates_with_finish_reason_length(echo):
    body = ask(echo, "a b c d e f g", temperature=0, max_tokens=3)
    assert body["choices"][0]["message"]["content"] == "a b c"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    exact = ask(echo, "a b c", temperature=0, max_tokens=3)
    assert exact["choices"][0]["finish_reason"] == "stop"


def test_echo_model_name_follows_the_request(echo):
    assert ask(echo, "x", model="some/model")["model"] == "some/model"


def test_latency_and_tokens_per_second_slow_answers_down():
    with running_server(api_key=KEY, latency_ms=120, tokens_per_s=50) as url:
        start = time.perf_counter()
        ask(url, "one two three four five six seven eight nine ten", temperature=0)  # 10 tokens: 0.12 + 0.2 s
        elapsed = time.perf_counter() - start
        assert elapsed >= 0.3
        stream = post(
            url,
            {**SEED_BODY, "stream": True, "temperature": 0, "messages": [{"role": "user", "content": "a b c d e"}]},
            key=KEY,
        )
        chunks = [json.loads(b[6:]) for b in stream.text.split("\n\n") if b.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "a b c d e"


def test_engine_direct_stream_and_complete_agree():
    import asyncio

    engine = EchoEngine(datasets_dir=None)
    request = ChatRequest(
        messages=[{"role": "user", "content": "x  y\tz w"}], sampling=Sampling(max_tokens=3), stream=True
    )

    async def go():
        pieces = [p async for p in engine.stream(request)]
        return pieces

    pieces = asyncio.run(go())
    final = pieces[-1]
    assert pieces[:-1] == ["x", "  y", "\tz"]
    assert final.text == "x  y\tz" and final.finish_reason == "length" and final.completion_tokens == 3


@pytest.mark.parametrize("content", ["  padded  ", "\nline one\n\nline two\t", "tabs\tand  spaces ", "   "])
def test_stream_and_plain_answers_are_identical(echo, content):
    body = {**SEED_BODY, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    plain = post(echo, body, key=KEY).json()
    stream = post(echo, {**body, "stream": True}, key=KEY).text
    chunks = [json.loads(b[6:]) for b in stream.split("\n\n") if b.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == plain["choices"][0]["message"]["content"] == content.strip()
    assert chunks[-1]["usage"] == plain["usage"]
