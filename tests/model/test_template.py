"""The chat template from the GGUF renders exactly as transformers renders it, token for token."""

from __future__ import annotations

import pytest

from llmserve.chat_model import to_messages

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. What do you need?"},
        {"role": "user", "content": "Ünïcödé, emoji 🚀 and <b>markup</b>."},
    ],
]


@pytest.fixture(scope="module")
def hf_tokenizer(bundled_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_path.parent), gguf_file=bundled_path.name)


@pytest.fixture(scope="module")
def engine(bundled_path):
    from llmserve.engines.llamacpp.engine import LlamaCppEngine
    from tests.conftest import llama_settings

    eng = LlamaCppEngine(llama_settings(parallel=1, ctx_size=2048))
    eng._load(str(bundled_path))
    yield eng
    eng.scheduler.stop()
    eng.ctx.close()
    eng.model.close()


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_template_text_and_token_ids_match_transformers(engine, hf_tokenizer, conversation):
    ours = engine.render_chat(to_messages(conversation))
    theirs = hf_tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    their_ids = hf_tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert engine.tokenize(ours) == list(their_ids)


def test_default_system_prompt_and_generation_prompt(engine):
    text = engine.render_chat(to_messages("Hi"))
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
