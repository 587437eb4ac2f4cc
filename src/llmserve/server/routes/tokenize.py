"""``POST /tokenize`` and ``POST /detokenize``, shaped as vLLM's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from llmserve.server.auth import require_api_key
from llmserve.server.body import JSONBodyRoute
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

router = APIRouter(dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)


@router.post("/tokenize", responses=errors(404, 503))
async def tokenize(body: TokenizePromptRequest | TokenizeChatRequest, request: Request) -> TokenizeResponse:
    """A chat is rendered and tokenized as for generation (message content as text unless
    ``--allow-special-tokens-in-content``); a raw prompt parses its special-token strings, as
    /v1/completions does. ``content_special_tokens`` says which. The work runs in the app's pool."""
    model = get_model(request, body.model)
    engine = model.engine

    def work() -> tuple[list[int], list[str] | None]:
        if isinstance(body, TokenizeChatRequest):
            prompt = model.render(to_messages(body.messages, model.name),
                                  add_generation_prompt=body.add_generation_prompt)
            tokens = model.tokenize_prompt(prompt, add_special=body.add_special_tokens)
        else:
            tokens = engine.tokenize(body.prompt, add_special=body.add_special_tokens)
        strs = [engine.detokenize([t]) for t in tokens] if body.return_token_strs else None
        return tokens, strs

    tokens, strs = await model.run_blocking(work)
    mode = "text" if isinstance(body, TokenizeChatRequest) and model.content_is_text else "control"
    return TokenizeResponse(count=len(tokens), max_model_len=engine.capabilities.max_context, tokens=tokens,
                            token_strs=strs, content_special_tokens=mode)


@router.post("/detokenize", responses=errors(404, 503))
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = get_model(request, body.model)
    return DetokenizeResponse(prompt=await model.run_blocking(model.engine.detokenize, body.tokens))
