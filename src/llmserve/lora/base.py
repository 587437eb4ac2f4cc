"""The base model's side of an adapter: its architecture and the shapes of its linear layers,
read from file headers (no weights loaded), and the check that an adapter fits them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from llmserve.lora.peft import PeftAdapter
from llmserve.lora.spec import AdapterError

# Hugging Face module names -> llama.cpp tensor names, within one transformer layer
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_TO_HF = {v: k for k, v in HF_TO_GGUF.items()}
_BLK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


@dataclass(frozen=True)
class BaseShapes:
    arch: str  # GGUF general.architecture (llama, qwen2, ...)
    n_head: int
    n_head_kv: int
    linear: dict[str, tuple[int, int]]  # "layers.N.self_attn.q_proj" -> (out_features, in_features)


def gguf_name(module: str) -> str:
    """``layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``."""
    _, layer, rest = module.split(".", 2)
    return f"blk.{layer}.{HF_TO_GGUF[rest]}"


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types and field.types[0].name == "STRING" else value[0].item()


def from_gguf(path: Path) -> BaseShapes:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture") or "?"
    n_head = int(_field(reader, f"{arch}.attention.head_count") or 0)
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or n_head)
    linear = {}
    for tensor in reader.tensors:
        match = _BLK.match(tensor.name)
        if match and match[2] in GGUF_TO_HF:
            ne = [int(x) for x in tensor.shape]  # ggml order: (in, out)
            linear[f"layers.{match[1]}.{GGUF_TO_HF[match[2]]}"] = (ne[1], ne[0])
    return BaseShapes(arch, n_head, n_head_kv, linear)


def from_hf(path: Path) -> BaseShapes:
    """A transformers model directory: shapes from config.json (llama-style layers)."""
    config = json.loads((path / "config.json").read_text())
    config = config.get("text_config", config)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or hidden // n_head
    per_layer = {
        "self_attn.q_proj": (n_head * head_dim, hidden), "self_attn.k_proj": (n_kv * head_dim, hidden),
        "self_attn.v_proj": (n_kv * head_dim, hidden), "self_attn.o_proj": (hidden, n_head * head_dim),
        "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter),
    }
    linear = {f"layers.{i}.{m}": shape for i in range(config["num_hidden_layers"]) for m, shape in per_layer.items()}
    return BaseShapes(str(config.get("model_type", "?")), n_head, n_kv, linear)


def for_model(path: Path) -> BaseShapes:
    return from_gguf(path) if path.is_file() else from_hf(path)


def check_peft(name: str, adapter: PeftAdapter, base: BaseShapes) -> None:
    """Every adapted module exists in the base with the shapes the adapter was trained on."""
    for module, lora in sorted(adapter.modules.items()):
        shape = base.linear.get(module)
        if shape is None:
            raise AdapterError(f"LoRA {name!r} ({adapter.path}) adapts {module}, which the model does not have "
                               f"(a {base.arch} model with {_n_layers(base)} layers): it was trained for another base model")
        want = (lora.b.shape[0], lora.a.shape[1])
        if want != shape or lora.a.shape[0] != lora.b.shape[1]:
            raise AdapterError(f"LoRA {name!r} ({adapter.path}) does not fit the model: {module} is {shape[0]}x{shape[1]} "
                               f"in the model, {want[0]}x{want[1]} in the adapter; it was trained for another base model")


def check_gguf(name: str, path: Path, base: BaseShapes) -> None:
    """A GGUF LoRA: an adapter file, for this architecture, with matching shapes."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # not a GGUF file: gguf raises ValueError and friends
        raise AdapterError(f"LoRA {name!r}: {path} is not a readable GGUF file ({exc})") from None
    kind, arch = _field(reader, "general.type"), _field(reader, "general.architecture")
    if kind != "adapter" or _field(reader, "adapter.type") != "lora":
        raise AdapterError(f"LoRA {name!r}: {path} is not a GGUF LoRA adapter (general.type {kind!r})")
    if arch != base.arch:
        raise AdapterError(f"LoRA {name!r}: {path} is for a {arch} model, the model is {base.arch}")
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    for tname, ne in shapes.items():
        if not tname.endswith(".lora_a"):
            continue
        stem = tname.removesuffix(".weight.lora_a")
        match = _BLK.match(stem + ".weight")
        module = f"layers.{match[1]}.{GGUF_TO_HF.get(match[2], match[2])}" if match else stem
        shape = base.linear.get(module)
        b = shapes.get(stem + ".weight.lora_b")
        if shape is None or b is None or (b[1], ne[0]) != shape:
            raise AdapterError(f"LoRA {name!r} ({path}) does not fit the model at {stem}: "
                               "it was trained for another base model")


def _n_layers(base: BaseShapes) -> int:
    return len({m.split(".")[1] for m in base.linear})
