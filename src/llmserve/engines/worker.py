"""What the thread-backed engines (llama.cpp, transformers) share.

``WorkerLoop``: an inbox with admission limits (slots + ``max_queue``), cancellation from any
thread, queue timeouts, and one worker thread that runs the engine's ``_step`` while there is
work. ``LoopBridge``: hands each step's outputs to the event loop in one hop and turns them back
into the async ``generate`` stream, whose early close cancels the request.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmserve.errors import EngineError, LLMServeError, Overloaded, QueueTimeout
from llmserve.types import PRIORITY_LIVE, Delta, GenerationRequest

logger = logging.getLogger(__name__)

Output = Delta | LLMServeError


@dataclass(eq=False)
class Queued:
    """One request inside a worker loop. ``cancelled`` may be set from any thread; engines
    subclass it with their per-sequence state (all fields defaulted)."""

    request: GenerationRequest
    sink: asyncio.Queue
    enqueued_at: float
    cancelled: bool = False

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.request.prompt_tokens


S = TypeVar("S", bound=Queued)
Emit = Callable[[list[tuple[Queued, Output]]], None]


class WorkerLoop(abc.ABC, Generic[S]):
    sequence_type: type[S]

    def __init__(self, *, n_slots: int, max_queue: int, queue_timeout: float | None, emit: Emit, name: str):
        self.n_slots = n_slots
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.emit = emit
        self.n_waiting = 0
        self.n_running = 0
        self.n_background = 0  # of those waiting or running: priority above PRIORITY_LIVE (batch lines)
        self.steps = 0
        self.last_progress = time.monotonic()  # a step finished, or work came to an idle loop
        self._cv = threading.Condition()
        self._incoming: list[S] = []
        self._by_id: dict[str, S] = {}
        self._waiting: collections.deque[S] = collections.deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- any thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: asyncio.Queue, **state) -> S:
        """``state``: initial values of the engine's sequence fields (a compiled grammar)."""
        seq = self.sequence_type(request, sink, time.monotonic(), **state)
        with self._cv:
            if self._stopping:
                raise Overloaded("the engine is shutting down", retry_after=5)
            background = request.priority > PRIORITY_LIVE  # bounded by its sender (the batch runner)
            if not background and self.n_waiting + self.n_running - self.n_background >= self.n_slots + self.max_queue:
                raise Overloaded("the request queue is full; try again shortly", retry_after=1)
            self.n_background += background
            if self.n_waiting + self.n_running == 0:
                self.last_progress = time.monotonic()  # the watchdog counts from now
            self.n_waiting += 1
            self._by_id[request.request_id] = seq
            self._incoming.append(seq)
            self._cv.notify()
        return seq

    def cancel(self, request_id: str) -> None:
        with self._cv:
            seq = self._by_id.get(request_id)
            if seq is not None:
                seq.cancelled = True
                self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    # -- worker thread ------------------------------------------------------------------------
    def _worker_context(self) -> contextlib.AbstractContextManager:
        """Entered once on the worker thread around the whole loop."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def _step(self) -> None:
        """Reap, admit, run one batch, sample; emit the step's outputs."""

    @abc.abstractmethod
    def _fail_running(self, error: LLMServeError) -> list[tuple[S, Output]]:
        """Take every running sequence out with ``error``; returns the outputs to emit."""

    def _run(self) -> None:
        with self._worker_context():
            while True:
                with self._cv:
                    while not (self._stopping or self._incoming or self._waiting or self.n_running):
                        self._cv.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                try:
                    self._step()
                    self.last_progress = time.monotonic()
                except Exception:  # never let the loop die: fail what is in flight, keep serving
                    logger.exception("engine step failed")
                    self._fail_all(EngineError("the engine failed while generating"))
            self._fail_all(EngineError("the engine stopped"), include_waiting=True)

    def _reap_waiting(self, out: list[tuple[S, Output]]) -> None:
        """Drops waiting requests that were cancelled or waited past the queue timeout."""
        now = time.monotonic()
        for seq in list(self._waiting):
            expired = (self.queue_timeout is not None and now - seq.enqueued_at > self.queue_timeout
                       and seq.request.priority == PRIORITY_LIVE)
            if seq.cancelled or expired:
                self._waiting.remove(seq)
                self._forget(seq, waiting=True)
                if expired and not seq.cancelled:
                    out.append((seq, QueueTimeout(
                        f"no slot became free within the queue timeout ({self.queue_timeout:g}s)", retry_after=1)))

    def _started(self, seqs: list[S]) -> None:
        """``seqs`` left the queue for a slot."""
        now = time.monotonic()
        for seq in seqs:
            seq.request.timing.started_at = now
        with self._cv:
            self.n_waiting -= len(seqs)
            self.n_running += len(seqs)

    def _forget(self, seq: S, *, waiting: bool) -> None:
        with self._cv:
            self._by_id.pop(seq.request.request_id, None)
            self.n_background -= seq.request.priority > PRIORITY_LIVE
            if waiting:
                self.n_waiting -= 1
            else:
                self.n_running -= 1

    def _fail_all(self, error: LLMServeError, *, include_waiting: bool = False) -> None:
        out = self._fail_running(error)
        if include_waiting:
            with self._cv:
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            while self._waiting:
                seq = self._waiting.popleft()
                self._forget(seq, waiting=True)
                out.append((seq, error))
        if out:
            self.emit(out)


class LoopBridge:
    """Carries a worker loop's outputs to the event loop that ``bind`` was called on."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()

    def emit(self, outputs: list[tuple[Queued, Output]]) -> None:
        """Called on the worker thread once per step: one hop to the loop for all outputs."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_dispatch, outputs)

    async def stream(self, worker: Callable[[], WorkerLoop], request: GenerationRequest,
                     **state) -> AsyncIterator[Delta]:
        """The deltas of ``request``. ``worker`` is called at the first ``__anext__`` and may raise
        (not loaded, invalid tokens); admission errors (queue full) surface there too. ``state``
        goes to ``WorkerLoop.submit``."""
        loop = worker()
        queue: asyncio.Queue[Output] = asyncio.Queue()
        seq = loop.submit(request, queue, **state)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, LLMServeError):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:  # the consumer left early: cancel, synchronously (no await here)
                seq.cancelled = True
                loop.cancel(request.request_id)


def _dispatch(outputs: list[tuple[Queued, Output]]) -> None:
    for seq, item in outputs:
        seq.sink.put_nowait(item)
