"""Engine registry: import strings, so a backend is imported only when it is chosen."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from llmserve.errors import EngineUnavailable, InvalidRequest

if TYPE_CHECKING:
    from llmserve.engines.base import Engine
    from llmserve.settings import ModelSettings

ENGINES: dict[str, str] = {
    "llamacpp": "llmserve.engines.llamacpp.engine:LlamaCppEngine",
    "hf": "llmserve.engines.hf:HFEngine",
    "vllm": "llmserve.engines.vllm:VLLMEngine",
    "fake": "llmserve.engines.fake:FakeEngine",
}
# what to do when an engine's packages are missing from this environment
INSTALL_HINTS: dict[str, str] = {
    "llamacpp": "install it with `make install` (llama-cpp-python built with llmserve's patch), "
                "or `pip install -r requirements/run.txt`",
    "hf": "install it with `pip install -r requirements/hf.txt` (or `pip install llmserve[hf]`)",
    "vllm": "vLLM lives in its own environment: run `make install-vllm`, then "
            "`.venv-vllm/bin/llmserve serve --engine vllm`",
}
PACKAGES = {"llamacpp": "llama-cpp-python", "hf": "transformers and torch", "vllm": "vLLM"}


def engine_class(name: str) -> type[Engine]:
    """The engine class, imported now; ``EngineUnavailable`` (saying how to install it) when its
    backend cannot be imported here."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise InvalidRequest(f"unknown engine {name!r}; choose one of {', '.join(sorted(ENGINES))}",
                             param="engine") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = f"no module named {exc.name!r}" if isinstance(exc, ModuleNotFoundError) and exc.name else str(exc)
        raise EngineUnavailable(
            f"the {name} engine needs {PACKAGES.get(name, name)}, which cannot be imported in this environment "
            f"({sys.executable}: {missing}); {INSTALL_HINTS.get(name, 'install its packages')}") from None
    return getattr(module, attr)


def create_engine(model: ModelSettings) -> Engine:
    return engine_class(model.engine)(model)


def preflight(model: ModelSettings) -> None:
    """Before anything binds or loads: the engine imports here, and ``model`` names something it
    can load (``Engine.preflight``). Raises the llmserve error that says what is wrong."""
    engine_class(model.engine).preflight(model)
