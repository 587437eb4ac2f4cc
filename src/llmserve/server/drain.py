"""Graceful shutdown: drain in-flight requests, then end what is left properly.

On the first SIGTERM (``server/serving.py``) the app starts draining: ``/health`` answers 503
``draining`` at once, new API requests get 503 ``server_shutting_down``, the batch runner starts
no new line, and in-flight requests get ``--shutdown-timeout`` seconds to finish. Past that,
every generation still running ends at its next step with ``ServerShuttingDown``: streams send it
as an SSE error event followed by ``[DONE]``, non-streaming requests answer 503. Then the server
exits; batch lines that were in flight are still pending in the job store and run after the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Receive, Scope, Send

from llmserve.errors import ServerShuttingDown
from llmserve.types import Delta

logger = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/metrics")  # still answered while draining
AFTER_DEADLINE_S = 10.0  # how long ended streams get to send their error event and [DONE]


class Drain:
    """The app's shutdown state; one per app (on ``app.state.drain``)."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False  # the deadline passed: running generations end now
        self.inflight = 0  # HTTP requests being answered (batch lines and WebSockets not included)
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def run(self, timeout: float) -> None:
        """Drains: waits up to ``timeout`` for in-flight requests, then ends the rest."""
        self.draining = True
        t0 = time.monotonic()
        logger.info("draining: %d request(s) in flight, up to %.0f s to finish", self.inflight, timeout)
        if not await self._wait_idle(timeout):
            logger.warning("shutdown timeout reached: ending %d request(s) in flight with server_shutting_down",
                           self.inflight)
            self.expired = True
            if not await self._wait_idle(AFTER_DEADLINE_S):
                logger.error("%d request(s) did not end; stopping anyway", self.inflight)
        logger.info("drained in %.1f s", time.monotonic() - t0)

    async def _wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def shutting_down() -> ServerShuttingDown:
    return ServerShuttingDown("The server is shutting down; retry the request on another instance "
                              "or in a moment.", retry_after=5)


async def until_drained(drain: Drain, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """``deltas`` unchanged, unless the drain deadline passes first: then ``ServerShuttingDown``
    at the next step (closing ``deltas`` aborts the generation)."""
    try:
        async for delta in deltas:
            if drain.expired and delta.finish_reason is None:
                raise shutting_down()
            yield delta
    finally:
        await deltas.aclose()


class DrainMiddleware:
    """Counts HTTP requests in flight and refuses new ones (503) while draining."""

    def __init__(self, app: ASGIApp, drain: Drain, *, internal_key: str):
        self.app = app
        self.drain = drain
        self.internal_key = internal_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.internal_key in scope or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            return await self._refuse(send)
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()

    @staticmethod
    async def _refuse(send: Send) -> None:
        from llmserve.server.errors import error_payload

        exc = shutting_down()
        body = json.dumps(error_payload(exc)).encode()
        await send({"type": "http.response.start", "status": exc.status_code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"5"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
