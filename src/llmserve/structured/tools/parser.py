"""One tool-call parser for every engine: a state machine over the answer's text deltas.

It emits ``Content`` (text outside calls), ``CallStart`` (index, id, name) and ``Arguments`` (a
piece of one call's arguments JSON text), char by char in effect, so that the events, merged,
do not depend on how the text was chunked; the whole answer is parsed by feeding it at once
(``parse``), so streamed and non-streamed answers are the same by construction.

Text that may be the start of an opening tag is held back until it is decided. Inside a tag the
text is held until the call's name is known; a tag whose text is not a call (say ``<tool_call>``
then prose, or a stream that ends first) is given back as content. Once a call has started it
stays: anything malformed after it inside the tag is dropped (the grammar prevents it anyway).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from llmserve.structured.tools.formats import ToolFormat
from llmserve.types import ToolCall

_WS = " \t\r\n"
_ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class Arguments:
    index: int
    text: str


Event = Content | CallStart | Arguments


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallStream:
    """Feed text deltas, get events; ``finish`` at the end. ``calls`` holds the calls so far."""

    def __init__(self, fmt: ToolFormat, *, new_id: Callable[[], str] = new_call_id):
        self.fmt = fmt
        self._new_id = new_id
        self._held = ""  # text mode: a possible prefix of the opening tag
        self._ws_held = ""  # text mode, after calls: whitespace dropped unless text follows
        self._after_calls = False
        self._in_tag = False
        self._events: list[Event] = []
        self._names: list[str] = []
        self._ids: list[str] = []
        self._args: list[list[str]] = []

    # -- public --------------------------------------------------------------------------------
    @property
    def calls(self) -> list[ToolCall]:
        return [ToolCall(i, n, "".join(a) or "{}") for i, n, a in zip(self._ids, self._names, self._args)]

    def feed(self, text: str) -> list[Event]:
        pos = 0
        while pos < len(text):
            pos = self._tag_char(text, pos) if self._in_tag else self._text_feed(text, pos)
        return self._take()

    def finish(self) -> list[Event]:
        if self._in_tag:
            self._tag_end(closed=False)
        elif self._held:
            self._content(self._ws_held + self._held)
            self._held = self._ws_held = ""
        return self._take()

    # -- text outside calls ----------------------------------------------------------------------
    def _text_feed(self, text: str, pos: int) -> int:
        if self._held:  # go on matching the held prefix of the opening tag, one char at a time
            candidate = self._held + text[pos]
            if self.fmt.open.startswith(candidate):
                self._held = candidate
                if candidate == self.fmt.open:
                    self._held = self._ws_held = ""
                    self._tag_start()
                return pos + 1
            self._content(self._ws_held + self._held)
            self._held = self._ws_held = ""
            self._after_calls = False
            return pos  # the char is looked at again as ordinary text
        if self._after_calls:
            stripped = len(text) - len(text[pos:].lstrip(_WS))
            self._ws_held += text[pos:stripped]
            pos = stripped
            if pos == len(text):
                return pos
            if text[pos] != "<":
                self._content(self._ws_held)
                self._ws_held = ""
                self._after_calls = False
        lt = text.find("<", pos)
        if lt < 0:
            self._content(text[pos:])
            return len(text)
        self._content(text[pos:lt])
        self._held = "<"
        return lt + 1

    def _content(self, text: str) -> None:
        if text:
            self._emit(Content(text))

    # -- inside a tag ---------------------------------------------------------------------------
    def _tag_start(self) -> None:
        self._in_tag = True
        self._raw: list[str] = [self.fmt.open]  # the tag's text, given back if it holds no call
        self._started_here = 0  # calls started inside this tag
        self._objects_here = 0  # call objects opened inside this tag
        self._stack: list[str] = []  # open JSON containers
        self._json_done = False
        self._close_held = ""  # a possible prefix of the closing tag (only after the JSON)
        self._in_str = False
        self._escape = False
        self._reset_call()

    def _reset_call(self) -> None:
        self._key: str | None = None  # the key whose value comes next, at the call object's level
        self._reading_key = False
        self._key_buf: list[str] = []
        self._value: str | None = None  # the value being read: "name" | "args" | "skip"
        self._scalar = False  # that value is a number, true, false or null (ends at , or })
        self._name_buf: list[str] = []
        self._index: int | None = None  # the call's index once its name is known
        self._pending_args: list[str] = []  # arguments read before the name, or a scalar's text

    @property
    def _call_level(self) -> int:
        return 2 if self.fmt.listed else 1

    def _tag_char(self, text: str, pos: int) -> int:
        c = text[pos]
        self._raw.append(c)
        if self._stack or self._in_str:
            self._json_char(c)
        elif self._json_done:
            self._close_char(c)
        elif c == ("[" if self.fmt.listed else "{"):
            self._stack.append(c)
            self._objects_here += not self.fmt.listed
        elif c not in _WS:
            self._give_back()
        return pos + 1

    def _close_char(self, c: str) -> None:
        candidate = self._close_held + c
        if not self.fmt.close.startswith(candidate):
            candidate = c if self.fmt.close.startswith(c) else ""
        self._close_held = candidate
        if candidate == self.fmt.close:
            self._tag_end(closed=True)

    def _give_back(self) -> None:
        """The tag holds no call: its text so far is content, and what follows is text again."""
        self._in_tag = False
        self._content("".join(self._raw))

    def _tag_end(self, *, closed: bool) -> None:
        self._in_tag = False
        if self._index is not None and not self._args[self._index]:
            self._arguments("{}")  # the answer ended inside a call without arguments
        if self._started_here:
            self._after_calls = True
        elif not (closed and self.fmt.listed and self._json_done and not self._objects_here):
            # nothing was called: the text is the model's own. A listed format's empty list is
            # SmolLM2's way of saying that no call is needed, and is dropped.
            self._content("".join(self._raw))

    def _json_char(self, c: str) -> None:
        level = len(self._stack)
        if self._in_str:
            self._string_char(c, level)
            return
        at_call = level == self._call_level and self._stack[-1] == "{"
        if at_call and self._value is None:
            self._field_char(c)
        elif at_call and self._scalar:
            if c in ",}":  # a scalar value at the call's level ends here
                self._end_value()
                self._field_char(c)
            else:
                self._value_char(c)
        elif level < self._call_level:  # a listed format's list, around its call objects
            if c == "{":
                self._stack.append(c)
                self._objects_here += 1
                self._reset_call()
            elif c == "]":
                self._stack.pop()
                self._json_done = True
            elif c not in _WS + ",":
                self._malformed()
        else:  # inside a value, at or below the call's level
            self._value_char(c)
            if c == '"':
                self._in_str = True
            elif c in "{[":
                self._stack.append(c)
            elif c in "}]":
                self._stack.pop()
                if len(self._stack) == self._call_level:
                    self._end_value()

    def _field_char(self, c: str) -> None:
        """The call object's own level: keys, colons, commas, the first char of values, its end."""
        if self._key is None:
            if c == '"':
                self._in_str, self._reading_key, self._key_buf = True, True, []
            elif c == "}":
                self._end_call()
            elif c not in _WS + ",":
                self._malformed()
            return
        if c in _WS or c == ":":
            return
        if self._key == "name" and c == '"':
            self._value, self._name_buf, self._in_str = "name", [], True
            return
        self._value = "args" if self._key in _ARGUMENT_KEYS else "skip"
        self._scalar = c not in '{["'
        self._value_char(c)
        if c == '"':
            self._in_str = True
        elif c in "{[":
            self._stack.append(c)

    def _string_char(self, c: str, level: int) -> None:
        if self._escape:
            self._escape = False
            end = False
        elif c == "\\":
            self._escape = True
            end = False
        else:
            end = c == '"'
        if self._reading_key:
            if end:
                self._in_str = self._reading_key = False
                self._key = "".join(self._key_buf)
            else:
                self._key_buf.append(c)
        elif self._value == "name" and level == self._call_level:
            if end:
                self._in_str = False
                self._start_call("".join(self._name_buf))
            else:
                self._name_buf.append(c)
        else:
            self._value_char(c)
            if end:
                self._in_str = False
                if level == self._call_level:
                    self._end_value()  # a string value at the call's level

    def _value_char(self, c: str) -> None:
        if self._value != "args":
            return
        if self._scalar or self._index is None:
            self._pending_args.append(c)
        else:
            self._arguments(c)

    def _end_value(self) -> None:
        if self._value == "args" and self._scalar:
            text = "".join(self._pending_args).strip()
            self._pending_args = [] if text in ("", "null") else [text]
        if self._value == "args" and self._index is not None and self._pending_args:
            self._arguments("".join(self._pending_args))
            self._pending_args = []
        self._value = self._key = None
        self._scalar = False

    def _start_call(self, name: str) -> None:
        self._value = self._key = None
        if self._index is not None:  # a second "name" in one object: the first one stands
            return
        self._index = len(self._names)
        self._started_here += 1
        self._names.append(name)
        self._ids.append(self._new_id())
        self._args.append([])
        self._emit(CallStart(self._index, self._ids[-1], name))
        if self._pending_args and not self._scalar:
            self._arguments("".join(self._pending_args))
            self._pending_args = []

    def _end_call(self) -> None:
        self._stack.pop()
        if self._index is not None and not self._args[self._index]:
            self._arguments("{}")
        self._reset_call()
        if not self._stack:
            self._json_done = True

    def _malformed(self) -> None:
        if not self._started_here:
            self._give_back()
            return
        self._stack.clear()  # drop the rest of the tag's JSON and wait for the closing tag
        self._in_str = False
        self._json_done = True

    def _arguments(self, text: str) -> None:
        assert self._index is not None
        self._args[self._index].append(text)
        self._emit(Arguments(self._index, text))

    # -- events ---------------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        last = self._events[-1] if self._events else None
        if isinstance(event, Content) and isinstance(last, Content):
            self._events[-1] = Content(last.text + event.text)
        elif isinstance(event, Arguments) and isinstance(last, Arguments) and last.index == event.index:
            self._events[-1] = Arguments(event.index, last.text + event.text)
        else:
            self._events.append(event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def parse(text: str, fmt: ToolFormat) -> tuple[str, list[ToolCall]]:
    """The content and the calls of a whole answer (the same state machine, fed at once)."""
    stream = ToolCallStream(fmt)
    events = stream.feed(text) + stream.finish()
    return "".join(e.text for e in events if isinstance(e, Content)), stream.calls
