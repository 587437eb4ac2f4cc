"""Per-key rate limits over the fake engine: headers, 429s, token charging, per-key overrides."""

from __future__ import annotations

import pytest

from llmserve.server.keystore import KeyStore
from llmserve.server.ratelimit import format_duration
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model
from tests.server.test_chat_api import assert_error

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def limit_headers(r) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("x-ratelimit-")}


@pytest.mark.parametrize("path,body", [
    (CHAT, BODY), (CHAT, {**BODY, "stream": True}), ("/chat", {"text": "hi"}), ("/chat_stream", {"text": "hi"}),
])
def test_requests_per_minute_headers_and_429(path, body):
    with app_client(fake_model(), settings=Settings(api_keys=["k1", "k2"], rate_limit_rpm=2)) as client:
        first = client.post(path, json=body, headers=auth("k1"))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        reset = first.headers["x-ratelimit-reset-requests"]
        assert reset.endswith("s") and reset[0].isdigit()
        assert "x-ratelimit-limit-tokens" not in first.headers  # no token limit set
        assert client.post(path, json=body, headers=auth("k1")).headers["x-ratelimit-remaining-requests"] == "0"

        r = client.post(path, json=body, headers=auth("k1"))
        err = assert_error(r, 429, code="rate_limit_exceeded")
        assert err["type"] == "rate_limit_error" and "requests" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-limit-requests"] == "2"

        # another key has its own budget
        assert client.post(path, json=body, headers=auth("k2")).status_code == 200


def test_tokens_per_minute_are_charged_after_generation():
    with app_client(fake_model(), settings=Settings(api_keys=["k"], rate_limit_tpm=20)) as client:
        r1 = client.post(CHAT, json=BODY, headers=auth("k"))
        used = r1.json()["usage"]["total_tokens"]
        assert 0 < used < 20
        assert r1.headers["x-ratelimit-limit-tokens"] == "20"
        assert r1.headers["x-ratelimit-remaining-tokens"] == "20"  # as admitted; charged when known
        r2 = client.post(CHAT, json={**BODY, "stream": True}, headers=auth("k"))
        assert r2.status_code == 200
        assert r2.headers["x-ratelimit-remaining-tokens"] == str(20 - used)
        r3 = client.post("/chat", json={"text": "x"}, headers=auth("k"))
        err = assert_error(r3, 429, code="rate_limit_exceeded")
        assert "tokens" in err["message"]
        assert r3.headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(r3.headers["retry-after"]) >= 1
        assert "x-ratelimit-limit-requests" not in r3.headers  # no request limit set


def test_without_auth_limits_count_per_client_address():
    with app_client(fake_model(), settings=Settings(rate_limit_rpm=1)) as client:
        assert client.post("/chat", json={"text": "x"}).status_code == 200
        assert_error(client.post("/chat", json={"text": "x"}), 429)


def test_rejected_requests_are_not_counted_and_other_routes_are_unlimited():
    with app_client(fake_model(), settings=Settings(api_keys=["k"], rate_limit_rpm=1)) as client:
        assert_error(client.post("/chat", json={"text": "x"}), 401)  # no key: not counted against anyone
        assert client.post("/chat", json={"text": "x"}, headers=auth("k")).status_code == 200
        models = client.get("/v1/models", headers=auth("k"))
        assert models.status_code == 200 and not limit_headers(models)
        assert client.get("/health").status_code == 200


def test_key_store_limits_override_defaults(tmp_path):
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    _, strict = store.create("strict", rpm=1)
    _, free = store.create("free", rpm=0, tpm=0)  # 0: unlimited for this key
    _, default = store.create("default")
    settings = Settings(key_db=str(db), rate_limit_rpm=2, rate_limit_tpm=10_000)
    with app_client(fake_model(), settings=settings) as client:
        r = client.post("/chat", json={"text": "x"}, headers=auth(strict))
        assert r.headers["x-ratelimit-limit-requests"] == "1"
        assert r.headers["x-ratelimit-limit-tokens"] == "10000"
        assert_error(client.post("/chat", json={"text": "x"}, headers=auth(strict)), 429)
        for _ in range(4):
            r = client.post("/chat", json={"text": "x"}, headers={"x-api-key": free})
            assert r.status_code == 200 and not limit_headers(r)
        for expected in (200, 200, 429):
            assert client.post("/chat", json={"text": "x"}, headers=auth(default)).status_code == expected


def test_format_duration():
    assert [format_duration(s) for s in (0, 0.02, 1, 1.2, 59.5, 60, 360, 3599.1)] == [
        "0s", "20ms", "1s", "2s", "1m0s", "1m0s", "6m0s", "60m0s"]
