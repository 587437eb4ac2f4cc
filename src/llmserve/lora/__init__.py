"""LoRA adapters served beside their base model: ``--lora NAME=PATH[:SCALE]``.

``spec``: what the user names; ``peft``: a PEFT adapter directory read without torch;
``base``: the shapes of the model an adapter must fit; ``to_gguf``: a PEFT adapter converted once
(and cached) to the GGUF LoRA llama.cpp loads. Each engine applies adapters its own way behind
``GenerationRequest.adapter``.
"""

from llmserve.lora.spec import AdapterError, AdapterSpec, parse_spec

__all__ = ["AdapterError", "AdapterSpec", "parse_spec"]
