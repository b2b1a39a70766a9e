"""Shared helpers of the server tests: the seed's body and a tiny stdlib HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from cli_helpers import TEST_KEY

KEY = TEST_KEY  # the key of the shared echo server (the `echo_server` fixture of tests/conftest.py)

# The seed's curl body, as-is.
SEED_BODY = {
    "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "max_tokens": 256,
}
SEED_CURL_DATA = (
    '{"model": "meta-llama/Meta-Llama-3.1-8B-Instruct", "messages": [{"role": "system", "content": '
    '"You are a helpful assistant."}, {"role": "user", "content": "What is the capital of France?"}], '
    '"temperature": 0.7, "top_p": 0.9, "top_k": 40, "frequency_penalty": 0, "presence_penalty": 0, '
    '"max_tokens": 256}'
)


@dataclass
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    def json(self):
        return json.loads(self.text)


def post(
    base_url: str,
    body=None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
    path="/chat/completions",
    method="POST",
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """POST (or another method) with urllib; HTTP errors come back as replies, not exceptions."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base_url + path, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, r.read().decode(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read().decode(), dict(e.headers))
