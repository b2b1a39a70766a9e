"""engine/cache_keys.py: canonical key fields, without credentials. One miss per key field, through a run's
cache: tests/engine/test_cache.py."""

from __future__ import annotations

from sentech_eval.backends.remote import RemoteBackend
from sentech_eval.engine.cache_keys import canonical_json
from sentech_eval.secrets import url_without_credentials


def test_equal_values_make_equal_keys_and_credentials_never_enter_them():
    assert canonical_json({"b": 1, "a": [1.0]}) == canonical_json({"a": [1.0], "b": 1})
    assert (
        url_without_credentials("https://user:secret@api.example.com:8443/v1/?api_key=s3")
        == "https://api.example.com:8443/v1"
    )


def test_the_remote_backend_identity_has_no_credentials(monkeypatch):
    backend = RemoteBackend("http://127.0.0.1:9/v1", "m", "sk-secret-123", stream=True, send_seed=True)
    identity = backend.cache_identity()
    assert identity == {
        "backend": "remote",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "stream": True,
        "seed_sent": True,
    }
    assert "sk-secret-123" not in str(identity)
