"""Structured output: constraints built from requests, enforced by the engines; tool calls in ``tools``."""
