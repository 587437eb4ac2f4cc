"""Start-up checks for a model that transformers reads (the hf engine; vLLM's config and GGUF
conversion): no weights are loaded, only what says whether loading can work."""

from __future__ import annotations

from pathlib import Path

from llmserve.errors import InvalidModel
from llmserve.models import gguf_architecture, model_kind


def check_transformers_model(path: Path, engine: str):
    """The model's transformers config (None for a GGUF file); ``InvalidModel`` when transformers
    cannot read it: a GGUF of an architecture it does not convert, an unknown ``model_type``, no
    weights. ``ModelNotFound`` when nothing is at ``path``."""
    if model_kind(path) == "gguf":
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        arch = gguf_architecture(path)
        names = {arch, arch.replace("-", "_"), arch.replace("moe", "_moe")}
        if not names & set(GGUF_SUPPORTED_ARCHITECTURES):
            raise InvalidModel(
                f"{path} is a GGUF of architecture {arch!r}, which transformers cannot read (the {engine} engine "
                "loads GGUF files through it); serve it with --engine llamacpp")
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError, KeyError) as exc:
        reason = str(exc).strip().split("\n")[0]
        raise InvalidModel(f"transformers cannot load {path}: {reason}") from None
    if not (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        raise InvalidModel(f"{path} has no weights (no *.safetensors or *.bin files)")
    return config
