"""The reliability tier (``make test-reliability``, run by ``make test``): live servers on the
bundled model under hostile input, a schema fuzzer, a soak, and injected engine faults."""

from __future__ import annotations
