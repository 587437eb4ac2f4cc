"""The batch lifecycle (OpenAI's), as one table of legal transitions.

validating -> in_progress -> finalizing -> completed; validating -> failed; in_progress ->
expired; validating | in_progress -> cancelling -> cancelled. ``JobStore.advance`` applies a
transition in one SQL statement guarded by this table, so an illegal one cannot happen, even
between processes racing on the same batch.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


S = Status
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.VALIDATING: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLING}),
    S.IN_PROGRESS: frozenset({S.FINALIZING, S.EXPIRED, S.CANCELLING}),
    S.FINALIZING: frozenset({S.COMPLETED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.FAILED: frozenset(),
    S.COMPLETED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}
ACTIVE = frozenset(s for s, nxt in TRANSITIONS.items() if nxt)  # a runner still has work to do
# the timestamp column each status sets when it is entered (validating: created_at)
STAMPED = {s: f"{s.value}_at" for s in Status if s not in (S.VALIDATING,)}


def sources(target: Status) -> tuple[Status, ...]:
    """The statuses ``target`` may be entered from."""
    return tuple(s for s, nxt in TRANSITIONS.items() if target in nxt)


def legal(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]
