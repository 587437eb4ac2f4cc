"""Real-engine tiers: each module loads one model once; heavy backends skip when not installed."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "hf: tests that load the bundled model through transformers")
    config.addinivalue_line("markers", "vllm: tests that start a vLLM engine (separate venv)")
