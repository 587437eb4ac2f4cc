"""One bounded pool for the CPU work of requests, so that none of it runs on the event loop.

Parsing a large body, rendering a chat template, tokenizing a long prompt: each can take long
enough to freeze every stream on the loop. The server owns one ``WorkPool`` (a few threads, a
bounded backlog) and every request's CPU work goes through it; a full backlog is a 503.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from llmserve.errors import Overloaded

T = TypeVar("T")


class WorkPool:
    def __init__(self, workers: int, max_pending: int):
        self.workers = workers
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmserve-cpu")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished (a cancelled caller's job still counts)

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded("the server is busy preparing other requests; try again shortly", retry_after=1)
            self._pending += 1
        try:
            future = self._executor.submit(functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
