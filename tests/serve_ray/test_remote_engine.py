"""``RemoteEngine`` over a scripted handle (no cluster): admission, errors, cancellation, timing."""

from __future__ import annotations

import pytest

from llmserve import errors
from llmserve.types import Capabilities, Delta, FinishReason, GenerationRequest, Usage

pytestmark = pytest.mark.ray


class Stream:
    """What ``handle.options(stream=True).generate.remote(request)`` returns, scripted."""

    def __init__(self, items):
        self.items = list(items)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class Handle:
    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.streams: list[Stream] = []
        self.generate = self
        self.describe = self

    def options(self, **_):
        return self

    def remote(self, request=None):
        stream = Stream(self.scripts.pop(0))
        self.streams.append(stream)
        return stream


def engine(handle, limit=10, seen=None):
    from llmserve.serve_ray.remote import RemoteEngine
    from llmserve.settings import ModelSettings

    e = RemoteEngine(ModelSettings(name="m"), handle, limit,
                     (lambda name, ttft, chunk: seen.append((name, chunk))) if seen is not None else None)
    e._capabilities = Capabilities(sampling=frozenset(), max_context=100)
    return e


def request():
    return GenerationRequest("r1", (1, 2, 3))


def chunk(*deltas, **facts):
    from llmserve.serve_ray.wire import Chunk

    return Chunk(tuple(deltas), **facts)


async def test_deltas_come_in_order_and_first_chunk_facts_are_reported():
    seen = []
    last = Delta("c", (3,), FinishReason.STOP, Usage(3, 3))
    handle = Handle([chunk(Delta("a", (1,)), engine_ttft=0.05, engine_queue=0.01, replica="x"),
                     chunk(Delta("b", (2,)), last)])
    e = engine(handle, seen=seen)
    req = request()
    got = [d async for d in e.generate(req)]
    assert [d.text for d in got] == ["a", "b", "c"] and got[-1] == last
    assert seen[0][0] == "m" and seen[0][1].replica == "x"
    assert req.timing.started_at is not None
    assert e.stats().running == 0 and e.stats().waiting == 0
    assert not handle.streams[0].cancelled


async def test_backpressure_is_overloaded_before_any_delta():
    from ray.serve.exceptions import BackPressureError

    e = engine(Handle([BackPressureError(num_queued_requests=3, max_queued_requests=3)]))
    with pytest.raises(errors.Overloaded) as info:
        await anext(e.generate(request()))
    assert info.value.status_code == 503 and info.value.retry_after == 1
    assert e.stats().waiting == 0


async def test_past_the_limit_is_overloaded_without_calling_the_handle():
    handle = Handle([chunk(Delta("a", (1,)))])
    e = engine(handle, limit=1)
    first = e.generate(request())
    assert (await anext(first)).text == "a"  # one in flight
    with pytest.raises(errors.Overloaded):
        await anext(e.generate(request()))
    assert len(handle.streams) == 1
    await first.aclose()
    assert handle.streams[0].cancelled  # left early: the call is cancelled (the replica aborts it)


async def test_a_dead_replica_is_an_engine_error_and_errors_cross_unchanged():
    from ray.exceptions import ActorDiedError

    from llmserve.serve_ray.wire import error_to_wire

    e = engine(Handle([chunk(Delta("a", (1,))), ActorDiedError()],
                      [chunk(error=error_to_wire(errors.QueueTimeout("waited", retry_after=3)))],
                      [chunk(Delta("a", (1,)))]))
    stream = e.generate(request())
    assert (await anext(stream)).text == "a"
    with pytest.raises(errors.EngineError):
        await anext(stream)
    with pytest.raises(errors.QueueTimeout) as info:
        await anext(e.generate(request()))
    assert info.value.retry_after == 3
    stream = e.generate(request())  # the replica's stream ended without a finish reason
    await anext(stream)
    with pytest.raises(errors.EngineError):
        await anext(stream)
