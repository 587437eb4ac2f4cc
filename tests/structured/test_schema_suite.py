"""The JSON-Schema-Test-Suite (draft 2020-12, from the pinned jsonschema's sdist, downloaded once
into ~/.cache/llmserve/schema-suite) through llguidance with the bundled tokenizer.

Every schema that compiles must never accept an invalid instance (the reply is valid by
construction). A few valid instances are rejected by design (properties in schema order, ``1.0``
is not an integer, ``format`` enforced): those are recorded in docs/structured-output.md.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from llmserve.structured.schema_suite import run, suite_dir, table

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def suite() -> Path:
    return suite_dir(Path.home() / ".cache" / "llmserve" / "schema-suite", version("jsonschema"))


def test_compiled_schemas_accept_valid_and_reject_invalid(backend, suite):
    results = run(backend, suite)
    print(table(results))
    lax = [f"{r.name}: {w}" for r in results for w in r.too_lax]
    assert lax == []  # never an invalid instance accepted
    compiled = sum(r.compiled for r in results)
    instances = sum(r.instances for r in results)
    agreed = sum(r.agreed for r in results)
    assert compiled >= 150 and instances >= 500
    assert agreed >= 0.95 * instances
    by_name = {r.name: r for r in results}
    for keyword in ("properties", "required", "items", "prefixItems", "ref", "anyOf", "additionalProperties", "pattern"):
        r = by_name[f"{keyword}.json"]
        assert r.compiled == r.schemas or keyword in ("ref", "anyOf", "additionalProperties"), keyword
        assert r.agreed == r.instances, (keyword, r.too_strict)
