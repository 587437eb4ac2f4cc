"""llmserve's llama.cpp patch: Q4_1 x Q8_1 tiles, against ggml's own vec_dot, on the bundled Q4_1 model.

`make` installs llama-cpp-python built by scripts/build-llama-cpp-python.sh, so the patch is part
of the tested configuration: a stock build fails the first test rather than skipping the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp as ll
import numpy as np
import pytest

from llmserve.engines.llamacpp import kernels
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel

QUESTIONS = ["What is the capital of France?", "What is 2+2?", "Name a color.", "Who wrote Hamlet?",
             "Say hello in Spanish.", "Tell me a story about a dragon.", "Explain gravity briefly.", "Count to five."]


@pytest.fixture(scope="module")
def model(bundled_path) -> Iterator[LlamaModel]:
    m = LlamaModel(bundled_path)
    yield m
    m.close()


@pytest.fixture()
def ctx(model) -> Iterator[LlamaContext]:
    c = LlamaContext(model, n_ctx=2048, n_seq=8, n_batch=512, n_threads=1)
    yield c
    c.close()


@pytest.fixture()
def tiles_restored() -> Iterator[None]:
    yield
    kernels.set_q4_1_tiles(True)


def decode_logits(model: LlamaModel, ctx: LlamaContext, n_seq: int, steps: int) -> list[np.ndarray]:
    """Prefill n_seq prompts of different lengths in one batch, then decode `steps` tokens for
    each sequence at once; the logits of every output row of every decode call."""
    ll.llama_memory_clear(ll.llama_get_memory(ctx.ptr), True)
    batch = ll.llama_batch_init(512, 0, 1)
    try:
        n, next_tokens, lens = 0, [], []
        for s in range(n_seq):
            toks = model.tokenize(f"<|im_start|>user\n{QUESTIONS[s]}<|im_end|>\n<|im_start|>assistant\n")
            for i, t in enumerate(toks):
                batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.seq_id[n][0] = t, i, 1, s
                batch.logits[n] = i == len(toks) - 1
                n += 1
            lens.append(len(toks))
        out = []
        for step in range(steps + 1):
            if step:
                for s in range(n_seq):
                    batch.token[s], batch.pos[s], batch.n_seq_id[s], batch.seq_id[s][0] = next_tokens[s], lens[s] + step - 1, 1, s
                    batch.logits[s] = True
                n = n_seq
            batch.n_tokens = n
            assert ll.llama_decode(ctx.ptr, batch) == 0
            # the last n_seq outputs: each sequence's last prompt token, then its decoded token
            logits = np.stack([np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx.ptr, i), shape=(model.n_vocab,)).copy()
                               for i in range(-n_seq, 0)])
            next_tokens = [int(r.argmax()) for r in logits]  # greedy: both runs feed the same tokens if equal
            out.append(logits)
        return out
    finally:
        ll.llama_batch_free(batch)


def test_the_installed_build_carries_the_patch():
    assert kernels.q4_1_tiles_available(), (
        "llama-cpp-python lacks llmserve's llama.cpp patch: install the wheel from "
        "scripts/build-llama-cpp-python.sh (make does)")


@pytest.mark.parametrize("n_seq", [8, 3, 1])
def test_tiles_give_the_same_logits_as_vec_dot(model, ctx, tiles_restored, n_seq):
    # 8: the 4x4 tiles of a full decode batch; 3: edge tiles (4x3, then columns left over);
    # 1: a single sequence (4x1 tiles); every prefill (n >= 5 tokens) goes through tiles too
    assert kernels.set_q4_1_tiles(False)
    before = kernels.q4_1_tile_calls()
    stock = decode_logits(model, ctx, n_seq, steps=3)
    assert kernels.q4_1_tile_calls() == before  # ggml's vec_dot alone
    assert kernels.set_q4_1_tiles(True)
    tiled = decode_logits(model, ctx, n_seq, steps=3)
    assert kernels.q4_1_tile_calls() >= before + 4 * 30 * 7  # 4 decode calls x 30 layers x 7 Q4_1 matmuls
    for a, b in zip(stock, tiled, strict=True):
        np.testing.assert_array_equal(a, b)  # the same float operations in the same order
    assert np.isfinite(tiled[-1]).all() and tiled[-1].std() > 1  # real logits, not zeros
