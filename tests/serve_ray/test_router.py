"""The prefix-affinity router's choices, on stand-in replicas (no cluster)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmserve.types import GenerationRequest

pytestmark = pytest.mark.ray

SYSTEM = tuple(range(1000, 1020))  # a 20-token system prompt every conversation shares


def router():
    from llmserve.serve_ray.router import PrefixAffinityRouter

    r = PrefixAffinityRouter.__new__(PrefixAffinityRouter)  # no Serve plumbing: only the policy
    r.initialize_state(imbalance=2)
    return r


def pending(tokens, rid="x"):
    return SimpleNamespace(args=[GenerationRequest(rid, tuple(tokens))], kwargs={},
                           metadata=SimpleNamespace(internal_request_id=rid),
                           routing_context=SimpleNamespace(should_backoff=False))


A, B = SimpleNamespace(replica_id="A"), SimpleNamespace(replica_id="B")


def conversation(n: int, length: int = 60) -> tuple[int, ...]:
    return SYSTEM + tuple(range(n * 100, n * 100 + length))


async def first_choice(r, tokens) -> str:
    request = pending(tokens)
    ranks = await r.choose_replicas([A, B], request)
    assert request.routing_context.should_backoff  # every replica ranked: Serve backs off when all refuse
    assert sorted(x.replica_id for rank in ranks for x in rank) == ["A", "B"]  # every replica, ranked
    return ranks[0][0].replica_id


async def test_a_conversation_follows_its_prefix_and_new_ones_take_the_least_loaded():
    r = router()
    r.on_request_routed(pending(conversation(1), "t1"), "A", None)
    r.on_request_completed("A", "t1")
    r.on_request_routed(pending(conversation(2), "t2"), "B", None)
    r.on_request_completed("B", "t2")
    turn2 = conversation(1) + tuple(range(5000, 5040))  # history + answer + new question
    assert await first_choice(r, turn2) == "A"
    assert await first_choice(r, conversation(2) + (7, 8, 9) * 10) == "B"
    # a new conversation shares only the system prompt, which both replicas hold: the least loaded
    r.on_request_routed(pending(conversation(9), "busy"), "A", None)
    assert await first_choice(r, conversation(3)) == "B"


async def test_a_busy_owner_gives_way_past_the_imbalance():
    r = router()
    r.on_request_routed(pending(conversation(1), "t1"), "A", None)
    turn2 = conversation(1) + tuple(range(5000, 5040))
    for i in range(2):  # A: 3 in flight, B: 0 -> past the imbalance of 2
        r.on_request_routed(pending(conversation(10 + i), f"o{i}"), "A", None)
    assert await first_choice(r, turn2) == "B"
    r.on_request_completed("A", "o0")  # A: 2 in flight -> within it again
    assert await first_choice(r, turn2) == "A"


async def test_requests_that_are_not_generations_take_the_least_loaded():
    r = router()
    r.on_request_routed(pending(conversation(1), "t1"), "A", None)
    ranks = await r.choose_replicas([A, B], SimpleNamespace(args=[], kwargs={}, metadata=None,
                                                            routing_context=SimpleNamespace(should_backoff=False)))
    assert ranks[0][0].replica_id == "B"
    assert await r.choose_replicas([], None) == []
