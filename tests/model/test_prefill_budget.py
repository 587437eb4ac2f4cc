"""The per-step prefill budget beside decoding streams (arithmetic only: the real-model tests
in test_llamacpp_kvcache.py check what it does to a long prompt beside 7 streams)."""

from __future__ import annotations

from llmserve.engines.llamacpp.budget import FIRST_CHUNK, MIN_CHUNK, SLOWDOWN, PrefillBudget


def test_alone_a_prompt_takes_the_whole_batch_and_beside_streams_a_measured_chunk():
    b = PrefillBudget(512)
    assert b.tokens(0) == 512
    assert b.tokens(7) == FIRST_CHUNK  # nothing measured yet
    b.record(7, 0, 0.035)  # a decode-only step of 7 streams: 5 ms a stream
    b.record(7, 20, 0.035 + 20 * 0.002)  # 20 prompt tokens added 2 ms each
    # a mixed step may cost SLOWDOWN x the decode-only one: (SLOWDOWN - 1) x 35 ms of prompt tokens
    assert b.tokens(7) == int((SLOWDOWN - 1) * 0.035 / 0.002)
    assert b.tokens(1) == MIN_CHUNK  # one stream: a small budget, but never none
    assert b.tokens(510) == 2  # and never past the batch
