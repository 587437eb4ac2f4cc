"""What crosses a ``DeploymentHandle`` between the ingress and a replica (plain data, no Ray).

A replica streams ``Chunk``s: small lists of engine deltas (the first one alone, at once), and
facts the ingress needs for metrics on the first chunk. llmserve errors cross as plain fields and
are rebuilt on the other side, so their status, code and ``Retry-After`` survive the trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmserve import errors
from llmserve.types import Delta


@dataclass(frozen=True)
class Chunk:
    deltas: tuple[Delta, ...] = ()
    replica: str = ""  # first chunk: the replica that serves the request
    engine_ttft: float | None = None  # first chunk: seconds from arrival at the replica to the first delta
    engine_queue: float | None = None  # first chunk: seconds the request waited inside the engine
    error: dict[str, Any] | None = None  # the stream's last chunk when the engine failed (see ``error_to_wire``)


def error_to_wire(exc: errors.LLMServeError) -> dict[str, Any]:
    return {"class": type(exc).__name__, "message": exc.message, "param": exc.param, "code": exc.code,
            "retry_after": getattr(exc, "retry_after", None)}


def error_from_wire(data: dict[str, Any]) -> errors.LLMServeError:
    cls = getattr(errors, str(data.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.LLMServeError)):
        cls = errors.EngineError
    kwargs: dict[str, Any] = {"param": data.get("param")}
    if issubclass(cls, (errors.Overloaded, errors.RateLimited)) and data.get("retry_after") is not None:
        kwargs["retry_after"] = float(data["retry_after"])
    exc = cls(str(data.get("message", "")), **kwargs)
    if data.get("code") is not None:
        exc.code = data["code"]
    return exc
