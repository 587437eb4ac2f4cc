"""A PEFT adapter as a GGUF LoRA for llama.cpp, written with the ``gguf`` package (no torch),
once per adapter content and base architecture, cached under ~/.cache/llmserve/lora.

As llama.cpp's ``convert_lora_to_gguf.py``: A and B keep PEFT's layout (ggml reads them as
``[in, rank]`` and ``[rank, out]``), llama models get the q/k row permutation of
``LlamaModel.permute`` on B (llama.cpp stores q and k rows rotary-interleaved), and
``adapter.lora.alpha`` makes llama.cpp scale by alpha / rank as PEFT does. Where PEFT's scale is
not alpha / rank (rsLoRA, rank or alpha patterns) the difference is folded into B.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from llmserve.lora.base import BaseShapes, gguf_name
from llmserve.lora.peft import PeftAdapter

logger = logging.getLogger(__name__)

FORMAT = "llmserve-lora-gguf-1"  # bump when the conversion changes: old cache entries are not reused
PERMUTED_ARCHS = {"llama"}  # convert_hf_to_gguf's LlamaModel permutes q/k; qwen2, mistral3 ... do not


def cache_dir() -> Path:
    return Path.home() / ".cache" / "llmserve" / "lora"


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py, on the rows of ``weights``."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def content_key(adapter: PeftAdapter, base: BaseShapes) -> str:
    digest = hashlib.sha256(FORMAT.encode())
    digest.update(f"{base.arch}:{base.n_head}:{base.n_head_kv}".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(adapter.path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def convert(adapter: PeftAdapter, base: BaseShapes, out_dir: Path | None = None) -> Path:
    """The cached GGUF LoRA of ``adapter`` for ``base`` (written first if missing)."""
    out_dir = out_dir or cache_dir()
    path = out_dir / f"{content_key(adapter, base)}.gguf"
    if path.is_file():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write(adapter, base, tmp)
    tmp.replace(path)  # atomic: a concurrent start never reads half a file
    logger.info("converted LoRA %s to %s", adapter.path, path)
    return path


def write(adapter: PeftAdapter, base: BaseShapes, path: Path) -> None:
    import gguf

    alpha = adapter.alpha
    writer = gguf.GGUFWriter(str(path), base.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for module, lora in sorted(adapter.modules.items()):
        a, b = lora.a.astype(np.float32), lora.b.astype(np.float32)
        llama_scale = alpha / lora.rank
        if not np.isclose(lora.scale, llama_scale):
            b = b * np.float32(lora.scale / llama_scale)
        if base.arch in PERMUTED_ARCHS:
            if module.endswith("self_attn.q_proj"):
                b = permute(b, base.n_head, base.n_head)
            elif module.endswith("self_attn.k_proj"):
                b = permute(b, base.n_head, base.n_head_kv)
        name = gguf_name(module)
        writer.add_tensor(f"{name}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
