"""The vLLM engine (``pip install llmserve[vllm]``): imports vllm, so load it only when chosen."""

from llmserve.engines.vllm.engine import VLLMEngine

__all__ = ["VLLMEngine"]
