"""The job store: files and batches in SQLite (WAL mode), file contents as plain files.

Layout under the data directory: ``llmserve.db`` (tables ``files``, ``batches``, ``lines``) and
``files/<file id>``. A line's result is written in the same transaction that counts it, and only
while the line is still pending, so a result is recorded at most once whatever crashes or races;
the output files are rebuilt from the ``lines`` table (in input order) when a batch finishes.
Synchronous: every call runs on the one thread that owns the connection (``AsyncStore``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmserve.batch.states import ACTIVE, STAMPED, Status, sources

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL, status TEXT NOT NULL, metadata TEXT, errors TEXT,
    output_file_id TEXT, error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, expires_at INTEGER, in_progress_at INTEGER, finalizing_at INTEGER,
    completed_at INTEGER, failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
    result TEXT, ok INTEGER, PRIMARY KEY (batch_id, idx));
"""


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class IllegalTransition(Exception):
    """The batch was not in a status the target may be entered from (see ``states``)."""


class JobStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).expanduser()
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "llmserve.db"
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Transaction(self._db)

    # -- files ---------------------------------------------------------------------------------
    def path_of(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(self, owner: str, purpose: str, filename: str, source: Path | bytes,
                 file_id: str | None = None) -> dict[str, Any]:
        """Moves ``source`` (a temporary file) or writes ``source`` bytes in place, then records it.
        With ``file_id`` given the record is replaced (finalizing again after a crash)."""
        file_id = file_id or new_id("file-")
        path = self.path_of(file_id)
        if isinstance(source, bytes):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(source)
            os.replace(tmp, path)
        else:
            os.replace(source, path)
        size = path.stat().st_size
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                       (file_id, owner, purpose, filename, size, int(time.time())))
        return self.get_file(owner, file_id)

    def get_file(self, owner: str, file_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        return dict(row) if row else None

    def list_files(self, owner: str, *, purpose: str | None, after: str | None, limit: int,
                   newest_first: bool = True) -> tuple[list[dict[str, Any]], bool]:
        return self._page("files", owner, after, limit, newest_first,
                          ("purpose = ?", purpose) if purpose else None)

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._tx() as db:
            gone = db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount
        if gone:
            self.path_of(file_id).unlink(missing_ok=True)
        return bool(gone)

    # -- batches ---------------------------------------------------------------------------------
    def create_batch(self, owner: str, endpoint: str, input_file_id: str, completion_window_s: int,
                     completion_window: str, metadata: dict[str, str] | None) -> dict[str, Any]:
        batch_id = new_id("batch_")
        now = int(time.time())
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches (id, owner, endpoint, input_file_id, completion_window, status, metadata, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, owner, endpoint, input_file_id, completion_window, Status.VALIDATING.value,
                 json.dumps(metadata) if metadata is not None else None, now, now + completion_window_s))
        return self.get_batch(owner, batch_id)

    def get_batch(self, owner: str | None, batch_id: str) -> dict[str, Any] | None:
        if owner is None:  # the runner: any owner
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        else:
            row = self._db.execute("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner)).fetchone()
        return dict(row) if row else None

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return self._page("batches", owner, after, limit, True, None)

    def active_batches(self) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(ACTIVE))
        rows = self._db.execute(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY rowid",
                                [s.value for s in ACTIVE]).fetchall()
        return [dict(r) for r in rows]

    def advance(self, batch_id: str, target: Status, **fields: Any) -> dict[str, Any]:
        """Moves the batch to ``target`` if the transition table allows it from its current status,
        setting ``target``'s timestamp and ``fields``; raises ``IllegalTransition`` otherwise."""
        allowed = [s.value for s in sources(target)]
        values = {"status": target.value, **fields}
        if target in STAMPED:
            values[STAMPED[target]] = int(time.time())
        assignments = ", ".join(f"{k} = ?" for k in values)
        marks = ",".join("?" * len(allowed))
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE batches SET {assignments} WHERE id = ? AND status IN ({marks})",
                [*values.values(), batch_id, *allowed]).rowcount if allowed else 0
            if not changed:
                row = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
                raise IllegalTransition(f"batch {batch_id} cannot go from {row['status'] if row else 'nowhere'} "
                                        f"to {target.value}")
        return self.get_batch(None, batch_id)

    # -- lines ---------------------------------------------------------------------------------
    def add_lines(self, batch_id: str, lines: Iterable[tuple[int, str, str]]) -> int:
        """``(index, custom_id, body JSON)`` for every line (once, while validating)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM lines WHERE batch_id = ? LIMIT 1", (batch_id,)).fetchone():
                db.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))  # validating again after a crash
            db.executemany("INSERT INTO lines (batch_id, idx, custom_id, body) VALUES (?, ?, ?, ?)",
                           [(batch_id, *line) for line in lines])
            total = db.execute("SELECT COUNT(*) FROM lines WHERE batch_id = ?", (batch_id,)).fetchone()[0]
            db.execute("UPDATE batches SET total = ?, completed = 0, failed = 0 WHERE id = ?", (total, batch_id))
        return total

    def pending_lines(self, batch_id: str, *, skip: set[int], limit: int) -> list[tuple[int, str, str]]:
        rows = self._db.execute(
            "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND result IS NULL ORDER BY idx LIMIT ?",
            (batch_id, limit + len(skip))).fetchall()
        return [(r["idx"], r["custom_id"], r["body"]) for r in rows if r["idx"] not in skip][:limit]

    def record_line(self, batch_id: str, idx: int, result: str, ok: bool) -> bool:
        """Stores a finished line's output and counts it; False if it was already recorded."""
        with self._tx() as db:
            done = db.execute("UPDATE lines SET result = ?, ok = ? WHERE batch_id = ? AND idx = ? AND result IS NULL",
                              (result, int(ok), batch_id, idx)).rowcount
            if done:
                column = "completed" if ok else "failed"
                db.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
        return bool(done)

    def results(self, batch_id: str) -> list[tuple[int, str, str | None, bool]]:
        """``(index, custom_id, output line or None, ok)`` of every line, in input order."""
        rows = self._db.execute("SELECT idx, custom_id, result, ok FROM lines WHERE batch_id = ? ORDER BY idx",
                                (batch_id,)).fetchall()
        return [(r["idx"], r["custom_id"], r["result"], bool(r["ok"])) for r in rows]

    def line_counts(self) -> dict[str, int]:
        """Lines of active batches by state, for /metrics: pending and done (ok or failed)."""
        marks = ",".join("?" * len(ACTIVE))
        row = self._db.execute(
            "SELECT SUM(l.result IS NULL), SUM(l.ok = 1), SUM(l.ok = 0) FROM lines l JOIN batches b "
            f"ON l.batch_id = b.id WHERE b.status IN ({marks})", [s.value for s in ACTIVE]).fetchone()
        return {"pending": row[0] or 0, "completed": row[1] or 0, "failed": row[2] or 0}

    def batch_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}

    # -- paging ----------------------------------------------------------------------------------
    def _page(self, table: str, owner: str, after: str | None, limit: int, newest_first: bool,
              extra: tuple[str, Any] | None) -> tuple[list[dict[str, Any]], bool]:
        where, args = ["owner = ?"], [owner]
        if extra is not None:
            where.append(extra[0])
            args.append(extra[1])
        if after:
            op = "<" if newest_first else ">"
            where.append(f"rowid {op} (SELECT rowid FROM {table} WHERE id = ?)")
            args.append(after)
        order = "DESC" if newest_first else "ASC"
        rows = self._db.execute(f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY rowid {order} LIMIT ?",
                                [*args, limit + 1]).fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class AsyncStore:
    """The store on one owned thread: ``await store.call(JobStore.method, *args)`` never blocks the loop."""

    def __init__(self, data_dir: str | Path):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmserve-jobstore")
        self.sync: JobStore = self._pool.submit(JobStore, data_dir).result()

    async def call(self, fn, *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self.sync, *args, **kw))

    def close(self) -> None:
        self._pool.submit(self.sync.close).result()
        self._pool.shutdown()
