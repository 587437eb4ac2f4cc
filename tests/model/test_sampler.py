"""The llama.cpp engine's token sampling: the numpy inverse-CDF draw against a plain cumulative
sum, its distribution, and which requests take a llama.cpp chain instead."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve.engines.llamacpp.sampler import SequenceSampler, draw, nucleus
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
    assert chain_of(temperature=0.7, top_p=0.9) == (False, False)  # nucleus, in numpy
    assert chain_of(temperature=0.0, top_p=0.9) == (True, False)  # greedy after top-p: llama.cpp's chain
    for kw in ({"top_k": 40}, {"min_p": 0.05}, {"presence_penalty": 0.5},
               {"frequency_penalty": 0.5}, {"repetition_penalty": 1.1}):
        assert chain_of(temperature=0.7, **kw) == (True, False), kw
    assert chain_of(temperature=0.0, repetition_penalty=1.1) == (True, False)


def test_a_seed_fixes_the_random_stream():
    a = SequenceSampler(SamplingParams(seed=5), n_vocab=10, penalty_window=8)
    b = SequenceSampler(SamplingParams(seed=5), n_vocab=10, penalty_window=8)
    c = SequenceSampler(SamplingParams(seed=6), n_vocab=10, penalty_window=8)
    assert a.rng.random(4).tolist() == b.rng.random(4).tolist() != c.rng.random(4).tolist()


def reference_nucleus(logits: np.ndarray, top_p: float) -> set[int]:
    """llama.cpp's top-p by a full sort: the likeliest tokens until their probability reaches top_p."""
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-logits, kind="stable")
    cut = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
    return set(order[:cut].tolist())


@pytest.mark.parametrize("spread", [0.5, 3.0, 40.0])  # flat (the fallback to a full sort) to peaked
def test_nucleus_draws_only_from_the_top_p_set(spread):
    rng = np.random.default_rng(int(spread * 10))
    for _ in range(5):
        logits = (rng.standard_normal(49152) * spread).astype(np.float32)
        allowed = reference_nucleus(logits, 0.9)
        seen = {nucleus(logits, 0.9, 1.0 / 0.7, rng.random()) for _ in range(200)}
        assert seen <= allowed, (len(seen - allowed), len(allowed))


def test_nucleus_follows_the_tempered_distribution_inside_the_set():
    logits = np.full(1000, -30.0, np.float32)
    logits[[5, 500, 900]] = [2.0, 1.0, 0.0]  # probabilities ~0.665, 0.245, 0.090
    rng = np.random.default_rng(1)
    counts = {5: 0, 500: 0, 900: 0}
    for _ in range(4000):
        counts[nucleus(logits, 0.8, 1.0, rng.random())] += 1
    assert counts[900] == 0  # 0.665 + 0.245 reaches 0.8: the third is cut
    share = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
    assert abs(counts[5] / 4000 - share[0]) < 0.03 and abs(counts[500] / 4000 - share[1]) < 0.03, counts
    # a low temperature sharpens the draw among the same two
    cold = [nucleus(logits, 0.8, 1.0 / 0.1, rng.random()) for _ in range(200)]
    assert set(cold) <= {5, 500} and cold.count(5) > 190
