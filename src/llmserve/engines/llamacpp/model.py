"""Thin ctypes wrappers over a llama.cpp model, its vocabulary and one context."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as ll

from llmserve.errors import EngineError, InvalidModel, ModelNotFound

logger = logging.getLogger(__name__)
# ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR, 5: logging.DEBUG}


@ll.llama_log_callback
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp is chatty at INFO; route everything into logging, info-level lines as DEBUG
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        logging.getLogger("llama_cpp").log(_GGML_LEVELS.get(level, logging.DEBUG), "%s", msg)


class _LoadErrors(logging.Handler):
    """Collects llama.cpp's error lines while a model loads, to say why it failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def reason(self) -> str:
        """'unknown model architecture: ...', 'tensor ... is not within the file bounds ...'."""
        said = [line.split("error loading model: ", 1)[-1] for line in self.lines]
        useful = [s for s in said if "failed to load model" not in s]
        return (useful or said or ["no reason given"])[0]


class LlamaModel:
    """A loaded GGUF model with its vocabulary. Tokenization is thread-safe (read-only).
    ``vocab_only``: the vocabulary and hyperparameters only, no weights (a quick check that
    llama.cpp can load the file: its architecture is known, its tensors are all there)."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = 0, vocab_only: bool = False):
        path = Path(path)
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        ll.llama_log_set(_log_to_python, ctypes.c_void_p(0))
        ll.llama_backend_init()
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        errors, llama_log = _LoadErrors(), logging.getLogger("llama_cpp")
        llama_log.addHandler(errors)
        try:
            self._model = ll.llama_model_load_from_file(str(path).encode(), params)
        finally:
            llama_log.removeHandler(errors)
        if not self._model:
            raise InvalidModel(f"llama.cpp cannot load {path}: {errors.reason()}")
        self.vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = ll.llama_model_n_ctx_train(self._model)
        self.metadata = self._read_metadata()

    @property
    def ptr(self):
        return self._model

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes (f16 K and V in every layer)."""
        m = self._model
        n_head = max(1, ll.llama_model_n_head(m))
        head_dim = ll.llama_model_n_embd(m) // n_head
        return 2 * 2 * ll.llama_model_n_layer(m) * ll.llama_model_n_head_kv(m) * head_dim

    def close(self) -> None:
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        for i in range(ll.llama_model_meta_count(self._model)):
            n = ll.llama_model_meta_key_by_index(self._model, i, buf, size)
            key = buf.value.decode("utf-8", "replace")
            n = ll.llama_model_meta_val_str_by_index(self._model, i, buf, size)
            if n >= size:  # a long value (chat templates can be large)
                big = ctypes.create_string_buffer(n + 1)
                ll.llama_model_meta_val_str_by_index(self._model, i, big, n + 1)
                out[key] = big.value.decode("utf-8", "replace")
            else:
                out[key] = buf.value.decode("utf-8", "replace")
        return out

    def chat_template(self) -> str | None:
        ptr = ll.llama_model_chat_template(self._model, None)
        return ptr.decode("utf-8") if ptr else None

    def token_text(self, token: int) -> str:
        """The special-token string of ``token`` (e.g. ``<|im_start|>``), for templates."""
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "replace")

    @property
    def bos(self) -> int:
        return ll.llama_vocab_bos(self.vocab)

    @property
    def eos(self) -> int:
        return ll.llama_vocab_eos(self.vocab)

    def is_eog(self, token: int) -> bool:
        return ll.llama_vocab_is_eog(self.vocab, token)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError(f"tokenization failed ({n})")
        return list(buf[:n])

    def scan_vocab(self) -> tuple[frozenset[str], int]:
        """The texts of the tokens llama.cpp parses as control tokens (``<|im_end|>``), and the
        most characters one token stands for (special tokens included)."""
        special: set[str] = set()
        longest = 1
        control = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN
        for token in range(self.n_vocab):
            piece = self.piece(token, special=True)
            longest = max(longest, len(piece))
            if ll.llama_vocab_get_attr(self.vocab, token) & control and piece:
                special.add(piece.decode("utf-8", "replace"))
        return frozenset(special), longest

    def piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", "replace")


class LlamaContext:
    """One llama.cpp context: the KV cache for ``n_seq`` sequences. Used by one thread only.

    ``unified``: one buffer of ``n_ctx`` cells shared by every sequence (a sequence may use all
    of it, and ``seq_cp`` shares cells instead of copying them), as llama-server's
    ``--kv-unified``; else each sequence owns a stream of ``n_ctx / n_seq`` cells."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_seq: int, n_batch: int, n_threads: int,
                 flash_attn: str = "off", unified: bool = True, n_ubatch: int | None = None):
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch or n_batch
        params.n_seq_max = n_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = unified
        params.no_perf = True
        params.flash_attn_type = {"auto": ll.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": ll.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  "off": ll.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        self._ctx = ll.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.memory = ll.llama_get_memory(self._ctx)
        self.n_ctx = ll.llama_n_ctx(self._ctx)
        self.n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)  # what one sequence may use: n_ctx when unified
        self.unified = unified
        self.n_batch = ll.llama_n_batch(self._ctx)

    @property
    def ptr(self):
        return self._ctx

    def close(self) -> None:
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return ll.llama_memory_seq_rm(self.memory, seq_id, p0, p1)

    def seq_pos_max(self, seq_id: int) -> int:
        """The last position ``seq_id`` holds in the cache (-1: none)."""
        return ll.llama_memory_seq_pos_max(self.memory, seq_id)
