"""The test LoRA: trained once per machine by ``train_adapter.py`` (PEFT on the CPU, about half a
minute), cached under ~/.cache/llmserve/test-lora/<hash of the training script>."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


def adapter_cache() -> Path:
    digest = hashlib.sha256((HERE / "train_adapter.py").read_bytes()).hexdigest()[:16]
    return Path.home() / ".cache" / "llmserve" / "test-lora" / digest


@pytest.fixture(scope="session")
def trained_adapter() -> Path:
    """A PEFT adapter directory, as PEFT saves it, trained on the bundled model."""
    out = adapter_cache()
    if not (out / "adapter_model.safetensors").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, str(HERE / "train_adapter.py"), str(tmp)], check=True, env=env, timeout=600)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def mismatched_adapter(trained_adapter: Path, tmp_path_factory) -> Path:
    """The trained adapter with one module's A matrix widened: made for a model with 1024-wide
    layers (another base), which the bundled 576-wide model cannot take."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("mismatched")
    tensors = load_file(str(trained_adapter / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = np.zeros((tensors[key].shape[0], 1024), dtype=np.float32)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(json.loads((trained_adapter / "adapter_config.json").read_text())))
    return out
