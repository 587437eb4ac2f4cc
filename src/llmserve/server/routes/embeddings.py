"""``POST /v1/embeddings``: OpenAI's shape, float or base64 vectors, from any engine's ``embedder``."""

from __future__ import annotations

import base64
import logging
import struct

from fastapi import APIRouter, Depends, Request

from llmserve.errors import InvalidRequest, UnsupportedParameter
from llmserve.server.auth import require_api_key
from llmserve.server.body import JSONBodyRoute
from llmserve.server.deps import get_model
from llmserve.server.openapi import errors
from llmserve.server.protocol import EmbeddingData, EmbeddingList, EmbeddingRequest, EmbeddingUsage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)

MAX_INPUTS = 2048  # OpenAI's limit


@router.post("/embeddings", responses=errors(404, 503))
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    model = get_model(request, body.model)
    embedder = model.engine.embedder
    if embedder is None:
        raise InvalidRequest(f"model {model.name!r} does not support embeddings", param="model")
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise UnsupportedParameter(
            f"dimensions: model {model.name!r} only produces {embedder.dimensions}-dimensional embeddings",
            param="dimensions")
    inputs = _inputs(body.input)
    result = await embedder.aembed(inputs)
    logger.info("embeddings: %d input(s), %d tokens", len(inputs), result.prompt_tokens)
    data = [EmbeddingData(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(result.vectors)]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model.name, usage=usage)


def _inputs(value: str | list) -> list:
    if isinstance(value, str):
        inputs: list = [value]
    elif value and all(isinstance(v, int) for v in value):
        inputs = [value]  # one input given as token ids
    else:
        inputs = list(value)
    if not inputs:
        raise InvalidRequest("input must not be empty", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"at most {MAX_INPUTS} inputs per request", param="input")
    if any(isinstance(v, str) and not v for v in inputs):
        raise InvalidRequest("input must not contain empty strings", param="input")
    return inputs


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
