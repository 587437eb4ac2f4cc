"""llmserve's llama.cpp patches (patches/llama.cpp) as seen from Python.

``scripts/build-llama-cpp-python.sh`` builds llama-cpp-python with them; a stock build from PyPI
runs too, without them. ``0001`` adds Q4_1 x Q8_1 tiles to llamafile's sgemm: a decode step of 8
sequences on a Q4_1 model takes ~1.5x less time, with bit-identical logits. ``0002`` makes flash
attention batch-invariant: a query row's result depends on its own keys only, not on which KV
cells they sit in nor on the rest of the batch, so identical greedy or seeded requests give
identical answers on the unified cache, whatever else runs.
"""

from __future__ import annotations

import ctypes
import logging
import os

import llama_cpp as ll

logger = logging.getLogger(__name__)


def _ggml_cpu() -> ctypes.CDLL | None:
    """The ggml CPU backend as loaded by llama-cpp-python (from its lib dir or LLAMA_CPP_LIB_PATH).

    Wheels ship libggml-cpu.so, .so.0 and .so.0.x as separate copies, and opening a copy that is
    not the loaded one would map a second library with a switch of its own: RTLD_NOLOAD only
    answers for the one already in the process."""
    for path in sorted(ll.llama_cpp._base_path.glob("*ggml-cpu*")):
        try:
            return ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except OSError:
            continue
    return None


def _patched(name: str) -> ctypes._CFuncPtr | None:
    lib = _ggml_cpu()
    return getattr(lib, name, None) if lib is not None else None


def _set(name: str, ctype: type, value) -> bool:
    """Calls the patch's setter ``name(value)``; False when the loaded build lacks it."""
    setter = _patched(name)
    if setter is None:
        return False
    setter.argtypes, setter.restype = [ctype], None
    setter(value)
    return True


def q4_1_tiles_available() -> bool:
    """The loaded llama.cpp build carries llmserve's Q4_1 tile patch."""
    return _patched("llamafile_set_q4_1_gemm") is not None


def set_q4_1_tiles(enabled: bool) -> bool:
    """Turns the Q4_1 tiles on or off for the whole process (they are on by default; off runs
    ggml's stock vec_dot, for A/B runs). False when the build lacks the patch."""
    return _set("llamafile_set_q4_1_gemm", ctypes.c_bool, enabled)


def set_q4_1_columns(mask: int) -> bool:
    """Chooses the tiles per batch size: bit ``min(n, 64) - 1`` set means a matmul of ``n``
    activation columns (sequences of a decode step, tokens of a prefill chunk) uses the tiles,
    clear means ggml's vec_dot. False when the build lacks the patch (or predates the mask)."""
    return _set("llamafile_set_q4_1_gemm_columns", ctypes.c_uint64, mask & (1 << 64) - 1)


def q4_1_tile_calls() -> int:
    """Matmuls (per thread) the tiles have served in this process; -1 without the patch."""
    calls = _patched("llamafile_q4_1_gemm_calls")
    if calls is None:
        return -1
    calls.argtypes, calls.restype = [], ctypes.c_uint64
    return calls()


def invariant_attention_available() -> bool:
    """The loaded llama.cpp build carries llmserve's batch-invariant flash attention."""
    return _patched("ggml_cpu_fa_invariant") is not None


def set_invariant_attention(enabled: bool) -> bool:
    """Batch-invariant flash attention on (the patched build's default) or off (ggml's own
    kernels, for A/B runs), for the whole process. False when the build lacks the patch."""
    return _set("ggml_cpu_set_fa_invariant", ctypes.c_bool, enabled)


def log_build() -> None:
    if q4_1_tiles_available():
        logger.info("llama.cpp build with llmserve's patches: Q4_1 weights multiply in tiles of sequences%s",
                    ", flash attention is batch-invariant" if invariant_attention_available() else "")
    else:
        logger.info("stock llama.cpp build: Q4_1 models decode batches ~1.5x slower than with "
                    "scripts/build-llama-cpp-python.sh")
