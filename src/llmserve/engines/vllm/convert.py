"""GGUF → Hugging Face safetensors directory, once, cached: vLLM core has no GGUF loader."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from llmserve.errors import EngineError, ModelNotFound

logger = logging.getLogger(__name__)


def hf_dir_for(path: Path, cache_dir: Path) -> Path:
    """``path`` itself for an HF directory; for a GGUF file, its converted copy in ``cache_dir``."""
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if not (path.is_file() and path.suffix == ".gguf"):
        raise ModelNotFound(f"not a GGUF file or a Hugging Face model directory: {path}")
    st = path.stat()
    target = cache_dir / f"{path.stem}-{st.st_size}-{int(st.st_mtime)}-hf"
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to a safetensors directory %s (once)", path, target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EngineError(f"could not convert {path} for vLLM: {exc}") from exc
    tmp.rename(target)
    return target


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the weights are dequantized already; the GGUF quantizer marks make save_pretrained refuse
    model.hf_quantizer = None
    model.is_quantized = False
    for obj in (model.config, model.generation_config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
