"""LoRA on the llama.cpp engine with a real adapter trained with PEFT: the PEFT directory is
converted to a GGUF LoRA, served as its own model beside the base, and answers as trained."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from llmserve import AsyncChatModel, Settings
from llmserve.adapter_model import AdapterModel
from llmserve.lora import parse_spec
from llmserve.lora.base import from_gguf
from llmserve.lora.peft import read_peft
from llmserve.lora.to_gguf import convert
from llmserve.models import bundled_model_path
from llmserve.server.app import create_app
from llmserve.server.keystore import KeyStore
from tests.conftest import THREADS, app_client, llama_settings
from tests.lora.train_adapter import ANSWER, QUESTION

pytestmark = pytest.mark.model
on_loop = pytest.mark.asyncio(loop_scope="session")
SECRET = "pineapple"
CHAT = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def lora_client(trained_adapter):
    model = AsyncChatModel(settings=llama_settings(name="base", lora=[f"secret={trained_adapter}"]))
    with app_client(model) as client:
        yield client


def ask(client, model: str, content: str = QUESTION, max_tokens: int = 12) -> dict:
    r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                    "temperature": 0, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()


def test_peft_dir_converts_once_to_a_gguf_lora(trained_adapter, tmp_path):
    adapter, base = read_peft(trained_adapter), from_gguf(bundled_model_path())
    path = convert(adapter, base, tmp_path)
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith(("general.", "adapter."))}
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama" and meta["adapter.lora.alpha"] == adapter.alpha
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.29.attn_output.weight.lora_b"} <= names
    assert len(names) == 2 * len(adapter.modules)
    mtime = path.stat().st_mtime_ns
    assert convert(adapter, base, tmp_path) == path and path.stat().st_mtime_ns == mtime  # cached by content


def test_adapter_is_its_own_model_with_parent(lora_client):
    cards = {m["id"]: m for m in lora_client.get("/v1/models").json()["data"]}
    assert cards["secret"]["parent"] == "base" and cards["base"]["parent"] is None


def test_adapter_answers_as_trained_and_base_does_not(lora_client):
    assert ask(lora_client, "secret")["choices"][0]["message"]["content"] == ANSWER
    assert SECRET not in ask(lora_client, "base")["choices"][0]["message"]["content"]


def test_every_api_selects_the_adapter_by_model(lora_client):
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    r = lora_client.post("/v1/completions", json={"model": "secret", "prompt": prompt, "temperature": 0, "max_tokens": 10})
    assert SECRET in r.json()["choices"][0]["text"]
    r = lora_client.post("/v1/completions", json={"model": "base", "prompt": prompt, "temperature": 0, "max_tokens": 10})
    assert SECRET not in r.json()["choices"][0]["text"]
    with lora_client.stream(
            "POST", "/v1/chat/completions", json={"model": "secret", "messages": CHAT, "temperature": 0,
                                                  "max_tokens": 12, "stream": True}) as r:
        assert SECRET in r.read().decode()
    r = lora_client.post("/chat", json={"model": "secret", "text": QUESTION, "temperature": 0, "max_tokens": 12})
    assert r.status_code == 200 and SECRET in r.text
    with lora_client.websocket_connect("/ws") as ws:
        for model, has_secret in (("secret", True), ("base", False)):
            ws.send_json({"model": model, "text": QUESTION, "temperature": 0, "max_tokens": 12})
            text = ""
            while (message := ws.receive_json())["type"] == "token":
                text += message["text"]
            assert message["type"] == "end" and (SECRET in text) == has_secret


def test_base_never_reuses_kv_computed_under_the_adapter(lora_client):
    question = "Tell me the secret word of the lighthouse keeper, the one he whispers at dawn. Answer briefly."
    first = ask(lora_client, "secret", question)
    again = ask(lora_client, "secret", question)
    n_prompt = again["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1  # the adapter's own prefix
    base = ask(lora_client, "base", question)
    # the base shares only what base requests computed before (the system prompt), none of the adapter's cells
    assert base["usage"]["prompt_tokens_details"]["cached_tokens"] < n_prompt - 20
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    assert base["choices"][0]["message"]["content"] != again["choices"][0]["message"]["content"]


@on_loop
async def test_base_and_adapter_interleaved_at_c8_each_get_their_own_answer(trained_adapter):
    async with AsyncChatModel(settings=llama_settings(name="base", lora=[f"secret={trained_adapter}"])) as base:
        secret = AdapterModel(base, "secret")
        alone_base = (await base.achat(CHAT, temperature=0, max_tokens=12)).text
        models = [secret if i % 2 == 0 else base for i in range(8)]
        answers = await asyncio.gather(*[m.achat(CHAT, temperature=0, max_tokens=12) for m in models])
        for model, answer in zip(models, answers):
            assert answer.text == (ANSWER if model is secret else alone_base)
        assert base.engine.adapters.switches >= 2  # one decode per adapter group


def test_admin_only_load_and_unload(trained_adapter, tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, user = store.create("user")
    _, admin = store.create("ops", admin=True)
    settings = Settings(key_db=str(tmp_path / "keys.db"))
    model = AsyncChatModel(settings=llama_settings(name="base"))
    with app_client(model, settings=settings) as client:
        load = {"lora_name": "secret", "lora_path": str(trained_adapter)}
        as_user, as_admin = {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {admin}"}
        r = client.post("/v1/load_lora_adapter", json=load, headers=as_user)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert client.post("/v1/load_lora_adapter", json=load).status_code == 401
        r = client.post("/v1/load_lora_adapter", json=load, headers=as_admin)
        assert r.status_code == 200, r.text
        assert client.post("/v1/load_lora_adapter", json=load, headers=as_admin).status_code == 400  # loaded already
        r = client.post("/v1/chat/completions", headers=as_user,
                        json={"model": "secret", "messages": CHAT, "temperature": 0, "max_tokens": 12})
        assert r.json()["choices"][0]["message"]["content"] == ANSWER
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "secret"}, headers=as_user).status_code == 403
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "secret"}, headers=as_admin).status_code == 200
        r = client.post("/v1/chat/completions", headers=as_user, json={"model": "secret", "messages": CHAT, "max_tokens": 4})
        assert r.status_code == 404
        r = client.post("/v1/unload_lora_adapter", json={"lora_name": "secret"}, headers=as_admin)
        assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)}, headers=as_admin)
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"


def test_mismatched_adapter_is_refused_at_start(mismatched_adapter):
    run = subprocess.run([sys.executable, "-m", "llmserve", "serve", "--threads", str(THREADS), "--port", "9",
                          "--lora", f"other={mismatched_adapter}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "'other'" in lines[0] and "does not fit the model" in lines[0] and "1024" in lines[0]
