"""Compiles constraints off the event loop (a small bounded pool, never the decode thread) and
caches the compiled grammars by (kind, spec), so a schema sent again costs nothing."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from llmserve.errors import InvalidRequest
from llmserve.structured.backend import Grammar, GrammarBackend, GrammarError
from llmserve.structured.guide import Guide
from llmserve.types import Constraint

logger = logging.getLogger(__name__)


class GrammarCompiler:
    """One per engine. ``backend_factory`` builds the backend on first use (reading the
    vocabulary takes a moment, so models that never see a constraint never pay it)."""

    def __init__(self, backend_factory: Callable[[], GrammarBackend], *, workers: int = 2, cache_size: int = 256):
        self._factory = backend_factory
        self._backend: GrammarBackend | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmserve-grammar")
        self._cache: collections.OrderedDict[tuple[str, str], asyncio.Future] = collections.OrderedDict()
        self._cache_size = cache_size

    @property
    def backend(self) -> GrammarBackend:
        """Blocking on first use; the compile pool calls it before the decode thread needs it."""
        with self._lock:
            if self._backend is None:
                t0 = time.monotonic()
                self._backend = self._factory()
                logger.info("grammar backend ready in %.0f ms", 1000 * (time.monotonic() - t0))
            return self._backend

    def compile_blocking(self, constraint: Constraint) -> Grammar:
        t0 = time.monotonic()
        grammar = self.backend.compile(constraint)
        logger.debug("compiled a %s constraint in %.1f ms", constraint.kind, 1000 * (time.monotonic() - t0))
        return grammar

    async def compile(self, constraint: Constraint) -> Grammar:
        """The compiled grammar; ``InvalidRequest(param="response_format")`` with the compiler's
        reason when it cannot compile."""
        key = (constraint.kind, constraint.spec)
        fut = self._cache.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self.compile_blocking, constraint)
            self._cache[key] = fut
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        try:
            return await asyncio.shield(fut)
        except GrammarError as exc:
            raise InvalidRequest(f"the {constraint.kind} constraint cannot be compiled: {exc}",
                                 param="response_format") from None
        except Exception:
            self._cache.pop(key, None)  # not the grammar's fault: try again next time
            raise

    async def guide(self, constraint: Constraint) -> Guide:
        """A new sequence's guide for ``constraint`` (compiled, or from the cache)."""
        grammar = await self.compile(constraint)
        return Guide(grammar, self.backend, constraint.trigger)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
