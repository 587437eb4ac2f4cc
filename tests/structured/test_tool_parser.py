"""Golden tests of the one tool-call parser: the same model output chunked per character, per
token of the bundled tokenizer and whole gives the same content and calls."""

from __future__ import annotations

import itertools
import json

import pytest

from llmserve.structured.tools import HERMES, JSON_LIST, Arguments, CallStart, Content, ToolCallStream, parse

WEATHER_PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'

# (format, model output, expected content, expected [(name, arguments)])
GOLDEN = [
    (JSON_LIST, f"<tool_call>[{WEATHER_PARIS}]</tool_call>", "", [("get_weather", '{"city": "Paris"}')]),
    (JSON_LIST, '<tool_call>[{"name": "now", "arguments": {}}, {"name": "get_weather", "arguments": '
                '{"city": "P\\"a}ris]", "days": [1, {"x": null}]}}]</tool_call>',
     "", [("now", "{}"), ("get_weather", '{"city": "P\\"a}ris]", "days": [1, {"x": null}]}')]),
    (JSON_LIST, f"Let me look that up. <tool_call>[{WEATHER_PARIS}]</tool_call>",
     "Let me look that up. ", [("get_weather", '{"city": "Paris"}')]),
    (JSON_LIST, '<tool_call>[{"name": "now"}]</tool_call>', "", [("now", "{}")]),  # no arguments: "{}"
    (JSON_LIST, '<tool_call>[{"name": "now", "arguments": null}]</tool_call>', "", [("now", "{}")]),
    (JSON_LIST, '<tool_call>[{"arguments": {"a": 1}, "name": "f"}]</tool_call>', "", [("f", '{"a": 1}')]),
    (JSON_LIST, "<tool_call>[]</tool_call>", "", []),  # SmolLM2's "no call is needed"
    (JSON_LIST, "2 < 3, and <b>bold</b> text", "2 < 3, and <b>bold</b> text", []),
    (JSON_LIST, "<tool_call>not a call</tool_call> ok", "<tool_call>not a call</tool_call> ok", []),
    (JSON_LIST, "The answer is 4. <tool_c", "The answer is 4. <tool_c", []),  # a partial tag at the end
    (JSON_LIST, '<tool_call>[{"name": "get_w', '<tool_call>[{"name": "get_w', []),  # ended before a name
    (JSON_LIST, '<tool_call>[{"name": "f", "arguments": {"a": "x', "", [("f", '{"a": "x')]),  # cut by max_tokens
    (JSON_LIST, '<tool_call>[{"name": "é", "arguments": {"text": "naïve — ✓"}}]</tool_call>',
     "", [("é", '{"text": "naïve — ✓"}')]),
    (HERMES, f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>", "", [("get_weather", '{"city": "Paris"}')]),
    (HERMES, f'<tool_call>\n{WEATHER_PARIS}\n</tool_call>\n<tool_call>\n{{"name": "now", "arguments": {{}}}}\n'
             "</tool_call>", "", [("get_weather", '{"city": "Paris"}'), ("now", "{}")]),
    (HERMES, f"I will check.\n<tool_call>\n{WEATHER_PARIS}\n</tool_call>\n\nDone.",
     "I will check.\n\n\nDone.", [("get_weather", '{"city": "Paris"}')]),
    (HERMES, "<tool_call>\n[1, 2]\n</tool_call>", "<tool_call>\n[1, 2]\n</tool_call>", []),  # a list: not hermes
    (HERMES, "Just text, no calls.", "Just text, no calls.", []),
]


def run(fmt, chunks):
    """Events merged per kind, as a client reassembles them, plus the parser's own ``calls``."""
    ids = itertools.count()
    stream = ToolCallStream(fmt, new_id=lambda: f"call_{next(ids)}")
    events = [e for chunk in chunks for e in stream.feed(chunk)] + stream.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, CallStart):
            assert e.index not in calls and e.index == len(calls)  # starts come once, in order
            calls[e.index] = [e.id, e.name, ""]
        elif isinstance(e, Arguments):
            assert e.index in calls  # arguments only after their call's start
            calls[e.index][2] += e.text
    streamed = [tuple(v) for _, v in sorted(calls.items())]
    assert streamed == [(c.id, c.name, c.arguments) for c in stream.calls]
    return content, [(name, args) for _, name, args in streamed]


def token_chunks(tokenizer, text: str) -> list[str]:
    """``text`` split where the bundled tokenizer puts token boundaries (whole characters)."""
    ids = tokenizer.tokenize_str(text)
    pieces, pending = [], b""
    for t in ids:
        pending += tokenizer.decode_bytes([t])
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    assert "".join(pieces) == text
    return pieces


@pytest.mark.parametrize("fmt, text, content, calls", GOLDEN)
def test_chunking_does_not_change_the_result(fmt, text, content, calls, backend):
    whole = run(fmt, [text])
    assert whole == (content, calls)
    assert run(fmt, list(text)) == whole
    assert run(fmt, token_chunks(backend.tokenizer, text)) == whole
    assert run(fmt, [text[i:i + 7] for i in range(0, len(text), 7)]) == whole
    got_content, got_calls = parse(text, fmt)
    assert (got_content, [(c.name, c.arguments) for c in got_calls]) == whole
    for _, arguments in calls:
        if not arguments.endswith('"x'):  # the one cut by max_tokens
            json.loads(arguments)


def test_partial_tag_is_held_back_until_decided():
    stream = ToolCallStream(JSON_LIST)
    assert stream.feed("Sure <tool") == [Content("Sure ")]
    assert stream.feed("_ca") == []
    assert stream.feed("t") == [Content("<tool_cat")]  # not the tag after all
    assert stream.feed(" <tool_call>[") == [Content(" ")]
    assert stream.feed('{"name": "f"') == [CallStart(0, stream.calls[0].id, "f")]
    assert stream.feed(', "arguments": {"a"') == [Arguments(0, '{"a"')]
    assert stream.feed(': 1}}]</tool_') == [Arguments(0, ": 1}")]
    assert stream.feed("call>") == [] and stream.finish() == []
    assert stream.calls[0].id.startswith("call_") and len(stream.calls[0].id) == 29


def test_text_outside_calls_streams_at_once():
    stream = ToolCallStream(HERMES)
    assert stream.feed("Hello there") == [Content("Hello there")]
    assert stream.feed(", friend.") == [Content(", friend.")]
    assert stream.finish() == []
