"""The vLLM engine serves the same PEFT adapter as the other engines (``LoRARequest`` per request):
base and adapter side by side, each with its own answer. Its own vLLM start (LoRA enabled)."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.adapter_model import AdapterModel
from llmserve.chat_model import AsyncChatModel
from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import ThreadServer, free_port
from tests.engines.conftest import CTX, require_engine
from tests.lora.fixtures import mismatched_adapter, trained_adapter  # noqa: F401 (fixtures)
from tests.lora.train_adapter import ANSWER, QUESTION

pytestmark = pytest.mark.vllm
CHAT = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def lora_server(trained_adapter):  # noqa: F811
    require_engine("vllm")
    model = AsyncChatModel(engine="vllm", name="base", ctx_size=CTX, parallel=8, lora=[f"secret={trained_adapter}"],
                           options={"kv_cache_bytes": 256 * 1024 * 1024})
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        server.model = model
        yield server


def test_vllm_adapter_answers_as_trained_beside_the_base(lora_server):
    base = lora_server.model
    secret = AdapterModel(base, "secret")

    async def both():
        models = [secret if i % 2 == 0 else base for i in range(8)]
        return models, await asyncio.gather(*[m.achat(CHAT, temperature=0, max_tokens=12) for m in models])

    models, answers = lora_server.call(both())
    base_answers = {a.text for m, a in zip(models, answers) if m is base}
    assert len(base_answers) == 1 and ANSWER not in base_answers
    assert all(a.text == ANSWER for m, a in zip(models, answers) if m is secret)


def test_vllm_adapter_over_http_and_unknown_adapter(lora_server):
    import httpx

    with httpx.Client(base_url=lora_server.url, timeout=120) as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert cards["secret"]["parent"] == "base"
        r = client.post("/v1/chat/completions", json={"model": "secret", "messages": CHAT, "temperature": 0, "max_tokens": 12})
        assert r.json()["choices"][0]["message"]["content"] == ANSWER
        r = client.post("/v1/chat/completions", json={"model": "nope", "messages": CHAT, "max_tokens": 4})
        assert r.status_code == 404
