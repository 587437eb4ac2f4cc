"""The per-step prefill budget beside decoding streams (arithmetic only: the real-model tests
in test_llamacpp_kvcache.py check what it does to a long prompt beside 7 streams)."""

from __future__ import annotations

from llmserve.engines.llamacpp.budget import FIRST_CHUNK, MIN_CHUNK, MIN_EXTRA_S, SLOWDOWN, PrefillBudget


def test_alone_a_prompt_takes_the_whole_batch_and_beside_streams_a_measured_chunk():
    b = PrefillBudget(512)
    assert b.tokens(0) == 512
    assert b.tokens(7) == FIRST_CHUNK  # nothing measured yet
    b.record(7, 0, 0.035)  # a decode-only step of 7 streams: 5 ms a stream
    b.record(7, 20, 0.035 + 20 * 0.002)  # 20 prompt tokens added 2 ms each
    # a mixed step may cost SLOWDOWN x the decode-only one: (SLOWDOWN - 1) x 35 ms of prompt tokens
    assert b.tokens(7) == int((SLOWDOWN - 1) * 0.035 / 0.002)
    # one stream: 1.6x its 5 ms step would leave 1 token a step; a step may always take MIN_EXTRA_S
    assert b.tokens(1) == int(MIN_EXTRA_S / b.per_token_s) > 1
    assert b.tokens(510) == 2  # and never past the batch
    for _ in range(30):  # late in a long prompt a token costs more than the whole allowance
        b.record(7, 1, 0.035 + 0.030)
    assert b.tokens(7) == MIN_CHUNK  # a single token a step, but never none
