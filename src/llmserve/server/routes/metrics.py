"""``GET /metrics``: Prometheus text format (unauthenticated, like /health, for scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmserve.server.deps import get_registry
from llmserve.server.metrics import get_metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    metrics = get_metrics(request)
    metrics.refresh(get_registry(request).models.values())
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        await jobs.refresh_metrics(metrics)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
