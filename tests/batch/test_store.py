"""The job store and the transition table: an illegal status change cannot happen, a line's
result is recorded once, and the store survives a reopen (what a restart sees)."""

from __future__ import annotations

import pytest

from llmserve.batch.states import ACTIVE, TRANSITIONS, Status, legal
from llmserve.batch.store import IllegalTransition, JobStore


def test_openai_lifecycle_is_the_table():
    S = Status
    for path in ([S.VALIDATING, S.IN_PROGRESS, S.FINALIZING, S.COMPLETED], [S.VALIDATING, S.FAILED],
                 [S.VALIDATING, S.IN_PROGRESS, S.EXPIRED], [S.IN_PROGRESS, S.CANCELLING, S.CANCELLED],
                 [S.VALIDATING, S.CANCELLING]):
        assert all(legal(a, b) for a, b in zip(path, path[1:])), path
    assert not legal(S.COMPLETED, S.CANCELLING) and not legal(S.FINALIZING, S.CANCELLING)
    assert not legal(S.CANCELLED, S.IN_PROGRESS) and not legal(S.FAILED, S.IN_PROGRESS)
    assert ACTIVE == {S.VALIDATING, S.IN_PROGRESS, S.FINALIZING, S.CANCELLING}
    assert set(TRANSITIONS) == set(Status)


def test_illegal_transition_raises_and_changes_nothing(tmp_path):
    store = JobStore(tmp_path)
    source = store.add_file("me", "batch", "in.jsonl", b"{}\n")
    batch = store.create_batch("me", "/v1/chat/completions", source["id"], 86400, "24h", None)
    with pytest.raises(IllegalTransition):
        store.advance(batch["id"], Status.COMPLETED)  # validating -> completed is not in the table
    assert store.get_batch("me", batch["id"])["status"] == "validating"
    done = store.advance(batch["id"], Status.FAILED, errors='{"object": "list", "data": []}')
    assert done["status"] == "failed" and done["failed_at"] >= batch["created_at"]
    with pytest.raises(IllegalTransition):
        store.advance(batch["id"], Status.CANCELLING)


def test_results_are_recorded_once_and_survive_a_reopen(tmp_path):
    store = JobStore(tmp_path)
    source = store.add_file("me", "batch", "in.jsonl", b"{}\n")
    batch = store.create_batch("me", "/v1/chat/completions", source["id"], 86400, "24h", {"k": "v"})
    assert store.add_lines(batch["id"], [(0, "a", "{}"), (1, "b", "{}"), (2, "c", "{}")]) == 3
    assert store.record_line(batch["id"], 1, '{"custom_id": "b"}', True)
    assert not store.record_line(batch["id"], 1, '{"custom_id": "b", "again": 1}', True)
    assert store.record_line(batch["id"], 2, '{"custom_id": "c"}', False)
    store.close()
    again = JobStore(tmp_path)  # a restart
    row = again.get_batch("me", batch["id"])
    assert (row["total"], row["completed"], row["failed"]) == (3, 1, 1)
    assert [idx for idx, _, _ in again.pending_lines(batch["id"], skip=set(), limit=10)] == [0]
    assert again.results(batch["id"])[1] == (1, "b", '{"custom_id": "b"}', True)
    assert again.get_batch("someone-else", batch["id"]) is None
    assert again.get_file("someone-else", source["id"]) is None
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
