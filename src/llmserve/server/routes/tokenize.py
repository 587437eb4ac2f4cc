"""``POST /tokenize`` and ``POST /detokenize``, shaped as vLLM's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from llmserve.server.auth import require_api_key
from llmserve.server.convert import to_messages
from llmserve.server.deps import get_model
from llmserve.server.openapi import errors
from llmserve.server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizePromptRequest,
    TokenizeResponse,
)

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/tokenize", responses=errors(404, 503))
async def tokenize(body: TokenizePromptRequest | TokenizeChatRequest, request: Request) -> TokenizeResponse:
    model = get_model(request, body.model)
    engine = model.engine
    if isinstance(body, TokenizeChatRequest):
        text = engine.render_chat(to_messages(body.messages, model.name),
                                  add_generation_prompt=body.add_generation_prompt)
    else:
        text = body.prompt
    tokens = engine.tokenize(text, add_special=body.add_special_tokens)
    strs = [engine.detokenize([t]) for t in tokens] if body.return_token_strs else None
    return TokenizeResponse(count=len(tokens), max_model_len=engine.capabilities.max_context, tokens=tokens,
                            token_strs=strs)


@router.post("/detokenize", responses=errors(404, 503))
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = get_model(request, body.model)
    return DetokenizeResponse(prompt=model.engine.detokenize(body.tokens))
