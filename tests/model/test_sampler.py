"""The llama.cpp engine's token sampling: the numpy inverse-CDF draw against a plain cumulative
sum, its distribution, and which requests take a llama.cpp chain instead."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve.engines.llamacpp.sampler import SequenceSampler, draw
from llmserve.types import SamplingParams


@pytest.mark.parametrize("n", [7, 1000, 1024, 2500, 49152])
def test_draw_matches_a_full_cumulative_sum(n):
    rng = np.random.default_rng(n)
    probs = rng.random((6, n)).astype(np.float32) ** 8  # uneven, many near-zero entries
    totals = probs.sum(axis=1, dtype=np.float64)
    for _ in range(20):
        targets = rng.random(6) * totals
        expected = [int(np.searchsorted(np.cumsum(row, dtype=np.float64), t)) for row, t in zip(probs, targets)]
        assert draw(probs, targets) == expected


def test_draw_follows_the_distribution():
    p = np.zeros((1, 3000), np.float32)
    p[0, [3, 1500, 2999]] = [0.2, 0.5, 0.3]
    rng = np.random.default_rng(0)
    counts: dict[int, int] = {}
    for _ in range(4000):
        (token,) = draw(p, rng.random(1) * p.sum(dtype=np.float64))
        counts[token] = counts.get(token, 0) + 1
    assert set(counts) == {3, 1500, 2999}
    for token, share in ((3, 0.2), (1500, 0.5), (2999, 0.3)):
        assert abs(counts[token] / 4000 - share) < 0.03, counts


def test_draw_never_returns_a_zero_probability_token():
    p = np.zeros((2, 2048), np.float32)
    p[0, 10] = 1.0
    p[1, 1030] = 1.0
    # targets at zero and past the total (float rounding) still land on the only possible token
    assert draw(p, np.array([0.0, 1.0000001])) == [10, 1030]


def test_plain_requests_sample_in_numpy_and_the_rest_use_a_llama_chain():
    def chain_of(**kw):
        s = SequenceSampler(SamplingParams(**kw), n_vocab=100, penalty_window=64)
        try:
            return s.chain is not None, s.greedy
        finally:
            s.close()

    assert chain_of(temperature=0.7) == (False, False)
    assert chain_of(temperature=0.0) == (False, True)
    for kw in ({"top_k": 40}, {"top_p": 0.9}, {"min_p": 0.05}, {"presence_penalty": 0.5},
               {"frequency_penalty": 0.5}, {"repetition_penalty": 1.1}):
        assert chain_of(temperature=0.7, **kw) == (True, False), kw
    assert chain_of(temperature=0.0, repetition_penalty=1.1) == (True, False)


def test_a_seed_fixes_the_random_stream():
    a = SequenceSampler(SamplingParams(seed=5), n_vocab=10, penalty_window=8)
    b = SequenceSampler(SamplingParams(seed=5), n_vocab=10, penalty_window=8)
    c = SequenceSampler(SamplingParams(seed=6), n_vocab=10, penalty_window=8)
    assert a.rng.random(4).tolist() == b.rng.random(4).tolist() != c.rng.random(4).tolist()
