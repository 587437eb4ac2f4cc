"""One call, several generations: the ``n`` choices of a request (and the prompts of a batched
``/v1/completions``) run as separate engine requests and come back as one answer or one stream.

Choice ``i`` of a request with a ``seed`` samples with ``seed + i``, so each choice is
reproducible on its own (and ``n: 1`` with ``seed: s + i`` gives choice ``i`` again). The n
requests share a ``group`` (the call's id; theirs are ``{group}-{i}``) so that an engine may
prefill their common prompt once. Usage counts each prompt once, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from llmserve.types import Delta, FinishReason, GenerationRequest, TokenLogprob, Usage


def fan_out(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` copies of ``request``, one per choice (``request`` itself when ``n == 1``)."""
    if n == 1:
        return [request]
    seed = request.sampling.seed
    return [dataclasses.replace(
        request, request_id=f"{request.request_id}-{i}", group=request.request_id,
        sampling=request.sampling if seed is None else dataclasses.replace(request.sampling, seed=seed + i),
    ) for i in range(n)]


@dataclass
class Choice:
    """A whole generation: its text, how it ended, and the logprob records it carried."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            self.finish_reason, self.usage = delta.finish_reason, delta.usage


def total_usage(usages: Sequence[Usage | None], n: int = 1) -> Usage:
    """The usage of a call whose generations are ``n`` consecutive choices per prompt: each
    prompt (and its cached tokens) once, every choice's completion tokens."""
    prompt = cached = completion = 0
    for i, u in enumerate(usages):
        if u is None:
            continue
        completion += u.completion_tokens
        if i % n == 0:
            prompt += u.prompt_tokens
            cached += u.cached_tokens
    return Usage(prompt, completion, cached)


async def collect_choices(streams: list[AsyncIterator[Delta]]) -> list[Choice]:
    """Every stream to its end, concurrently; the first failure cancels (and closes) the others."""

    async def one(stream: AsyncIterator[Delta]) -> Choice:
        choice = Choice()
        try:
            async for delta in stream:
                choice.add(delta)
        finally:
            await stream.aclose()
        return choice

    tasks = [asyncio.ensure_future(one(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_deltas(streams: list[AsyncIterator[Delta]]) -> list[Delta]:
    """The first delta of every stream (admission decided for all); on a failure all are closed."""
    tasks = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()
        raise


async def interleave(streams: list[AsyncIterator[Delta]], firsts: list[Delta]) -> AsyncIterator[tuple[int, Delta]]:
    """(stream index, delta) from every stream as they come, ``firsts`` first; the first error
    stops them all, and closing this closes (aborts) every stream."""
    for i, delta in enumerate(firsts):
        yield i, delta
    if len(streams) == 1:  # the common case: no task, no queue hop per token
        try:
            if firsts[0].finish_reason is None:
                async for delta in streams[0]:
                    yield 0, delta
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((i, delta))
            queue.put_nowait((i, None))
        except Exception as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams) if firsts[i].finish_reason is None]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()
