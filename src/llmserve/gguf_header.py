"""The key-value header of a GGUF file, read without loading the model (no llama.cpp, no numpy).

Used before anything is loaded: to tell a model file from something else (start-up checks) and
to read the model's own metadata, such as its recommended sampling (``general.sampling.*``).
Arrays (the vocabulary, merges) are skipped: only scalar values and strings are kept.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from llmserve.errors import InvalidModel

MAGIC = b"GGUF"
# gguf value types: (struct format, size); 8 is a string, 9 an array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9


def is_gguf(path: str | Path) -> bool:
    """True when the file starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (arrays left out). Raises ``InvalidModel``
    when the file is not a GGUF or its header is cut short or malformed."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise InvalidModel(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _Reader(buf).metadata()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise InvalidModel(f"{path} is a corrupt or truncated GGUF file ({exc})") from None


class _Reader:
    def __init__(self, buf: mmap.mmap):
        self.buf = buf
        self.pos = 4

    def _unpack(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise ValueError("the header ends early")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def _string(self) -> str:
        n = self._unpack("<Q", 8)
        if self.pos + n > len(self.buf):
            raise ValueError("the header ends early")
        text = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return text

    def _skip_array(self) -> None:
        kind, count = self._unpack("<I", 4), self._unpack("<Q", 8)
        if kind in _SCALARS:
            self.pos += _SCALARS[kind][1] * count
        elif kind == _STRING:
            for _ in range(count):
                n = self._unpack("<Q", 8)
                self.pos += n
        elif kind == _ARRAY:
            for _ in range(count):
                self._skip_array()
        else:
            raise ValueError(f"unknown array element type {kind}")
        if self.pos > len(self.buf):
            raise ValueError("the header ends early")

    def metadata(self) -> dict[str, Any]:
        version = self._unpack("<I", 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        self._unpack("<Q", 8)  # tensor count
        n_kv = self._unpack("<Q", 8)
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            kind = self._unpack("<I", 4)
            if kind in _SCALARS:
                out[key] = self._unpack(*_SCALARS[kind])
            elif kind == _STRING:
                out[key] = self._string()
            elif kind == _ARRAY:
                self._skip_array()
            else:
                raise ValueError(f"unknown value type {kind} for key {key!r}")
        return out
