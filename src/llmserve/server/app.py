"""The app factory. The lifespan owns the models; nothing lives at module level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmserve import __version__
from llmserve.chat_model import AsyncChatModel
from llmserve.server.errors import install_error_handlers
from llmserve.server.metrics import Metrics
from llmserve.server.middleware import BodyLimitMiddleware, RequestIdMiddleware
from llmserve.server.registry import ModelRegistry
from llmserve.server.routes import completions, embeddings, health, metrics, openai, tokenize, web
from llmserve.settings import Settings


def create_app(settings: Settings | None = None, *, models: list[AsyncChatModel] | None = None) -> FastAPI:
    """``models`` overrides the ones ``settings`` describes (tests pass fake-engine models)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = models if models is not None else [AsyncChatModel(settings=m) for m in settings.model_list()]
        registry = ModelRegistry(chosen)
        app.state.registry = registry
        for name in registry.models:
            app.state.metrics.add_model(name)
        await registry.start()
        try:
            yield
        finally:
            await registry.aclose()
            app.state.metrics.close()

    app = FastAPI(title="llmserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()  # a registry per app: several apps can live in one process
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(metrics.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize.router)
    if settings.web_ui:
        app.include_router(web.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
