"""The Sentech contract of `sentech-eval serve` against a real echo server on a loopback port."""

from __future__ import annotations

import json

import pytest
from server_helpers import KEY, SEED_BODY, SEED_CURL_DATA, post

from sentech_eval.server.testing import running_server


def test_seed_curl_body_answers_field_by_field(echo_server):
    reply = post(echo_server, raw=SEED_CURL_DATA.encode())
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"id", "object", "created", "model", "usage", "choices"}
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000
    assert body["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]  # answered from datasets/capitals.parquet
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len("You are a helpful assistant. What is the capital of France?".split())
    assert usage["completion_tokens"] == len(choice["message"]["content"].split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_ids_are_unique(echo_server):
    ids = {post(echo_server, SEED_BODY).json()["id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("key", ["wrong", "", None, KEY + "x", KEY[:-1]])
def test_wrong_or_missing_key_gets_exact_401(echo_server, key):
    reply = post(echo_server, SEED_BODY, key=key)
    assert reply.status == 401
    assert reply.text == '{"message":"Invalid API key."}'
    assert reply.json() == {"message": "Invalid API key."}


def test_any_of_several_comma_separated_keys_is_accepted():
    with running_server(api_key="alpha, beta") as url:
        assert post(url, SEED_BODY, key="alpha").status == 200
        assert post(url, SEED_BODY, key="beta").status == 200
        assert post(url, SEED_BODY, key="alpha,beta").status == 401


def test_no_auth_server_accepts_anything():
    with running_server(api_key=None) as url:
        assert post(url, SEED_BODY, key=None).status == 200


@pytest.mark.parametrize("messages", [[], None, "hello", {"role": "user", "content": "hi"}, 3, "__missing__"])
def test_empty_or_missing_messages_get_exact_400(echo_server, messages):
    body = dict(SEED_BODY)
    if messages == "__missing__":
        del body["messages"]
    else:
        body["messages"] = messages
    reply = post(echo_server, body)
    assert reply.status == 400
    assert reply.json() == {"message": "Messages must be a non-empty array."}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", 2.5, "temperature"),
        ("temperature", -0.1, "temperature"),
        ("temperature", "hot", "temperature must be a number"),
        ("top_p", 0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("top_k", -1, "top_k"),
        ("top_k", 2.5, "top_k must be an integer"),
        ("frequency_penalty", 3, "frequency_penalty"),
        ("presence_penalty", -2.5, "presence_penalty"),
        ("max_tokens", 0, "max_tokens"),
        ("max_tokens", -5, "max_tokens"),
        ("max_tokens", True, "max_tokens must be an integer"),
        ("seed", "x", "seed"),
        ("stream", "yes", "stream must be a boolean"),
        ("model", 5, "model must be a string"),
    ],
)
def test_bad_fields_get_400_with_a_sentence(echo_server, field, value, needle):
    reply = post(echo_server, {**SEED_BODY, field: value})
    assert reply.status == 400
    message = reply.json()["message"]
    assert needle in message and message.endswith(".")


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "hi"}, {"role": "user"}], "messages[1].content"),
        ([{"role": "user", "content": ["parts"]}], "messages[0].content must be a string"),
        (["hi"], "messages[0] must be an object"),
        ([{"content": "hi"}], "messages[0].role"),
    ],
)
def test_bad_messages_get_400_naming_the_item(echo_server, messages, needle):
    reply = post(echo_server, {**SEED_BODY, "messages": messages})
    assert reply.status == 400
    assert needle in reply.json()["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2", b"\xff\xfe", b"NaN", b'{"messages": 1e999}'])
def test_invalid_json_gets_400(echo_server, raw):
    reply = post(echo_server, raw=raw)
    assert reply.status == 400
    assert "message" in reply.json()


def test_non_object_body_gets_400(echo_server):
    reply = post(echo_server, [SEED_BODY])
    assert reply.status == 400
    assert reply.json()["message"].startswith("The request body must be a JSON object")


def test_null_sampling_fields_mean_not_sent(echo_server):
    body = {**SEED_BODY, "temperature": None, "top_p": None, "max_tokens": None, "seed": None}
    reply = post(echo_server, body)
    assert reply.status == 200


def test_body_over_the_limit_gets_413():
    with running_server(api_key=KEY, max_body_bytes=2048) as url:
        big = {**SEED_BODY, "messages": [{"role": "user", "content": "x " * 2000}]}
        reply = post(url, big)
        assert reply.status == 413
        assert "2048 bytes" in reply.json()["message"]
        assert post(url, SEED_BODY).status == 200


def test_chunked_body_over_the_limit_gets_413():
    import http.client

    with running_server(api_key=KEY, max_body_bytes=1024) as url:
        host, port = url.split("//")[1].split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        payload = json.dumps({**SEED_BODY, "messages": [{"role": "user", "content": "y" * 5000}]}).encode()
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=iter([payload[:100], payload[100:]]),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 413
        assert "message" in json.loads(response.read())
        conn.close()


def test_unknown_route_is_json_404(echo_server):
    reply = post(echo_server, SEED_BODY, path="/nope")
    assert reply.status == 404
    assert "message" in reply.json()


def test_wrong_method_is_json_405(echo_server):
    reply = post(echo_server, None, method="GET")
    assert reply.status == 405
    assert "POST" in reply.json()["message"]


def test_health_and_models(echo_server):
    assert post(echo_server.removesuffix("/v1"), None, path="/health", method="GET", key=None).json()["status"] == "ok"
    models = post(echo_server, None, path="/models", method="GET")
    assert models.status == 200 and models.json()["data"][0]["id"]
    assert post(echo_server, None, path="/models", method="GET", key="bad").status == 401


def test_the_server_advertises_its_capacity():
    """/health says how many requests the server answers at once; every answer carries it in a header."""
    with running_server(api_key=KEY, capacity=3) as url:
        health = post(url.removesuffix("/v1"), None, path="/health", method="GET", key=None).json()
        answer = post(url, {"messages": [{"role": "user", "content": "hi"}]})
        streamed = post(url, {"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert health["capacity"] == 3
    assert answer.status == 200 and answer.headers["X-Sentech-Capacity"] == "3"
    assert streamed.status == 200 and streamed.headers["X-Sentech-Capacity"] == "3"


def test_a_server_without_a_limit_advertises_none(echo_server):
    assert (
        post(echo_server.removesuffix("/v1"), None, path="/health", method="GET", key=None).json()["capacity"] is None
    )
    assert "X-Sentech-Capacity" not in post(echo_server, {"messages": [{"role": "user", "content": "hi"}]}).headers


# ------------------------------------------------------------------------------------- streaming
def parse_sse(text: str) -> tuple[list[dict], bool]:
    """The JSON chunks of an SSE body and whether it ended with [DONE]."""
    events = [block for block in text.split("\n\n") if block.strip()]
    assert all(e.startswith("data: ") for e in events), events
    done = events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: ") :]) for e in events if e != "data: [DONE]"], done


def test_stream_shape_and_done(echo_server):
    body = {
        **SEED_BODY,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "one two three four five"}],
    }
    reply = post(echo_server, body)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    chunks, done = parse_sse(reply.text)
    assert done
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == SEED_BODY["model"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert "".join(contents) == "one two three four five"
    assert len(contents) == 5
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["choices"][0]["delta"] == {}
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


def test_stream_and_plain_agree(echo_server):
    body = {
        **SEED_BODY,
        "temperature": 0,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "  alpha  beta\ngamma delta epsilon"}],
    }
    plain = post(echo_server, body).json()
    chunks, done = parse_sse(post(echo_server, {**body, "stream": True}).text)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert done
    assert streamed == plain["choices"][0]["message"]["content"] == "alpha  beta\ngamma"
    assert chunks[-1]["usage"] == plain["usage"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"] == "length"


def test_client_leaving_mid_stream_is_not_an_error(caplog):
    import logging
    import socket
    import time

    caplog.set_level(logging.ERROR)
    with running_server(api_key=KEY, tokens_per_s=20) as url:
        host, port = url.split("//")[1].split("/")[0].split(":")
        body = json.dumps({"messages": [{"role": "user", "content": " ".join(["w"] * 40)}], "stream": True}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # the server tries to write the next chunks into the closed connection
        assert post(url, SEED_BODY).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
