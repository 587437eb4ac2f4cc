"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from llmserve.server.deps import get_registry

router = APIRouter()


class ModelHealth(BaseModel):
    status: str  # ready | loading | failed
    running: int
    waiting: int


class HealthStatus(BaseModel):
    """The body of /health, 200 and 503 alike."""

    status: str  # ok | loading | error | draining
    models: dict[str, ModelHealth]


@router.get("/health", response_model=HealthStatus,
            responses={503: {"model": HealthStatus, "description": "A model is still loading, failed to load or stalled, or the server is draining (SIGTERM)"}})
async def health(request: Request) -> JSONResponse:
    """200 when every model is loaded, 503 while loading, when one failed to load, when one's
    engine stalled (work in flight and no step finished for ``--watchdog-timeout`` seconds), or
    while the server drains for a restart (SIGTERM)."""
    registry = get_registry(request)
    models = {}
    stalled = False
    for name, model in registry.models.items():
        stats = model.engine.stats()
        state = "failed" if name in registry.failures else "ready" if model.ready else "loading"
        if state == "ready" and model.stalled:  # the watchdog: work in flight, no step finished
            state, stalled = "stalled", True
        models[name] = {"status": state, "running": stats.running, "waiting": stats.waiting}
        if state == "stalled":
            models[name]["stalled_for_s"] = round(model.stalled_for(), 1)
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        status, code = "draining", 503  # SIGTERM: balancers stop sending here
    elif registry.failures or stalled:
        status, code = "error", 503
    elif registry.ready:
        status, code = "ok", 200
    else:
        status, code = "loading", 503
    return JSONResponse({"status": status, "models": models}, status_code=code)
