"""A Serve request router that knows the KV cache: a conversation's turns go to the replica that
holds its prefix, unless that replica is much busier than the least-loaded one.

Every routed prompt leaves its block hashes (``BLOCK`` tokens each, chained, as vLLM's prefix
cache does) in a bounded table, attributed to the replica that took it. A new prompt walks its
own chain: the replica with the longest match wins if its match is strictly longer than every
other replica's (a system prompt every replica has seen decides nothing) and if its load (requests
this router has in flight there) is within ``imbalance`` of the least-loaded replica's. Otherwise
the least-loaded replica takes it, ties broken at random. Idle, the replica holding the longest
prefix takes every request; under load, new conversations spread and old ones stay put.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from llmserve.types import GenerationRequest

logger = logging.getLogger(__name__)

BLOCK = 16  # tokens per hashed block
MAX_BLOCKS = 200_000  # table size (least recently used blocks go first)


def block_hashes(tokens: tuple[int, ...]) -> list[int]:
    """Chained hashes of the full ``BLOCK``-token blocks of ``tokens`` (ints hash the same everywhere)."""
    out, previous = [], 0
    for end in range(BLOCK, len(tokens) + 1, BLOCK):
        previous = hash((previous, tokens[end - BLOCK:end]))
        out.append(previous)
    return out


def _request(pending: PendingRequest | None) -> GenerationRequest | None:
    if pending is None:
        return None
    for arg in pending.args:
        if isinstance(arg, GenerationRequest):
            return arg
    return None


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, imbalance: int = 2, **_: Any) -> None:
        self.imbalance = imbalance
        self._owners: collections.OrderedDict[int, set[ReplicaID]] = collections.OrderedDict()
        self._in_flight: collections.Counter[ReplicaID] = collections.Counter()
        self._routed: dict[str, ReplicaID] = {}  # internal request id -> replica, until completed

    def _load(self, replica: RunningReplica) -> int:
        return self._in_flight[replica.replica_id]

    def _affine(self, request: GenerationRequest, candidates: list[RunningReplica]) -> RunningReplica | None:
        hashes = block_hashes(request.prompt_tokens)
        ids = {r.replica_id: r for r in candidates}
        matched: dict[ReplicaID, int] = {}
        alive = set(ids)
        for n, h in enumerate(hashes, 1):
            owners = self._owners.get(h)
            if not owners:
                break
            holders = owners & alive
            if not holders:
                break
            for rid in holders:
                matched[rid] = n
            alive = holders
        if not matched:
            return None
        ranked = sorted(matched.items(), key=lambda kv: kv[1], reverse=True)
        best, blocks = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0
        if blocks <= runner_up:
            return None
        return ids[best]

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:  # every replica is ranked below: when all refuse, back off
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        by_load = sorted(candidate_replicas, key=lambda r: (self._load(r), random.random()))
        request = _request(pending_request)
        chosen = self._affine(request, candidate_replicas) if request is not None else None
        if chosen is not None and self._load(chosen) - self._load(by_load[0]) <= self.imbalance:
            return [[chosen], [r for r in by_load if r is not chosen]]
        return [[r] for r in by_load]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        request = _request(pending_request)
        if request is None:
            return
        self._in_flight[replica_id] += 1
        self._routed[pending_request.metadata.internal_request_id] = replica_id
        for h in block_hashes(request.prompt_tokens):
            owners = self._owners.get(h)
            if owners is None:
                self._owners[h] = {replica_id}
            else:
                owners.add(replica_id)
                self._owners.move_to_end(h)
        while len(self._owners) > MAX_BLOCKS:
            self._owners.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self._routed.pop(internal_request_id, None) is not None and self._in_flight[replica_id] > 0:
            self._in_flight[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._in_flight.pop(replica_id, None)
        for owners in self._owners.values():
            owners.discard(replica_id)
