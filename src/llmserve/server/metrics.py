"""Prometheus metrics: one registry per app, one metric set whatever the engine.

Names follow vLLM's (``vllm:`` becomes ``llmserve:``, label ``model_name``) so existing
dashboards work with a prefix change. Requests are instrumented in one place, ``observe``,
which wraps the delta stream of every generation route; rejections are counted where errors
become HTTP (``server/errors.py``); other modules call ``rate_limited``.

Multiprocess mode (several workers) is prometheus_client's own: it is on when
``PROMETHEUS_MULTIPROC_DIR`` was set before prometheus_client was imported (see
``server/multiproc.py``), and ``/metrics`` then aggregates the files of every worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from llmserve import errors
from llmserve.types import Delta, EngineStats, GenerationRequest

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from llmserve.chat_model import AsyncChatModel

logger = logging.getLogger(__name__)

PREFIX = "llmserve:"
# bucket edges as vLLM's, so histograms line up with its dashboards
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)

# the reason label of llmserve:requests_rejected_total, most specific class first
REJECT_REASONS: tuple[tuple[type[errors.LLMServeError], str], ...] = (
    (errors.QueueTimeout, "queue_timeout"),
    (errors.ModelLoading, "model_loading"),
    (errors.Overloaded, "queue_full"),
    (errors.ContextLengthExceeded, "context_length"),
    (errors.RequestTooLarge, "too_large"),
    (errors.UnsupportedParameter, "unsupported_parameter"),
    (errors.InvalidRequest, "invalid"),
    (errors.ModelNotFound, "model_not_found"),
    (errors.Unauthorized, "unauthorized"),
)


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes values to files shared by several worker processes."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The metric set of one app, registered on its own ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        reg, label = self.registry, ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, label, registry=reg, multiprocess_mode="livesum")

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, label + list(extra), registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, label, buckets=buckets, registry=reg)

        self.running = gauge("num_requests_running", "Requests being prefilled or decoded.")
        self.waiting = gauge("num_requests_waiting", "Requests waiting for a slot.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of requests the engine started.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.success = counter("request_success", "Requests the engine finished, by finish reason.",
                               ("finished_reason",))
        self.rejected = counter("requests_rejected", "Requests refused with an error, by reason.", ("reason",))
        self.cancelled = counter("requests_cancelled", "Requests the client abandoned, by phase.", ("phase",))
        self.rate_limited = counter("rate_limited", "Requests refused by a rate limit (429).")
        self.ttft = histogram("time_to_first_token_seconds", "Time to the first generated token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between streamed steps.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last token.",
                             REQUEST_BUCKETS)
        # batch jobs (refreshed from the job store at each scrape; the same in every worker)
        self.batch_lines = Gauge(PREFIX + "batch_lines", "Lines of active batches: queued, running, completed, "
                                 "failed.", ["state"], registry=reg, multiprocess_mode="livemostrecent")
        self.batches = Gauge(PREFIX + "batches", "Batches by status.", ["status"], registry=reg,
                             multiprocess_mode="livemostrecent")
        self.queue_time = histogram("request_queue_time_seconds", "Time waiting before the engine started "
                                    "the request.", REQUEST_BUCKETS)

    def add_model(self, name: str) -> None:
        """Creates the label sets of ``name`` so its series exist (at zero) before any request."""
        for metric in (self.running, self.waiting, self.prompt_tokens, self.generation_tokens, self.rate_limited,
                       self.ttft, self.itl, self.e2e, self.queue_time):
            metric.labels(name)

    def refresh(self, models: Iterable[AsyncChatModel]) -> None:
        """Copies the engines' own queue counts into the gauges (at each scrape)."""
        for model in models:
            self._set_gauges(model.name, model.engine.stats())

    def _set_gauges(self, model_name: str, stats: EngineStats) -> None:
        self.running.labels(model_name).set(stats.running)
        self.waiting.labels(model_name).set(stats.waiting)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format body and its content type."""
        if self.multiprocess:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self.multiprocess:  # this worker's live gauges stop counting
            multiprocess.mark_process_dead(os.getpid())

    def reject(self, model_name: str, exc: errors.LLMServeError) -> None:
        reason = rejection_reason(exc)
        if reason is not None:
            self.rejected.labels(model_name, reason).inc()

    async def observe(self, deltas: AsyncIterator[Delta], request: GenerationRequest, model_name: str,
                      arrival: float | None = None,
                      stats: Callable[[], EngineStats] | None = None) -> AsyncIterator[Delta]:
        """``deltas`` unchanged, measured. Closing this closes ``deltas`` (and aborts the request).

        ``stats`` (the engine's) also refreshes the gauges as requests start and end: with several
        workers a scrape only reaches one of them, so the others' gauges must not wait for theirs."""
        t0 = arrival if arrival is not None else time.monotonic()
        submitted = time.monotonic()
        first: float | None = None
        last = 0.0
        finished = False
        itl, generated = self.itl.labels(model_name), self.generation_tokens.labels(model_name)  # per token: bound once
        try:
            async for delta in deltas:
                now = time.monotonic()
                if first is None:
                    first = now
                    self.ttft.labels(model_name).observe(now - t0)
                    self.prompt_tokens.labels(model_name).inc(len(request.prompt_tokens))
                    started = request.timing.started_at
                    if started is not None:
                        self.queue_time.labels(model_name).observe(max(0.0, started - submitted))
                    if stats is not None:
                        self._set_gauges(model_name, stats())
                else:
                    itl.observe(now - last)
                last = now
                if delta.token_ids:
                    generated.inc(len(delta.token_ids))
                if delta.finish_reason is not None:
                    finished = True
                    self.success.labels(model_name, delta.finish_reason.value).inc()
                    self.e2e.labels(model_name).observe(now - t0)
                yield delta
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self.cancelled.labels(model_name, _phase(request, first is not None)).inc()
            raise
        finally:
            await deltas.aclose()
            if stats is not None:
                self._set_gauges(model_name, stats())


def _phase(request: GenerationRequest, streamed: bool) -> str:
    if streamed:
        return "decode"
    return "queue" if request.timing.started_at is None else "prefill"


def rejection_reason(exc: errors.LLMServeError) -> str | None:
    """The ``reason`` label for a refused request; None for errors that are not refusals
    (engine failures are counted as such elsewhere; 429s by ``rate_limited``)."""
    for cls, reason in REJECT_REASONS:
        if isinstance(exc, cls):
            return reason
    return None


# -- entry points for routes and other modules --------------------------------------------------------
def get_metrics(conn: HTTPConnection) -> Metrics:
    return conn.app.state.metrics


def observe(conn: HTTPConnection, model: AsyncChatModel, request: GenerationRequest) -> AsyncIterator[Delta]:
    """The measured delta stream of ``request`` on ``model``: what generation routes iterate."""
    return get_metrics(conn).observe(model.agenerate(request), request, model.name, stats=model.engine.stats)


def record_rejection(conn: HTTPConnection, exc: errors.LLMServeError) -> None:
    metrics: Metrics | None = getattr(conn.app.state, "metrics", None)
    if metrics is not None:
        # ``deps.get_model`` remembers the model a request is for; "" before (or if unknown)
        metrics.reject(getattr(conn.state, "model_name", ""), exc)


def rate_limited(state: Any, model_name: str | None = None) -> None:
    """Count one request refused by a rate limit. ``state`` is ``app.state`` (or ``request.app.state``)."""
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.rate_limited.labels(model_name or "").inc()
