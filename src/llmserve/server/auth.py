"""API keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` on every API route."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from llmserve.errors import Unauthorized
from llmserve.server.deps import get_settings


def presented_key(conn: HTTPConnection) -> str | None:
    auth = conn.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return conn.headers.get("x-api-key") or None


async def require_api_key(conn: HTTPConnection) -> str | None:
    """FastAPI dependency: passes when no keys are configured, else needs a configured key."""
    keys = get_settings(conn).api_keys
    if not keys:
        return None
    key = presented_key(conn)
    if key is None:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer KEY'.")
    # compare against every key in constant time, so timing tells nothing about which one matched
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Unauthorized("Incorrect API key provided.")
    return key
