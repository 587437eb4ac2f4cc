"""Schemathesis against /openapi.json of a live ``llmserve serve`` on the bundled model: every
response is documented (status, content type, schema) and none is a server error. Bounded
(``--max-time``), fixed seed, loopback only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import serve

pytestmark = pytest.mark.reliability

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_TIME_S = 60


def test_schemathesis_finds_no_failure(tmp_path):
    cli = Path(sys.executable).parent / "schemathesis"
    # a small context keeps each generated request short (max_tokens is bounded by it)
    with serve("--parallel", "4", "--ctx-size", "2048") as (url, _):
        run = subprocess.run(
            [str(cli), "run", f"{url}/openapi.json", "--checks", CHECKS, "--seed", "20",
             "--max-time", str(MAX_TIME_S), "--request-timeout", "60", "--generation-database", "none",
             "--no-color", "--workers", "2"],
            cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME_S + 120,
        )
    summary = run.stdout[-6000:]
    print(summary)
    assert run.returncode == 0, summary
