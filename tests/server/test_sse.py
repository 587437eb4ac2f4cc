"""SSE rendering: the per-token fast path gives the bytes pydantic would."""

from __future__ import annotations

import json

import pytest

from llmserve.server.protocol import ChatCompletionChunk, ChunkChoice, DeltaMessage
from llmserve.server.sse import TextEvents, sse

TEXTS = ["", "Paris", ' "quoted" \\ back', "line\nbreak\ttab\r", "\x00\x1f\x7f", "é中文😀", "\u2028\u2029", "</script>",
         TextEvents.MARK]


def chunk(content: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(id="chatcmpl-1", created=1700000000, model="m",
                               choices=[ChunkChoice(delta=DeltaMessage(content=content))])


@pytest.mark.parametrize("text", TEXTS)
def test_text_events_match_pydantic(text):
    events = TextEvents(chunk(TextEvents.MARK))
    assert events(text) == sse(chunk(text))
    assert json.loads(events(text).removeprefix("data: "))["choices"][0]["delta"]["content"] == text


def test_text_events_need_the_marker():
    with pytest.raises(ValueError, match="MARK"):
        TextEvents(chunk("no marker here"))
