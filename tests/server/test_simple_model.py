"""/chat and /ws on the bundled SmolLM2 model (greedy, a few tokens)."""

from __future__ import annotations

import pytest

from tests.server.test_websocket import simple_reply

pytestmark = pytest.mark.model
PROMPT = {"text": "What is the capital of France? Answer in one word.", "temperature": 0, "max_tokens": 8}


def test_chat_on_real_model(llama_client):
    r = llama_client.post("/chat", json=PROMPT)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "paris" in out["result"].lower()
    assert out["model"] == "smollm2"
    assert 0 < out["usage"]["completion_tokens"] <= 8


def test_ws_on_real_model_matches_chat(llama_client):
    expected = llama_client.post("/chat", json=PROMPT).json()["result"]
    with llama_client.websocket_connect("/ws") as ws:
        for _ in range(2):  # the socket stays open for the next prompt
            ws.send_json(PROMPT)
            text, end = simple_reply(ws)
            assert end["type"] == "end" and end["usage"]["completion_tokens"] <= 8
            assert text == expected  # greedy: same tokens, streamed
