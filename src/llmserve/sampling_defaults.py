"""Sampling defaults per model: the one place where a request's unset parameters get their values.

For each parameter a request leaves unset (absent or ``null``), the first source that sets it
wins:

1. the model's settings: its ``default_sampling`` in the config file, ``--default-sampling`` flags
   or ``LLMSERVE_DEFAULT_SAMPLING`` (``settings.DefaultSampling``);
2. the model's own generation defaults: ``generation_config.json`` of a Hugging Face directory
   (the keys vLLM reads, but ``max_new_tokens``), or a GGUF's ``general.sampling.*`` keys;
3. llmserve's built-ins: the bundled model's card recommendation (temperature 0.2, top_p 0.9),
   otherwise OpenAI's neutral values (temperature 1, top_p 1, no top_k, min_p or penalties).

An explicit value in a request always wins: ``temperature: 0`` is greedy whatever the defaults.
The chat and completion routes, the simple API, both WebSockets and ``ChatModel`` all resolve
through ``SamplingDefaults.resolve``; ``GET /v1/models`` shows the defaults in force.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmserve.errors import LLMServeError
from llmserve.settings import DefaultSampling, ModelSettings
from llmserve.types import SamplingParams

logger = logging.getLogger(__name__)

DEFAULTABLE: tuple[str, ...] = tuple(DefaultSampling.model_fields)
# GGUF keys as llama.cpp names them (gguf-py constants Keys.General.SAMPLING_*; llama-arch.cpp);
# mirostat, XTC and penalty_last_n have no llmserve counterpart and are not read
GGUF_KEYS: dict[str, str] = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
# generation_config.json keys vLLM applies as defaults (its max_new_tokens is left out: a default
# length above a slot's context would refuse every request that does not set max_tokens)
HF_KEYS: dict[str, str] = {k: k for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                            "presence_penalty", "frequency_penalty")}
# the bundled SmolLM2-135M-Instruct's card recommendation (at OpenAI's temperature 1 it rambles)
BUNDLED: dict[str, Any] = {"temperature": 0.2, "top_p": 0.9}

SOURCE_SETTINGS, SOURCE_MODEL, SOURCE_BUILTIN = "settings", "model", "llmserve"


@dataclass(frozen=True)
class SamplingDefaults:
    """The default of every defaultable parameter, and where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    @classmethod
    def layered(cls, *layers: tuple[str, Mapping[str, Any]]) -> SamplingDefaults:
        """``layers`` as (source, values), highest precedence first; the neutral values last."""
        neutral = SamplingParams()
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in DEFAULTABLE:
            for source, layer in layers:
                if layer.get(name) is not None:
                    values[name], sources[name] = layer[name], source
                    break
            else:
                values[name], sources[name] = getattr(neutral, name), SOURCE_BUILTIN
        if isinstance(values["stop"], (str, list)):
            values["stop"] = (values["stop"],) if isinstance(values["stop"], str) else tuple(values["stop"])
        return cls(values, sources)

    def resolve(self, explicit: Mapping[str, Any] | None = None) -> SamplingParams:
        """The request's ``SamplingParams``: ``explicit`` values (``None`` means unset) over the
        defaults. ``explicit`` may name any ``SamplingParams`` field; unknown ones are a TypeError."""
        values = dict(self.values)
        values.update({k: v for k, v in (explicit or {}).items() if v is not None})
        stop = values.get("stop")
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if values.get("top_k") is not None:
            values["top_k"] = max(int(values["top_k"]), 0)  # -1 (vLLM's "off") is 0 here
        return SamplingParams(**values)

    def public(self) -> dict[str, Any]:
        """The defaults as JSON for ``/v1/models`` (a stop list as a list)."""
        out = dict(self.values)
        if isinstance(out.get("stop"), tuple):
            out["stop"] = list(out["stop"])
        return out


def for_model(settings: ModelSettings) -> SamplingDefaults:
    """The defaults in force for the model ``settings`` describe."""
    own: dict[str, Any] = {}
    builtin: dict[str, Any] = {}
    if settings.engine != "fake":
        try:
            path = Path(settings.resolved_path())
        except LLMServeError:  # the bundled model is missing: the engine's start says so
            path = None
        if path is not None:
            own = model_generation_defaults(path)
            if _is_bundled(path):
                builtin = BUNDLED
    return SamplingDefaults.layered(
        (SOURCE_SETTINGS, settings.default_sampling.given()), (SOURCE_MODEL, own), (SOURCE_BUILTIN, builtin))


def model_generation_defaults(path: Path) -> dict[str, Any]:
    """The sampling the model itself recommends: GGUF ``general.sampling.*`` or a Hugging Face
    directory's ``generation_config.json``. Empty when it says nothing, or cannot be read (loading
    the model reports that); values out of range are left out with a warning."""
    raw: dict[str, Any] = {}
    try:
        if path.is_dir():
            config = path / "generation_config.json"
            if config.is_file():
                data = json.loads(config.read_text())
                raw = {ours: data[theirs] for theirs, ours in HF_KEYS.items() if isinstance(data, dict) and theirs in data}
        elif path.is_file():
            from llmserve.gguf_header import is_gguf, read_metadata

            if is_gguf(path):
                meta = read_metadata(path)
                raw = {ours: meta[key] for key, ours in GGUF_KEYS.items() if key in meta}
    except (OSError, ValueError, LLMServeError) as exc:
        logger.debug("no generation defaults read from %s: %s", path, exc)
        return {}
    return _valid(raw, path)


def _valid(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        try:
            out.update(DefaultSampling(**{name: value}).given())
        except ValidationError:
            logger.warning("ignoring %s=%r from %s: out of range", name, value, path)
    if isinstance(out.get("top_k"), int) and out["top_k"] < 0:
        out["top_k"] = 0
    return out


def _is_bundled(path: Path) -> bool:
    from llmserve.models import bundled_model_path

    try:
        return path.resolve() == bundled_model_path().resolve()
    except (LLMServeError, OSError):
        return False


def describe(defaults: SamplingDefaults, explicit: Mapping[str, Any] | None = None, *, by: str = "request") -> str:
    """One line for logs and ``llmserve chat``: temperature and top_p, and every other parameter
    that is not neutral, each with its source: 'temperature 0.2 (llmserve), top_p 0.9 (llmserve)'."""
    neutral = SamplingParams()
    parts = []
    for name, value in defaults.public().items():
        source = defaults.sources[name]
        if explicit and explicit.get(name) is not None:
            value, source = explicit[name], by
        if name in ("temperature", "top_p") or value not in (None, [], (), getattr(neutral, name)):
            parts.append(f"{name} {value!r} ({source})")
    return ", ".join(parts)

