"""The llguidance backend over the bundled model's llama.cpp vocabulary, once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmserve.engines.llamacpp.model import LlamaModel
from llmserve.structured.llguidance_backend import LLGuidanceBackend


@pytest.fixture(scope="session")
def vocab_model(bundled_path) -> Iterator[LlamaModel]:
    model = LlamaModel(bundled_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def backend(vocab_model) -> LLGuidanceBackend:
    m = vocab_model
    return LLGuidanceBackend.from_llamacpp(m.vocab, eog=[t for t in range(m.n_vocab) if m.is_eog(t)], n_vocab=m.n_vocab)
