"""Batch input lines (validated as OpenAI does) and output lines (OpenAI's shape)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_ERRORS = 100  # reported per batch; the rest are counted


@dataclass(frozen=True)
class InputLine:
    index: int  # 0-based position among the requests
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: int | None = None  # 1-based line of the input file
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class InvalidInput(Exception):
    def __init__(self, errors: list[LineError]):
        super().__init__(errors[0].message if errors else "invalid input file")
        self.errors = errors


def parse_input(data: bytes, endpoint: str, max_lines: int) -> list[InputLine]:
    """Every request of a batch input file; ``InvalidInput`` names each bad line (up to MAX_ERRORS)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([LineError("invalid_file", f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")])
    errors: list[LineError] = []
    lines: list[InputLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _parse_line(raw, number, endpoint, len(lines))
        except _Bad as bad:
            errors.append(bad.error)
        else:
            if line.custom_id in seen:
                errors.append(LineError("duplicate_custom_id", f"line {number}: custom_id {line.custom_id!r} is already "
                                        f"used on line {seen[line.custom_id]}; every request needs its own", number, "custom_id"))
            else:
                seen[line.custom_id] = number
                lines.append(line)
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise InvalidInput(errors)
    if not lines:
        raise InvalidInput([LineError("empty_file", "the input file holds no requests")])
    if len(lines) > max_lines:
        raise InvalidInput([LineError("too_many_requests", f"the input file holds {len(lines)} requests; "
                                      f"at most {max_lines} are allowed per batch")])
    return lines


class _Bad(Exception):
    def __init__(self, code: str, message: str, line: int, param: str | None = None):
        self.error = LineError(code, message, line, param)


def _parse_line(raw: str, number: int, endpoint: str, index: int) -> InputLine:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _Bad("invalid_json_line", f"line {number} is not valid JSON: {exc.msg}", number) from None
    if not isinstance(obj, dict):
        raise _Bad("invalid_request", f"line {number} must be a JSON object with custom_id, method, url and body",
                   number)
    for key in ("custom_id", "method", "url", "body"):
        if key not in obj:
            raise _Bad("missing_required_parameter", f"line {number} is missing {key!r}", number, key)
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        raise _Bad("invalid_custom_id", f"line {number}: custom_id must be a non-empty string", number, "custom_id")
    if obj["method"] != "POST":
        raise _Bad("invalid_method", f"line {number}: method must be \"POST\"", number, "method")
    if obj["url"] != endpoint:
        raise _Bad("invalid_url", f"line {number}: url {obj['url']!r} does not match the batch's endpoint "
                   f"{endpoint!r}", number, "url")
    body = obj["body"]
    if not isinstance(body, dict):
        raise _Bad("invalid_body", f"line {number}: body must be a JSON object", number, "body")
    if body.get("stream"):
        raise _Bad("invalid_body", f"line {number}: stream is not supported in a batch", number, "body.stream")
    return InputLine(index, custom_id, body)


def line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex[:24]}"


def output_line(custom_id: str, status_code: int, request_id: str, body: Any) -> str:
    """One line of the output (2xx) or error file (other statuses), as OpenAI writes it."""
    return json.dumps({
        "id": request_id, "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body}, "error": None,
    }, ensure_ascii=False)


def failed_line(custom_id: str, code: str, message: str) -> str:
    """A line that got no response at all (the batch expired before it ran)."""
    return json.dumps({"id": line_id(), "custom_id": custom_id, "response": None,
                       "error": {"code": code, "message": message}}, ensure_ascii=False)
