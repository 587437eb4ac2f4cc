"""``NAME=PATH[:SCALE]``: one adapter as the user names it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.errors import InvalidRequest


class AdapterError(InvalidRequest):
    """An adapter that cannot be served on its model: unreadable, or not made for it (at start:
    one line and exit 2; loaded at run time: a 400 naming ``lora_path``)."""

    code = "invalid_lora"

    def __init__(self, message: str, *, param: str | None = "lora_path", code: str | None = None):
        super().__init__(message, param=param, code=code)


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    scale: float = 1.0

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix == ".gguf"


def parse_spec(text: str) -> AdapterSpec:
    """``NAME=PATH`` or ``NAME=PATH:SCALE`` (a trailing ``:number`` is the scale)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"--lora {text!r}: expected NAME=PATH[:SCALE]")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass
    return AdapterSpec(name.strip(), Path(path).expanduser(), scale)
