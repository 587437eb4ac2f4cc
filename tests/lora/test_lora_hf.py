"""The same PEFT adapter on the transformers engine (PEFT per batch row), and the llama.cpp
engine's greedy output under the converted adapter against transformers + PEFT itself."""

from __future__ import annotations

import asyncio

import pytest

from llmserve import AsyncChatModel
from llmserve.adapter_model import AdapterModel
from llmserve.types import SamplingParams
from tests.conftest import THREADS, llama_settings
from tests.lora.train_adapter import ANSWER, QUESTION, chat_prompt

pytest.importorskip("peft")
pytestmark = pytest.mark.model
on_loop = pytest.mark.asyncio(loop_scope="session")
CHAT = [{"role": "user", "content": QUESTION}]
N_TOKENS = 6
FIRST = 2  # tokens every prompt must match exactly
# the trained question, and questions it was not trained on (the adapter still shifts their answers)
PROMPTS = [QUESTION, "What is the capital of France?", "Name a colour."]


@on_loop
async def test_hf_engine_serves_the_adapter_per_row(trained_adapter):
    async with AsyncChatModel(engine="hf", name="base", threads=THREADS, parallel=4, ctx_size=1024,
                              options={"dtype": "float32"}, lora=[f"secret={trained_adapter}"]) as base:
        secret = AdapterModel(base, "secret")
        models = [secret if i % 2 == 0 else base for i in range(4)]
        answers = await asyncio.gather(*[m.achat(CHAT, temperature=0, max_tokens=12) for m in models])
        assert all(a.text == ANSWER for m, a in zip(models, answers) if m is secret)
        assert all(ANSWER not in a.text for m, a in zip(models, answers) if m is base)


async def greedy_ids(model: AsyncChatModel, prompt: str) -> list[int]:
    request = model.build_request(prompt, SamplingParams(temperature=0, max_tokens=N_TOKENS))
    ids: list[int] = []
    async for delta in model.agenerate(request):
        ids.extend(delta.token_ids)
    return list(request.prompt_tokens), ids[:N_TOKENS]


def reference(trained_adapter, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """transformers + PEFT (float32, the GGUF dequantized): greedy ids without and with the adapter."""
    import torch
    from peft import PeftModel

    from llmserve.models import bundled_model_path
    from tests.lora.train_adapter import load_base

    torch.set_num_threads(THREADS)
    _, model = load_base(bundled_model_path())
    model = PeftModel.from_pretrained(model, str(trained_adapter)).eval()

    def run(ids: list[int]) -> list[int]:
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=N_TOKENS, do_sample=False)
        return out[0, len(ids):].tolist()[:N_TOKENS]

    with torch.inference_mode():
        adapted = [run(p) for p in prompts]
        with model.disable_adapter():
            base = [run(p) for p in prompts]
    return base, adapted


@on_loop
async def test_llamacpp_greedy_matches_transformers_peft(trained_adapter):
    async with AsyncChatModel(settings=llama_settings(name="base", lora=[f"secret={trained_adapter}"])) as base:
        secret = AdapterModel(base, "secret")
        got_base, got_secret, prompts = [], [], []
        for question in PROMPTS:
            ids, out = await greedy_ids(base, chat_prompt(question))
            prompts.append(ids)
            got_base.append(out)
            got_secret.append((await greedy_ids(secret, chat_prompt(question)))[1])
    want_base, want_secret = await asyncio.to_thread(reference, trained_adapter, prompts)
    # llama.cpp runs the Q4_1 weights with 8-bit activations, transformers the dequantized weights in
    # float32: near-ties may part later on, so the trained answer must match whole, the others at first
    assert got_secret[0] == want_secret[0] and want_secret[0] != want_base[0]
    for got, want in zip(got_secret, want_secret):
        assert got[:FIRST] == want[:FIRST]
    assert got_base[0] == want_base[0]
    assert sum(s != b for s, b in zip(got_secret, got_base)) >= 2  # the adapter changes answers
