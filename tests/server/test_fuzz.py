"""Fuzzing the request body: whatever JSON a client sends, the answer is 200 or a 400 sentence, never 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import SEED_BODY, post

from sentech_eval.server.testing import running_server

KEY = "fuzz-key"
FIELDS = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "max_tokens",
    "seed",
    "stream",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([0, 1, -1, 0.5, 2, 2.0001, -2, 1e308, -0.0, 2**63, 2**64, "user", "", "0.7"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["system", "user", "assistant", "tool", "", "USER"]) | json_values,
            "content": st.text(max_size=40) | json_values,
            "name": json_values,
        },
    )
    | json_values,
    max_size=4,
)


@pytest.fixture(scope="module")
def fuzz_server():
    with running_server(api_key=KEY) as url:
        yield url


def check(reply):
    assert reply.status in (200, 400), (reply.status, reply.text)
    body = reply.json()
    if reply.status == 400:
        assert isinstance(body["message"], str) and body["message"]
        assert set(body) == {"message"}
    elif reply.headers["Content-Type"].startswith("text/event-stream"):
        assert reply.text.endswith("data: [DONE]\n\n")
    else:
        assert body["object"] == "chat.completion"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def _post_json(url, body):
    raw = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity are not JSON: the server must say 400
    reply = post(url, raw=raw, key=KEY)
    reply.json = lambda text=reply.text: json.loads(text) if not text.startswith("data: ") else {}  # type: ignore[method-assign]
    return reply


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@common
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_value_in_any_field(fuzz_server, field, value):
    check(_post_json(fuzz_server, {**SEED_BODY, field: value}))


@pytest.mark.parametrize("field", sorted(SEED_BODY))
def test_any_field_missing(fuzz_server, field):
    body = dict(SEED_BODY)
    del body[field]
    reply = _post_json(fuzz_server, body)
    check(reply)
    assert reply.status == (400 if field == "messages" else 200)


@common
@given(msgs=messages)
def test_any_messages(fuzz_server, msgs):
    check(_post_json(fuzz_server, {**SEED_BODY, "messages": msgs}))


@common
@given(body=json_values)
def test_any_body(fuzz_server, body):
    check(_post_json(fuzz_server, body))


@common
@given(raw=st.binary(max_size=200))
def test_any_bytes(fuzz_server, raw):
    reply = post(fuzz_server, raw=raw, key=KEY)
    assert reply.status in (200, 400)
    assert "message" in json.loads(reply.text) or reply.status == 200
