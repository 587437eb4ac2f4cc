"""Runs the JSON-Schema-Test-Suite (shipped inside the ``jsonschema`` sdist) through a grammar
backend: for every schema that compiles, each valid instance must be accepted and each invalid
one rejected. ``python -m llmserve.structured.schema_suite`` prints the coverage table that
docs/structured-output.md records.

Instances are written as compact JSON (``,`` and ``:``, no spaces), the only layout the JSON
grammars allow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from llmserve.structured.backend import GrammarBackend, GrammarError
from llmserve.types import Constraint

DRAFT = "draft2020-12"
# need a network fetch of another schema, or test the $schema/vocabulary machinery, not output shapes
SKIPPED_FILES = {"refRemote.json", "vocabulary.json", "dynamicRef.json"}


def suite_dir(cache: Path, version: str) -> Path:
    """The suite's ``tests/<draft>`` directory, downloaded once (pip, the sdist) into ``cache``."""
    target = cache / f"jsonschema-{version}" / DRAFT
    if target.is_dir() and any(target.glob("*.json")):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                    f"jsonschema=={version}", "-d", str(cache)], check=True)
    sdist = cache / f"jsonschema-{version}.tar.gz"
    prefix = f"jsonschema-{version}/json/tests/{DRAFT}/"
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name
            if name.startswith(prefix) and name.endswith(".json") and "/" not in name[len(prefix):]:
                (tmp / Path(name).name).write_bytes(tar.extractfile(member).read())
    tmp.rename(target)
    return target


@dataclass
class FileResult:
    name: str
    schemas: int = 0
    compiled: int = 0
    instances: int = 0  # of the compiled schemas
    agreed: int = 0
    # "<schema description> / <test description>": valid instances the grammar rejects (stricter
    # than the schema: the output is still valid), and invalid ones it accepts (unsound)
    too_strict: list[str] = field(default_factory=list)
    too_lax: list[str] = field(default_factory=list)


def matches(backend: GrammarBackend, grammar, text: str) -> bool:
    m = grammar.matcher()
    return m.consume(backend.tokenize(text.encode())) and m.accepting


def run_file(backend: GrammarBackend, path: Path) -> FileResult:
    result = FileResult(path.name)
    for case in json.loads(path.read_text()):
        result.schemas += 1
        try:
            grammar = backend.compile(Constraint("json_schema", json.dumps(case["schema"])))
        except GrammarError:
            continue
        result.compiled += 1
        for test in case["tests"]:
            result.instances += 1
            text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
            if matches(backend, grammar, text) == test["valid"]:
                result.agreed += 1
            else:
                wrong = result.too_strict if test["valid"] else result.too_lax
                wrong.append(f"{case['description']} / {test['description']}")
    return result


def run(backend: GrammarBackend, directory: Path) -> list[FileResult]:
    return [run_file(backend, p) for p in sorted(directory.glob("*.json")) if p.name not in SKIPPED_FILES]


def table(results: list[FileResult]) -> str:
    lines = ["| keyword file | schemas | compiled | instances | agreed | valid rejected | invalid accepted |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name[:-5]} | {r.schemas} | {r.compiled} | {r.instances} | {r.agreed} | "
                     f"{len(r.too_strict)} | {len(r.too_lax)} |")
    tot = [sum(getattr(r, k) for r in results) for k in ("schemas", "compiled", "instances", "agreed")]
    strict, lax = sum(len(r.too_strict) for r in results), sum(len(r.too_lax) for r in results)
    lines.append(f"| **all** | {tot[0]} | {tot[1]} | {tot[2]} | {tot[3]} | {strict} | {lax} |")
    return "\n".join(lines)


def main() -> None:
    from importlib.metadata import version

    from llmserve.engines.llamacpp.model import LlamaModel
    from llmserve.models import bundled_model_path
    from llmserve.structured.llguidance_backend import LLGuidanceBackend

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llmserve" / "schema-suite")
    parser.add_argument("--wrong", action="store_true", help="list every instance the grammar got wrong")
    args = parser.parse_args()
    model = LlamaModel(bundled_model_path())
    eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
    backend = LLGuidanceBackend.from_llamacpp(model.vocab, eog=eog, n_vocab=model.n_vocab)
    results = run(backend, suite_dir(args.cache, version("jsonschema")))
    print(table(results))
    if args.wrong:
        for r in results:
            for w in r.too_strict:
                print(f"valid rejected  {r.name}: {w}")
            for w in r.too_lax:
                print(f"invalid ACCEPTED {r.name}: {w}")


if __name__ == "__main__":
    main()
