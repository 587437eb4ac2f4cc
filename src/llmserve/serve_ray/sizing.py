"""How many replicas, slots and waiting requests a model gets under ``--ray`` (no Ray here).

Admission: a replica takes ``--parallel`` requests at once (Serve's ``max_ongoing_requests``, the
engine's slots); beyond every replica's slots, ``--max-queued`` requests (default ``--max-queue``)
may wait, and the next one is answered 503 with Retry-After. The ingress counts its requests in
flight exactly and refuses there; Serve's ``max_queued_requests`` is the same total as a backstop
(its ``BackPressureError`` is also a 503): on its own it counts every request not yet assigned to
a replica, so a burst arriving while slots are free would be refused for a moment.
"""

from __future__ import annotations

from llmserve.settings import ModelSettings, Settings


def parse_autoscale(spec: str) -> tuple[int, int]:
    lo, sep, hi = spec.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi):
        raise ValueError(f"--autoscale wants MIN:MAX with 1 <= MIN <= MAX, got {spec!r}")
    return int(lo), int(hi)


def most_replicas(settings: Settings) -> int:
    return parse_autoscale(settings.autoscale)[1] if settings.autoscale else settings.replicas


def queued(model: ModelSettings, settings: Settings) -> int:
    return settings.max_queued if settings.max_queued is not None else model.max_queue


def in_flight_limit(model: ModelSettings, settings: Settings) -> int:
    """Requests of ``model`` that may be running or waiting at once; the next one is refused."""
    return most_replicas(settings) * model.slots() + queued(model, settings)
