"""From ``--lora NAME=PATH`` to what an engine loads, checked against the served model first."""

from __future__ import annotations

from pathlib import Path

from llmserve.lora.base import check_gguf, check_peft, for_model
from llmserve.lora.peft import is_peft_dir, read_peft
from llmserve.lora.spec import AdapterError, AdapterSpec


def resolve(spec: AdapterSpec, model_path: Path, engine: str) -> Path:
    """The file or directory ``engine`` loads for ``spec`` (llama.cpp: a GGUF LoRA, converted
    and cached from a PEFT directory; others: the PEFT directory). Raises ``AdapterError`` with
    one line when the adapter cannot be served on the model at ``model_path``."""
    if not spec.path.exists():
        raise AdapterError(f"LoRA {spec.name!r}: {spec.path} does not exist")
    base = for_model(model_path)
    if spec.is_gguf:
        if engine != "llamacpp":
            raise AdapterError(f"LoRA {spec.name!r}: a GGUF LoRA serves on the llama.cpp engine only; "
                               f"give the {engine} engine the PEFT adapter directory")
        check_gguf(spec.name, spec.path, base)
        return spec.path
    if not is_peft_dir(spec.path):
        raise AdapterError(f"LoRA {spec.name!r}: {spec.path} is neither a PEFT adapter directory "
                           "(adapter_config.json + adapter_model.safetensors) nor a .gguf LoRA")
    adapter = read_peft(spec.path)
    check_peft(spec.name, adapter, base)
    if engine == "llamacpp":
        from llmserve.lora.to_gguf import convert

        return convert(adapter, base)
    return spec.path


def max_rank(spec: AdapterSpec) -> int:
    """The adapter's LoRA rank (vLLM sizes its LoRA buffers by the largest)."""
    if is_peft_dir(spec.path):
        return int(read_peft(spec.path).max_rank)
    return 0
