"""Injected engine faults (fake engine): the affected request gets an OpenAI-shaped error, or an
SSE error event then [DONE]; the others are untouched; a hung engine turns /health to 503 and
the requests waiting on it fail with 503 engine_stalled, never a silent stall."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import app_client, fake_model

pytestmark = pytest.mark.reliability

CHAT = "/v1/chat/completions"


def ask(content: str, **kw):
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


def sse_events(response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def assert_openai_error(body: dict, code: str | None = None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code


class Bystander(threading.Thread):
    """A normal streaming request running beside the faulty ones: it must be untouched."""

    def __init__(self, client, text: str = "one two three four five six seven eight"):
        super().__init__()
        self.client, self.text = client, text
        self.result: tuple[int, str, str | None] | None = None

    def run(self) -> None:
        with self.client.stream("POST", CHAT, json=ask(self.text, stream=True)) as r:
            events = sse_events(r)
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        finish = next((c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]), None)
        self.result = (r.status_code, text, finish, events[-1])


@pytest.mark.parametrize("error", ["engine", "runtime"])
def test_failure_at_prefill_is_a_500_before_the_stream_starts(error):
    model = fake_model(fail_prefill_on="BOOM", fault_error=error, token_delay=0.01)
    with app_client(model) as client:
        bystander = Bystander(client)
        bystander.start()
        plain = client.post(CHAT, json=ask("BOOM now"))
        streamed = client.post(CHAT, json=ask("BOOM now", stream=True))
        bystander.join(30)
        health = client.get("/health")
    for r in (plain, streamed):
        assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
        assert_openai_error(r.json(), "engine_error" if error == "engine" else None)
    assert bystander.result == (200, "one two three four five six seven eight", "stop", "[DONE]")
    assert health.status_code == 200 and health.json()["models"]["fake-model"]["running"] == 0


@pytest.mark.parametrize("error", ["engine", "runtime"])
def test_failure_at_decode_is_an_sse_error_event_then_done(error):
    model = fake_model(fail_decode_on="BOOM", fault_error=error, token_delay=0.01)
    with app_client(model) as client:
        bystander = Bystander(client)
        bystander.start()
        with client.stream("POST", CHAT, json=ask("BOOM goes the engine", stream=True)) as r:
            assert r.status_code == 200
            events = sse_events(r)
        plain = client.post(CHAT, json=ask("BOOM goes the engine"))
        bystander.join(30)
        health = client.get("/health")
    assert events[-1] == "[DONE]"
    error_event = json.loads(events[-2])
    assert_openai_error(error_event, "engine_error" if error == "engine" else None)
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "BOOM"  # tokens before the failure
    assert plain.status_code == 500
    assert_openai_error(plain.json())
    assert bystander.result == (200, "one two three four five six seven eight", "stop", "[DONE]")
    assert health.status_code == 200 and health.json()["models"]["fake-model"]["running"] == 0


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_hung_engine_turns_health_to_503_and_fails_its_requests():
    model = fake_model(hang_on="FREEZE", watchdog_timeout=1.0, token_delay=0.01)
    with app_client(model) as client:
        assert client.get("/health").status_code == 200
        t0 = time.monotonic()
        with client.stream("POST", CHAT, json=ask("FREEZE right there", stream=True)) as r:
            assert r.status_code == 200  # the first token came, then the step hung
            events = sse_events(r)
        failed_after = time.monotonic() - t0
        assert events[-1] == "[DONE]"
        assert_openai_error(json.loads(events[-2]), "engine_stalled")
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["models"]["fake-model"]["status"] == "stalled"
        later = client.post(CHAT, json=ask("anyone there?"))  # waits on the hung engine, then 503
        assert later.status_code == 503 and later.headers["retry-after"]
        assert_openai_error(later.json(), "engine_stalled")
    assert 1.0 <= failed_after < 10.0
