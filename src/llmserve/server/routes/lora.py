"""``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``: LoRA adapters at run time,
shaped as vLLM's (plain-text answers), for admin keys only."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from llmserve.errors import InvalidRequest
from llmserve.lora import AdapterSpec
from llmserve.server.auth import require_admin
from llmserve.server.body import JSONBodyRoute
from llmserve.server.deps import get_registry
from llmserve.server.openapi import errors
from llmserve.server.protocol import LoadLoraAdapterRequest, UnloadLoraAdapterRequest

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], route_class=JSONBodyRoute)
TEXT = {200: {"description": "Success (plain text, as vLLM answers)", "content": {"text/plain": {}}}}


@router.post("/load_lora_adapter", response_model=None, responses={**TEXT, **errors(404, 503)})
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    """Loads a LoRA adapter onto a served model, served as ``lora_name`` from now on (checked
    against the model first: a 400 names ``lora_path`` when it does not fit)."""
    registry = get_registry(request)
    if body.lora_name in registry.models:
        raise InvalidRequest(f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name")
    base = registry.get(registry.base_for(body.base_model_name).name)  # 503 while the base loads
    await base.engine.load_adapter(AdapterSpec(body.lora_name, Path(body.lora_path)))
    if body.lora_name in registry.models:  # a concurrent load took the name meanwhile
        raise InvalidRequest(f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name")
    registry.add_adapter(base, body.lora_name)
    request.app.state.metrics.add_model(body.lora_name)
    logger.info("LoRA adapter %s loaded on %s from %s", body.lora_name, base.name, body.lora_path)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_model=None, responses={**TEXT, **errors(404)})
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    """Requests can no longer name the adapter; those running finish under it."""
    registry = get_registry(request)
    view = registry.remove_adapter(body.lora_name)
    try:
        await view.base.engine.unload_adapter(body.lora_name)
    except Exception:
        registry.models.setdefault(body.lora_name, view)
        raise
    logger.info("LoRA adapter %s unloaded", body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
