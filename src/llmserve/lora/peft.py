"""A PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``), read with
numpy: the A and B matrices of each adapted module and the scale PEFT applies to it."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmserve.lora.spec import AdapterError

_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(?P<module>layers\.\d+\.[\w.]+?)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class LoraModule:
    a: np.ndarray  # (rank, in_features)
    b: np.ndarray  # (out_features, rank)
    scale: float  # what PEFT multiplies B @ A by

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class PeftAdapter:
    path: Path
    config: dict
    modules: dict[str, LoraModule]  # "layers.N.self_attn.q_proj" -> its matrices

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    @property
    def max_rank(self) -> int:
        return max(m.rank for m in self.modules.values())


def is_peft_dir(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").is_file()


def read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path}: cannot read adapter_config.json ({exc})") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save (fully trained layers)"),
                      ("lora_bias", "LoRA biases"), ("target_parameters", "target_parameters")):
        if config.get(key):
            raise AdapterError(f"{path}: {what} is not supported, only plain LoRA on linear layers")
    return config


def read_peft(path: Path) -> PeftAdapter:
    """Raises ``AdapterError`` (one line) for anything llmserve cannot apply."""
    config = read_config(path)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterError(f"{path}: no adapter_model.safetensors (save the adapter with safe_serialization)")
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # a corrupt file: safetensors raises its own error types
        raise AdapterError(f"{path}: cannot read adapter_model.safetensors ({exc})") from None
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"{path}: tensor {key} is not a LoRA A/B matrix of a transformer layer "
                               "(embedding and lm_head adapters are not supported)")
        pairs.setdefault(match["module"], {})[match["ab"]] = value.astype(np.float32)
    if not pairs:
        raise AdapterError(f"{path}: the adapter holds no LoRA matrices")
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    modules = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {name} has lora_{''.join(ab)} without its pair")
        r = _pattern(ranks, name, rank)
        a = _pattern(alphas, name, alpha)
        scale = a / math.sqrt(r) if config.get("use_rslora") else a / r
        modules[name] = LoraModule(ab["A"], ab["B"], scale)
    return PeftAdapter(path, config, modules)


def _pattern(patterns: dict, name: str, default):
    for key, value in patterns.items():
        if re.search(rf"(^|\.){re.escape(key)}$", name) or re.fullmatch(key, name):
            return value
    return default
