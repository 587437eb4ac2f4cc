"""Typed accessors for what the app factory put on ``app.state``."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from llmserve.server.registry import ModelRegistry
from llmserve.settings import Settings


def get_registry(conn: HTTPConnection) -> ModelRegistry:
    return conn.app.state.registry


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings
