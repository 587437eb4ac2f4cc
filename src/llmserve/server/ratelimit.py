"""Per-key rate limits: requests per minute and tokens per minute, counted with ``limits``.

Counters are fixed one-minute windows (a window opens at a key's first request) kept in process
memory, or in Redis (``--redis-url``) so that every worker process shares them. A request is
admitted when the key has tokens left in its window and one request to spend; its tokens
(prompt + completion) are charged when generation ends, so one request may overdraw the token
budget and the next ones wait for the window to reset. Limits come from the key (key store
``--rpm/--tpm``), else from ``--rate-limit-rpm/--rate-limit-tpm``; 0 on a key means unlimited.
Every response to a limited route carries OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.batch.dispatch import internal_call
from llmserve.errors import Overloaded, RateLimited
from llmserve.server.auth import Identity, require_api_key
from llmserve.server.deps import get_rate_limiter
from llmserve.settings import Settings
from llmserve.types import Delta

logger = logging.getLogger(__name__)
STATE_KEY = "rate_limit"


@dataclass
class Window:
    """One limit as the ``x-ratelimit-*`` headers describe it."""

    limit: int
    remaining: int
    reset_s: float  # seconds until the window resets


@dataclass
class Quota:
    requests: Window | None = None
    tokens: Window | None = None
    blocked_by: str | None = None  # "requests" or "tokens" when over the limit

    @property
    def retry_after(self) -> float:
        window = self.requests if self.blocked_by == "requests" else self.tokens
        return max(1.0, math.ceil(window.reset_s)) if window else 1.0

    def headers(self) -> dict[str, str]:
        out = {}
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
                out[f"x-ratelimit-reset-{kind}"] = format_duration(window.reset_s)
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class RateLimiter:
    """Owned by the app's lifespan: ``start`` opens the storage, ``aclose`` flushes charges."""

    def __init__(self, settings: Settings):
        self.default_rpm = settings.rate_limit_rpm
        self.default_tpm = settings.rate_limit_tpm
        self.redis_url = settings.redis_url
        self._storage: Storage | None = None
        self._limiter: FixedWindowRateLimiter | None = None
        self._pool = None
        self._charges: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self.redis_url:
            import redis.asyncio

            self._pool = redis.asyncio.ConnectionPool.from_url(self.redis_url)
            self._storage = RedisStorage(
                "async+" + self.redis_url, implementation="redispy", wrap_exceptions=True,
                key_prefix="llmserve", connection_pool=self._pool,
            )
            if not await self._storage.check():
                raise RuntimeError(f"cannot reach Redis at {self.redis_url} for rate limits")
        else:
            self._storage = MemoryStorage(wrap_exceptions=True)
        self._limiter = FixedWindowRateLimiter(self._storage)

    async def aclose(self) -> None:
        if self._charges:
            await asyncio.gather(*self._charges, return_exceptions=True)
        if self._pool is not None:
            await self._pool.disconnect()

    def _items(self, identity: Identity) -> tuple[RateLimitItem | None, RateLimitItem | None]:
        def item(own: int | None, default: int | None, kind: str) -> RateLimitItem | None:
            amount = default if own is None else own
            return RateLimitItemPerMinute(amount, namespace=kind) if amount else None

        return item(identity.rpm, self.default_rpm, "rpm"), item(identity.tpm, self.default_tpm, "tpm")

    def counts_tokens(self, identity: Identity) -> bool:
        return self._items(identity)[1] is not None

    async def admit(self, identity: Identity) -> Quota:
        """Spends one request if the key has requests and tokens left; ``blocked_by`` says which ran out."""
        rpm, tpm = self._items(identity)
        quota = Quota()
        if rpm is None and tpm is None:
            return quota
        assert self._limiter is not None, "rate limiter not started"
        try:
            if tpm is not None:
                quota.tokens = await self._window(tpm, identity)
                if quota.tokens.remaining <= 0:
                    quota.blocked_by = "tokens"
            if rpm is not None:
                if quota.blocked_by is None and not await self._limiter.hit(rpm, identity.subject):
                    quota.blocked_by = "requests"
                quota.requests = await self._window(rpm, identity)
        except StorageError as exc:
            logger.error("rate-limit storage failed: %s", exc)
            raise Overloaded("rate limits cannot be checked right now", code="rate_limiter_unavailable") from None
        return quota

    async def _window(self, item: RateLimitItem, identity: Identity) -> Window:
        assert self._limiter is not None
        stats = await self._limiter.get_window_stats(item, identity.subject)
        return Window(item.amount, stats.remaining, max(0.0, stats.reset_time - time.time()))

    def charge(self, identity: Identity, tokens: int) -> None:
        """Counts ``tokens`` against the key's token budget (in the background; ``aclose`` waits)."""
        tpm = self._items(identity)[1]
        if tpm is None or tokens <= 0 or self._limiter is None:
            return
        task = asyncio.ensure_future(self._charge(tpm, identity.subject, tokens))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def _charge(self, item: RateLimitItem, subject: str, tokens: int) -> None:
        assert self._limiter is not None
        try:
            await self._limiter.hit(item, subject, cost=tokens)
        except StorageError as exc:
            logger.error("could not charge %d tokens to %s: %s", tokens, subject, exc)


async def metered(limiter: RateLimiter, identity: Identity, prompt_tokens: int,
                  deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """``deltas`` unchanged; when they end (finished, failed or closed early) the tokens used are
    charged: the engine's usage when it reported one, else the prompt plus the tokens seen."""
    seen = 0
    usage = None
    started = False
    try:
        async for delta in deltas:
            started = True
            seen += len(delta.token_ids)
            usage = delta.usage or usage
            yield delta
    finally:
        await deltas.aclose()
        if started:
            limiter.charge(identity, usage.total_tokens if usage else prompt_tokens + seen)


# -- HTTP glue ------------------------------------------------------------------------------------
async def rate_limit(conn: HTTPConnection) -> Quota:
    """FastAPI dependency for generation routes: authenticates, then admits or raises 429."""
    identity = getattr(conn.state, "identity", None) or await require_api_key(conn)
    if internal_call(conn.scope) is not None:
        return Quota()  # batch lines: the batch's own budget, not the key's live limits (as OpenAI)
    quota = await get_rate_limiter(conn).admit(identity)
    setattr(conn.state, STATE_KEY, quota)
    if quota.blocked_by is not None:
        raise RateLimited(f"Rate limit reached for {quota.blocked_by} per minute on this API key. "
                          f"Try again in {format_duration(quota.retry_after)}.", retry_after=quota.retry_after)
    return quota


def meter(conn: HTTPConnection, prompt_tokens: int, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Wraps a request's deltas so its tokens are charged to the caller (a no-op without a token limit)."""
    identity: Identity | None = getattr(conn.state, "identity", None)
    limiter = get_rate_limiter(conn)
    if identity is None or not limiter.counts_tokens(identity) or internal_call(conn.scope) is not None:
        return deltas
    return metered(limiter, identity, prompt_tokens, deltas)


class RateLimitHeadersMiddleware:
    """Adds the ``x-ratelimit-*`` headers of the request's quota to its response (429s included)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            quota = state.get(STATE_KEY)
            if message["type"] == "http.response.start" and quota is not None:
                headers = MutableHeaders(scope=message)
                for name, value in quota.headers().items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
