"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmserve.server.deps import get_registry

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when every model is loaded, 503 while loading, when one failed to load, or while draining."""
    registry = get_registry(request)
    models = {}
    for name, model in registry.models.items():
        stats = model.engine.stats()
        state = "failed" if name in registry.failures else "ready" if model.ready else "loading"
        models[name] = {"status": state, "running": stats.running, "waiting": stats.waiting}
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        status, code = "draining", 503  # SIGTERM: balancers stop sending here
    elif registry.failures:
        status, code = "error", 503
    elif registry.ready:
        status, code = "ok", 200
    else:
        status, code = "loading", 503
    return JSONResponse({"status": status, "models": models}, status_code=code)
