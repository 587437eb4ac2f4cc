"""Structured output: constraints built from requests, compiled to grammars, enforced per token.

- ``request``: wire fields (``response_format``, vLLM's ``structured_outputs`` and ``guided_*``)
  to a ``types.Constraint``.
- ``backend``: the grammar-backend protocol (compile -> grammar -> matcher).
- ``llguidance_backend``: the llguidance backend, over a llama.cpp vocabulary or a HF tokenizer.
- ``compiler``: compiles off the event loop on a bounded pool, caches by (kind, spec, trigger).
- ``guide``: one sequence's matcher, lazy until its trigger appears.
- ``masks``: fills a step's token bitmasks for a batch while the model runs, applies them.
"""

from llmserve.structured.compiler import GrammarCompiler
from llmserve.structured.guide import Guide, GrammarViolation
from llmserve.structured.masks import MaskBatch, apply_bitmask
from llmserve.structured.request import constraint_from

KINDS: frozenset[str] = frozenset({"json_schema", "json_object", "regex", "choice", "grammar"})

__all__ = ["GrammarCompiler", "Guide", "GrammarViolation", "MaskBatch", "apply_bitmask", "constraint_from", "KINDS"]
