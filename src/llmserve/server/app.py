"""The app factory. The lifespan owns the models; nothing lives at module level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmserve import __version__
from llmserve.chat_model import AsyncChatModel
from llmserve.server.errors import install_error_handlers
from llmserve.server import openapi
from llmserve.server.metrics import Metrics
from llmserve.server.middleware import BodyLimitMiddleware, RequestIdMiddleware
from llmserve.server.registry import ModelRegistry
from llmserve.server.routes import completions, embeddings, health, lora, metrics, openai, tokenize, web
from llmserve.settings import Settings
from llmserve.workpool import WorkPool

# -- API keys, rate limits, simple and WebSocket routes
from llmserve.server.keystore import KeyStore
from llmserve.server.ratelimit import RateLimiter, RateLimitHeadersMiddleware
from llmserve.server.routes import simple, ws

# -- batch jobs and graceful shutdown
from llmserve.batch import dispatch
from llmserve.server.drain import Drain, DrainMiddleware
from llmserve.server.jobs import Jobs
from llmserve.server.routes import batches, files

UPLOAD_OVERHEAD = 64 * 1024  # multipart framing around an uploaded file


def create_app(settings: Settings | None = None, *, models: list[AsyncChatModel] | None = None) -> FastAPI:
    """``models`` overrides the ones ``settings`` describes (tests pass fake-engine models)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = models if models is not None else [AsyncChatModel(settings=m) for m in settings.model_list()]
        # one bounded pool for the CPU work of every request (parsing, rendering, tokenizing)
        pool = WorkPool(settings.cpu_workers, settings.cpu_queue)
        app.state.work_pool = pool
        for model in chosen:
            model.pool = pool
        registry = ModelRegistry(chosen)
        app.state.registry = registry
        for name in registry.models:
            app.state.metrics.add_model(name)
        await app.state.rate_limiter.start()
        await registry.start()
        app.state.jobs = Jobs(settings, registry, app, app.state.drain)
        app.state.jobs.start()
        try:
            yield
        finally:
            await app.state.jobs.aclose()  # batch lines in flight stay pending: they run after a restart
            await registry.aclose()
            pool.close()
            await app.state.rate_limiter.aclose()
            app.state.metrics.close()

    app = FastAPI(title="llmserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()  # a registry per app: several apps can live in one process
    app.state.keystore = KeyStore(settings.key_db) if settings.key_db else None
    app.state.rate_limiter = RateLimiter(settings)
    app.state.drain = Drain()
    install_error_handlers(app)
    openapi.install(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(metrics.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize.router)
    app.include_router(lora.router)
    app.include_router(simple.router)
    app.include_router(ws.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    if settings.web_ui:
        app.include_router(web.router)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       path_limits={"/v1/files": settings.batch_max_file_bytes + UPLOAD_OVERHEAD})
    app.add_middleware(DrainMiddleware, drain=app.state.drain, internal_key=dispatch.SCOPE_KEY)
    app.add_middleware(RequestIdMiddleware)
    return app


def create_app_from_env() -> FastAPI:
    """The app from ``LLMSERVE_*`` variables: the factory each uvicorn worker process calls
    (``llmserve serve`` passes its settings down through the environment)."""
    from llmserve.log import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)  # worker processes start with logging unconfigured
    return create_app(settings)
