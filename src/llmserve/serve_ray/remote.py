"""The ingress's engine: the ``Engine`` interface over a streaming ``DeploymentHandle``.

Routes and ``AsyncChatModel`` stay as they are: they tokenize and render with the local
vocabulary (``vocab.py``) and iterate ``generate`` as from any engine. Admission errors surface
at the first ``__anext__``, before a route commits to 200: past ``limit`` requests in flight, or
on Serve's ``BackPressureError`` (the handle's queue is full), llmserve's ``Overloaded`` (503 +
Retry-After; see ``sizing.py``). A replica that
dies mid-stream fails only its own streams, with ``EngineError`` (the SSE error event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from llmserve.engines.base import Engine
from llmserve.errors import EngineError, ModelLoading, Overloaded
from llmserve.serve_ray.vocab import Vocabulary, load_vocabulary
from llmserve.serve_ray.wire import Chunk, error_from_wire
from llmserve.settings import ModelSettings
from llmserve.types import Capabilities, Delta, EngineStats, GenerationRequest, Message

logger = logging.getLogger(__name__)

OnFirstChunk = Callable[[str, float, Chunk], None]  # model name, ttft seen by the ingress, first chunk


class RemoteEngine(Engine):
    def __init__(self, settings: ModelSettings, handle: Any, limit: int, on_first_chunk: OnFirstChunk | None = None):
        """``limit``: requests that may be in flight at once (``sizing.in_flight_limit``)."""
        self.settings = settings
        self.handle = handle
        self.limit = limit
        self.on_first_chunk = on_first_chunk
        self.vocab: Vocabulary | None = None
        self._capabilities: Capabilities | None = None
        self._waiting = 0
        self._running = 0

    async def start(self) -> None:
        self.vocab = await asyncio.to_thread(load_vocabulary, self.settings)
        described = await self.handle.describe.remote()  # waits for a replica to be up
        self._capabilities = described["capabilities"]

    async def stop(self) -> None:
        if self.vocab is not None:
            self.vocab.close()
            self.vocab = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        from ray.exceptions import RayError
        from ray.serve.exceptions import BackPressureError, RayServeException

        if self._waiting + self._running >= self.limit:
            raise Overloaded("every replica is busy and the queue is full; try again shortly", retry_after=1)
        submitted = time.monotonic()
        responses = self.handle.options(stream=True).generate.remote(request)
        self._waiting += 1
        started = finished = False
        try:
            async for chunk in responses:
                if not started:
                    started = True
                    self._waiting -= 1
                    self._running += 1
                    self._first_chunk(request, submitted, chunk)
                if chunk.error is not None:
                    finished = True
                    raise error_from_wire(chunk.error)
                for delta in chunk.deltas:
                    finished = finished or delta.finish_reason is not None
                    yield delta
                if finished:
                    return
            finished = True
            raise EngineError("the replica ended the stream without finishing the request")
        except BackPressureError:
            finished = True
            raise Overloaded("every replica is busy and the queue is full; try again shortly", retry_after=1) from None
        except (RayError, RayServeException) as exc:
            finished = True
            logger.warning("request %s failed in Ray: %s", request.request_id, type(exc).__name__)
            raise EngineError("the replica serving this request failed") from exc
        finally:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            if not finished:  # the client left: cancel the call, which aborts it in the replica's engine
                responses.cancel()

    def _first_chunk(self, request: GenerationRequest, submitted: float, chunk: Chunk) -> None:
        now = time.monotonic()
        if chunk.engine_queue is not None and chunk.engine_ttft is not None:
            # when the engine began the request, on this process's clock: the queue time the
            # ingress reports includes the wait for a replica at the handle
            request.timing.started_at = now - (chunk.engine_ttft - chunk.engine_queue)
        if self.on_first_chunk is not None:
            self.on_first_chunk(self.settings.served_name(), now - submitted, chunk)

    async def abort(self, request_id: str) -> None:
        """Requests are aborted by closing their stream (which cancels the call)."""

    # -- model facts (local) ----------------------------------------------------------------------
    def _require(self) -> Vocabulary:
        if self.vocab is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.vocab

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self._require().tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._require().detokenize(token_ids)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._require().render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            return Capabilities(sampling=frozenset(), max_context=0)
        return self._capabilities

    def stats(self) -> EngineStats:
        """Requests in flight through this ingress: waiting for their first chunk, or streaming."""
        return EngineStats(loaded=self._capabilities is not None, running=self._running, waiting=self._waiting)
