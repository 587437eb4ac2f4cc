"""The llguidance backend, guides (lazy triggers) and masks over the bundled model's vocabulary."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from llmserve.errors import InvalidRequest
from llmserve.structured import GrammarCompiler, GrammarViolation, Guide, MaskBatch, apply_bitmask
from llmserve.structured.backend import GrammarError
from llmserve.types import Constraint

pytestmark = pytest.mark.model

TOOL_GRAMMAR = 'start: "<tool_call>" %json {"type": "object", "properties": {"a": {"type": "integer"}}, ' \
               '"required": ["a"], "additionalProperties": false} "</tool_call>"'


def allowed(backend, guide: Guide) -> set[bytes]:
    masks = MaskBatch(2, backend.vocab_size)
    try:
        masks.start([(guide, 1)])
        forbidden = masks.wait()[1]
    finally:
        masks.close()
    return {backend.piece(int(t)) for t in np.nonzero(~forbidden)[0]}


def feed(guide: Guide, vocab_model, text: str) -> None:
    for token in vocab_model.tokenize(text):
        guide.accept(token, vocab_model.piece(token))


def test_choice_masks_and_completion(backend, vocab_model):
    guide = Guide(backend.compile(Constraint("choice", '["yes", "no"]')), backend)
    assert guide.active and not guide.done
    assert allowed(backend, guide) == {b"y", b"ye", b"yes", b"n", b"no"}
    feed(guide, vocab_model, "yes")
    assert guide.done
    # once complete only end-of-generation tokens remain
    assert all(vocab_model.is_eog(vocab_model.tokenize(p.decode(), parse_special=True)[0]) for p in allowed(backend, guide))


def test_json_whitespace_is_bounded(backend, vocab_model):
    guide = Guide(backend.compile(Constraint("json_object")), backend)
    assert not any(p.strip() != p for p in allowed(backend, guide))  # no leading/trailing whitespace
    feed(guide, vocab_model, '{"a":')
    assert not any(p.isspace() or p.startswith((b" ", b"\n")) for p in allowed(backend, guide))
    with pytest.raises(GrammarViolation):
        feed(guide, vocab_model, "\n")


def test_rejected_token_is_a_violation(backend, vocab_model):
    guide = Guide(backend.compile(Constraint("regex", r"[0-9]{3}")), backend)
    feed(guide, vocab_model, "12")
    with pytest.raises(GrammarViolation):
        feed(guide, vocab_model, "x")


@pytest.mark.parametrize("constraint, words", [
    (Constraint("regex", "a(b"), "unclosed group"),
    (Constraint("json_schema", '{"type": "object", "properties": {"a": {"$ref": "#/nope"}}}'), "/nope"),
    (Constraint("grammar", "start: foo"), "foo"),
    (Constraint("json_schema", '{"type": "integer", "minimum": 5, "maximum": 1}'), ""),
])
def test_compile_errors_carry_the_reason(backend, constraint, words):
    with pytest.raises(GrammarError) as info:
        backend.compile(constraint)
    assert words in str(info.value) and str(info.value)


def test_lazy_guide_is_free_until_the_trigger(backend, vocab_model):
    """SmolLM2 spells <tool_call> as five plain tokens; the last one here also carries text past
    the trigger ('>{' is one token), which the grammar is fed too."""
    guide = Guide(backend.compile(Constraint("grammar", TOOL_GRAMMAR)), backend, trigger="<tool_call>")
    tokens = vocab_model.tokenize('Sure, <tool_call>{"a":1}</tool_call>')
    pieces = [vocab_model.piece(t) for t in tokens]
    assert b"<tool_call>" not in pieces
    seen = b""
    for token, piece in zip(tokens, pieces):
        guide.accept(token, piece)
        seen += piece
        assert guide.active == (b"<tool_call>" in seen)
    assert guide.done


def test_lazy_trigger_ending_mid_token(backend, vocab_model):
    guide = Guide(backend.compile(Constraint("grammar", 'start: "Paris" " is nice"')), backend, trigger="Par")
    feed(guide, vocab_model, "The capital is")
    assert not guide.active
    (paris,) = vocab_model.tokenize(" Paris")
    guide.accept(paris, vocab_model.piece(paris))  # " Paris": the trigger ends inside the token
    assert guide.active and not guide.done
    assert allowed(backend, guide) <= {b" ", b" is", b" i"}
    feed(guide, vocab_model, " is nice")
    assert guide.done


def test_lazy_text_after_the_trigger_must_match(backend, vocab_model):
    guide = Guide(backend.compile(Constraint("grammar", TOOL_GRAMMAR)), backend, trigger="<tool_call>")
    with pytest.raises(GrammarViolation, match="tool_call"):
        feed(guide, vocab_model, "<tool_call>nonsense")


def test_apply_bitmask_in_place(backend):
    logits = np.arange(6, dtype=np.float32)
    view = logits[:]
    apply_bitmask(view, np.array([True, False, True, False, False, True]))
    assert logits.tolist() == [-np.inf, 1, -np.inf, 3, 4, -np.inf]


async def test_compiler_caches_and_compiles_off_the_loop(backend):
    threads = []

    class Recording:
        vocab_size = backend.vocab_size

        def compile(self, c):
            threads.append(threading.current_thread().name)
            return backend.compile(c)

        def __getattr__(self, name):
            return getattr(backend, name)

    compiler = GrammarCompiler(Recording)
    try:
        schema = Constraint("json_schema", json.dumps({"type": "object", "properties": {"x": {"type": "string"}}}))
        a, b = await asyncio.gather(compiler.compile(schema), compiler.compile(schema))
        assert a is b  # one compile for both, on the pool (not the event loop's thread)
        assert len(threads) == 1 and threads[0].startswith("llmserve-grammar")
        assert await compiler.compile(Constraint("json_schema", schema.spec)) is a
        with pytest.raises(InvalidRequest) as info:
            await compiler.compile(Constraint("regex", "(("))
        assert info.value.param == "response_format" and "regex" in str(info.value)
        guide = await compiler.guide(Constraint("choice", '["a"]', trigger="x"))
        assert not guide.active
    finally:
        compiler.close()


def test_lark_helpers_keep_embedded_json_compact(backend):
    from llmserve.structured.lark import json_rule, literal

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    grammar = backend.compile(Constraint("grammar", f"start: {literal('<tool_call>')} {json_rule(schema)} "
                                                    f"{literal('</tool_call>')}"))

    def ok(text: str) -> bool:
        m = grammar.matcher()
        return m.consume(backend.tokenize(text.encode())) and m.accepting

    assert ok('<tool_call>{"a":1}</tool_call>')
    assert not ok('<tool_call>{"a": 1}</tool_call>') and not ok('<tool_call>{"b":1}</tool_call>')
