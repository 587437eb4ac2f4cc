"""The trained test LoRA and a mismatched one (tests/lora/fixtures.py), for this directory."""

from tests.lora.fixtures import mismatched_adapter, trained_adapter  # noqa: F401
