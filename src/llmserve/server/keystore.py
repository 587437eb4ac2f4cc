"""API keys kept hashed in a SQLite file (``--key-db``), managed with ``llmserve keys``.

A key is shown once, when it is created; the file only holds its SHA-256 (keys are 256 random
bits, so a fast hash is as safe as a slow one here, and lookups stay cheap). A presented key is
hashed, looked up by hash, and the stored hash compared with ``hmac.compare_digest``.
Each call opens its own connection, so the store may be used from any thread, and from the
CLI while a server runs: a revoked key stops working on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "sk-llms-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL,
    admin INTEGER NOT NULL DEFAULT 0
)
"""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the key itself). ``rpm``/``tpm``: None uses the server default,
    0 means unlimited for this key."""

    id: str
    name: str
    key_hint: str
    rpm: int | None
    tpm: int | None
    created_at: float
    revoked_at: float | None = None
    admin: bool = False  # may manage the server at run time (load and unload LoRA adapters)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            with conn:  # one transaction per call
                conn.execute(_SCHEMA)
                if "admin" not in {row["name"] for row in conn.execute("PRAGMA table_info(api_keys)")}:
                    conn.execute("ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")  # older stores
                yield conn

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               admin: bool = False) -> tuple[ApiKey, str]:
        """Stores a new key; returns it with the key in clear (the only time it exists)."""
        if not name.strip():
            raise ValueError("a key needs a non-empty name")
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 0:
                raise ValueError(f"{label} must be >= 0 (0: unlimited), got {value}")
        key = new_key()
        record = ApiKey(
            id=f"key_{uuid.uuid4().hex[:16]}", name=name.strip(), key_hint=key[: len(KEY_PREFIX) + 4] + "...",
            rpm=rpm, tpm=tpm, created_at=time.time(), admin=admin,
        )
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, name, key_hash, key_hint, rpm, tpm, created_at, admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.name, hash_key(key), record.key_hint, rpm, tpm, record.created_at, int(admin)),
            )
        return record, key

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = "SELECT * FROM api_keys" + ("" if include_revoked else " WHERE revoked_at IS NULL")
        with self._connect() as conn:
            return [_record(row) for row in conn.execute(query + " ORDER BY created_at")]

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        """Revokes the key with this id, or every active key with this name; returns them."""
        now = time.time()
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM api_keys WHERE revoked_at IS NULL AND (id = ? OR name = ?)", (id_or_name, id_or_name)
            ).fetchall()
            conn.executemany("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [(now, r["id"]) for r in rows])
        return [_record(r, revoked_at=now) for r in rows]

    def lookup(self, key: str) -> ApiKey | None:
        """The active key ``key`` is, or None."""
        presented = hash_key(key)
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (presented,)).fetchone()
        if row is None or not hmac.compare_digest(presented, row["key_hash"]):
            return None
        return _record(row)

    def any_limits(self) -> bool:
        """Whether an active key carries its own rate limit."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM api_keys WHERE revoked_at IS NULL AND (rpm > 0 OR tpm > 0) LIMIT 1"
            ).fetchone()
        return row is not None


def _record(row: sqlite3.Row, **changes) -> ApiKey:
    fields = {k: row[k] for k in ("id", "name", "key_hint", "rpm", "tpm", "created_at", "revoked_at")}
    return ApiKey(**{**fields, "admin": bool(row["admin"]), **changes})
