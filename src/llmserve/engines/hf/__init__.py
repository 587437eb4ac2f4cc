"""The transformers engine (``pip install llmserve[hf]``): imports torch, so load it only when chosen."""

from llmserve.engines.hf.engine import HFEngine

__all__ = ["HFEngine"]
