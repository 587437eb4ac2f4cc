"""Typed accessors for what the app factory put on ``app.state``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from llmserve.chat_model import AsyncChatModel
from llmserve.server.registry import ModelRegistry
from llmserve.settings import Settings

if TYPE_CHECKING:
    from llmserve.server.keystore import KeyStore
    from llmserve.server.ratelimit import RateLimiter


def get_registry(conn: HTTPConnection) -> ModelRegistry:
    return conn.app.state.registry


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


def get_model(conn: HTTPConnection, name: str | None) -> AsyncChatModel:
    """The model a request names (404 if unknown, 503 while loading), remembered on
    ``conn.state.model_name`` so metrics can label a later rejection with it."""
    registry = get_registry(conn)
    if name in registry.models:
        conn.state.model_name = name
    model = registry.get(name)
    conn.state.model_name = model.name
    return model


# -- API keys and rate limits ---------------------------------------------------------------------
def get_keystore(conn: HTTPConnection) -> KeyStore | None:
    return conn.app.state.keystore


def get_rate_limiter(conn: HTTPConnection) -> RateLimiter:
    return conn.app.state.rate_limiter
