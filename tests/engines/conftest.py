"""Real-engine tiers: each engine loads the bundled model once; heavy backends skip when not installed.

The vLLM engine starts once for the whole session (``vllm_server``): its start costs ~35 s on
2 cores, so ``test_vllm.py`` and the vllm params of ``test_api_all_engines.py`` share it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from llmserve.chat_model import AsyncChatModel
from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import THREADS, ThreadServer, free_port

NAME = "smollm2"
CTX = 1024  # tokens one request may use, for every engine
# what an engine needs importable; a missing one skips that engine's tests (and only then)
REQUIRES = {"llamacpp": ("llama_cpp",), "hf": ("torch", "transformers", "accelerate"), "vllm": ("vllm",)}


def pytest_configure(config):
    config.addinivalue_line("markers", "hf: tests that load the bundled model through transformers")
    config.addinivalue_line("markers", "vllm: tests that start a vLLM engine (separate venv)")


def require_engine(engine: str) -> None:
    for module in REQUIRES[engine]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            pytest.skip(f"engine {engine!r} needs {module!r}, which does not import here: {exc}")


def make_model(engine: str) -> AsyncChatModel:
    """The bundled model on ``engine``: 2 slots, a queue of 2, ``CTX`` tokens per request."""
    common = {"name": NAME, "parallel": 2, "max_queue": 2}
    if engine == "llamacpp":  # one unified KV cache: each request may use all of it
        return AsyncChatModel(engine="llamacpp", ctx_size=CTX, threads=THREADS, **common)
    if engine == "hf":
        return AsyncChatModel(engine="hf", ctx_size=CTX, threads=THREADS, **common)
    return AsyncChatModel(engine="vllm", ctx_size=CTX, options={"kv_cache_bytes": 256 * 1024 * 1024}, **common)


def serve(engine: str) -> ThreadServer:
    """The app over ``make_model(engine)`` on a real socket; ``.model`` and ``.engine_name`` set."""
    require_engine(engine)
    model = make_model(engine)
    server = ThreadServer(create_app(Settings(), models=[model]), free_port())
    server.model = model
    server.engine_name = engine
    return server


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ThreadServer]:
    with serve("vllm") as server:
        yield server
