"""API keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` on every API route.

Keys come from ``--api-key`` (settings) and from the key store (``--key-db``). WebSockets may
also pass the key as ``?api_key=KEY`` (browsers cannot set headers on a WebSocket). Who the
caller is (``Identity``) is also what rate limits count against.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import anyio.to_thread
from starlette.requests import HTTPConnection

from llmserve.batch.dispatch import internal_call
from llmserve.errors import Forbidden, Unauthorized
from llmserve.server.deps import get_keystore, get_settings
from llmserve.server.keystore import hash_key


@dataclass(frozen=True)
class Identity:
    """The caller. ``subject`` keys its rate-limit counters (never the key in clear);
    ``rpm``/``tpm``: None uses the server default, 0 means unlimited."""

    subject: str
    name: str
    rpm: int | None = None
    tpm: int | None = None
    admin: bool = False  # a key store key created with --admin


def presented_key(conn: HTTPConnection) -> str | None:
    auth = conn.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = conn.headers.get("x-api-key")
    if not key and conn.scope["type"] == "websocket":
        key = conn.query_params.get("api_key")
    return key or None


async def authenticate(conn: HTTPConnection) -> Identity:
    """Who is calling; raises ``Unauthorized`` when keys are required and this one is not valid."""
    internal = internal_call(conn.scope)
    if internal is not None:  # a batch line, on behalf of the key that created the batch
        return Identity(subject=internal.owner, name="batch")
    settings = get_settings(conn)
    if not settings.auth_required:
        host = conn.client.host if conn.client else "unknown"
        return Identity(subject=f"addr:{host}", name="anonymous")
    key = presented_key(conn)
    if key is None:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer KEY'.")
    presented = hash_key(key)
    # compare against every configured key in constant time, so timing tells nothing about which one matched
    matched = False
    for candidate in settings.api_keys:
        matched |= hmac.compare_digest(presented, hash_key(candidate))
    if matched:
        return Identity(subject=f"cli:{presented[:16]}", name="--api-key")
    store = get_keystore(conn)
    if store is not None:
        record = await anyio.to_thread.run_sync(store.lookup, key)
        if record is not None:
            return Identity(subject=f"key:{record.id}", name=record.name, rpm=record.rpm, tpm=record.tpm,
                            admin=record.admin)
    raise Unauthorized("Incorrect API key provided.")


def owner_of(identity: Identity) -> str:
    """Whose files and batches these are: the key's subject, or one shared owner without auth."""
    return "anonymous" if identity.subject.startswith("addr:") else identity.subject


async def require_api_key(conn: HTTPConnection) -> Identity:
    """FastAPI dependency: the caller's identity (also kept on ``conn.state.identity``)."""
    identity = await authenticate(conn)
    conn.state.identity = identity
    return identity


async def require_admin(conn: HTTPConnection) -> Identity:
    """FastAPI dependency for run-time management: a key store key created with ``--admin``."""
    identity = await require_api_key(conn)
    if not identity.admin:
        raise Forbidden("This needs an admin key: create one with 'llmserve keys create --admin' "
                        "(and serve with --key-db).")
    return identity
