"""vLLM adapter over the v1 ``AsyncLLM``: DELTA streaming, usage, abort on disconnect.

vLLM schedules and batches itself (``parallel`` becomes ``max_num_seqs``); this adapter adds
llmserve's admission (``max_queue``, ``queue_timeout``, counted until a request's first output)
and translates vLLM errors into llmserve's. The engine core runs in a child process started by
``start``, never at import. Options: ``dtype`` (default ``bfloat16``), ``enforce_eager``
(default true), ``kv_cache_bytes`` (default 1 GiB), ``cache_dir`` (where a GGUF is converted, default
``~/.cache/llmserve``), ``seed``, ``structured_backend`` (``guidance`` default, or ``xgrammar``).
LoRA (``--lora``, ``LoRARequest`` per request): ``enable_lora`` (default: when adapters are given at
start; set it to load adapters at run time only), ``max_lora_rank`` (default: the largest rank
given, at least 16), ``max_loras`` (adapters in one batch, default: those given, at least 4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from pathlib import Path

from vllm import SamplingParams as VSamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from llmserve.chat_template import ChatTemplate
from llmserve.engines.base import Engine
from llmserve.engines.transformers_check import check_transformers_model
from llmserve.engines.hftok import HFTokenizing
from llmserve.engines.vllm.convert import hf_dir_for
from llmserve.engines.vllm.logprobs import records
from llmserve.errors import EngineError, InvalidModel, InvalidRequest, LLMServeError, ModelLoading, Overloaded, QueueTimeout
from llmserve.settings import ModelSettings
from llmserve.structured import KINDS
from llmserve.types import (
    ALL_SAMPLING,
    Capabilities,
    Constraint,
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Message,
    SamplingParams,
    Usage,
)

logger = logging.getLogger(__name__)

DEFAULT_KV_BYTES = 1 << 30
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


def structured_outputs(constraint: Constraint | None) -> StructuredOutputsParams | None:
    """vLLM's own structured outputs (compact JSON: the engine's ``disable_any_whitespace``)."""
    if constraint is None:
        return None
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        return StructuredOutputsParams(json=spec)
    if kind == "choice":
        return StructuredOutputsParams(choice=json.loads(spec))
    if kind == "regex":
        return StructuredOutputsParams(regex=spec)
    return StructuredOutputsParams(grammar=spec)


def to_vllm(params: SamplingParams, max_tokens: int, constraint: Constraint | None = None) -> VSamplingParams:
    """One to one; stop strings stay with ChatModel, which applies them for every engine."""
    return VSamplingParams(
        structured_outputs=structured_outputs(constraint),
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        max_tokens=max_tokens,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        ignore_eos=params.ignore_eos,
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        logit_bias=dict(params.logit_bias) or None,
        output_kind=RequestOutputKind.DELTA,
        skip_special_tokens=False,
    )


class VLLMEngine(Engine):
    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.llm: AsyncLLM | None = None
        self.tokenizer = None
        self.tokens: HFTokenizing | None = None
        self.template: ChatTemplate | None = None
        self.max_context = 0
        self._started: dict[str, bool] = {}  # in flight: request id -> has produced output
        self.loras: dict[str, LoRARequest] = {}  # served adapter name -> vLLM's request for it
        self._next_lora_id = 1

    @classmethod
    def preflight(cls, settings: ModelSettings) -> None:
        """What ``check_transformers_model`` checks, and an architecture vLLM implements."""
        path = Path(settings.resolved_path())
        config = check_transformers_model(path, "vllm")
        archs = list(getattr(config, "architectures", None) or [])
        if archs:
            from vllm import ModelRegistry

            if not set(archs) & set(ModelRegistry.get_supported_archs()):
                raise InvalidModel(f"{path}: vLLM does not implement {', '.join(archs)}")

    async def start(self) -> None:
        s, opts = self.settings, self.settings.options
        t0 = time.monotonic()
        cache_dir = Path(opts.get("cache_dir") or Path.home() / ".cache" / "llmserve")
        model_dir = await asyncio.to_thread(hf_dir_for, Path(s.resolved_path()), cache_dir)
        args = AsyncEngineArgs(
            model=str(model_dir),
            dtype=str(opts.get("dtype", "bfloat16")),
            max_model_len=s.ctx_size or None,
            max_num_seqs=s.slots(),
            max_num_batched_tokens=max(s.batch_size, s.ctx_size) if s.ctx_size else None,
            enforce_eager=bool(opts.get("enforce_eager", True)),
            # a fixed KV budget: vLLM's CPU default reserves 92% of RAM and refuses to start on a busy box
            kv_cache_memory_bytes=int(opts.get("kv_cache_bytes", DEFAULT_KV_BYTES)),
            seed=opts.get("seed", 0),
            disable_log_stats=True,
            # structured outputs: llguidance as on the other engines (the same schemas compile),
            # compact JSON (whitespace bounded); options.structured_backend "xgrammar" for vLLM's default
            structured_outputs_config=StructuredOutputsConfig(
                backend=str(opts.get("structured_backend", "guidance")), disable_any_whitespace=True),
            **self._lora_args(model_dir),
        )
        logger.info("starting vLLM on %s", model_dir)
        try:
            self.llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:
            raise EngineError(f"vLLM could not start: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.tokens = HFTokenizing(self.tokenizer)
        self.max_context = self.llm.model_config.max_model_len
        source = Path(s.chat_template).read_text() if s.chat_template else getattr(self.tokenizer, "chat_template", None)
        if not source:
            raise EngineError(f"{model_dir} has no chat template; pass --chat-template FILE")
        self.template = ChatTemplate(source, bos_token=self.tokenizer.bos_token or "",
                                     eos_token=self.tokenizer.eos_token or "")
        for spec in s.adapters():
            self._add_lora_request(spec, model_dir)
        logger.info("model %s ready in %.1f s (vLLM, max_num_seqs %d, context %d)",
                    s.served_name(), time.monotonic() - t0, s.slots(), self.max_context)

    # -- LoRA adapters: LoRARequest per request ---------------------------------------------------
    def _lora_args(self, model_dir: Path) -> dict[str, Any]:
        from llmserve.lora.resolve import max_rank, resolve

        opts, specs = self.settings.options, self.settings.adapters()
        for spec in specs:  # one clear line for an adapter that does not fit, before vLLM starts
            resolve(spec, Path(self.settings.resolved_path()), "vllm")
        if not (specs or opts.get("enable_lora")):
            return {}
        rank = max([16, *(max_rank(spec) for spec in specs)])
        return {"enable_lora": True, "max_lora_rank": int(opts.get("max_lora_rank", rank)),
                "max_loras": int(opts.get("max_loras", max(4, len(specs))))}

    def _add_lora_request(self, spec, model_dir: Path | None = None) -> LoRARequest:
        if spec.scale != 1.0:
            raise InvalidRequest(f"LoRA {spec.name!r}: the vLLM engine applies adapters at their trained scale; "
                                 "drop :SCALE", param="lora")
        lora = LoRARequest(spec.name, self._next_lora_id, str(spec.path.resolve()))
        self._next_lora_id += 1
        self.loras[spec.name] = lora
        return lora

    async def load_adapter(self, spec) -> None:
        from llmserve.lora.resolve import resolve

        llm = self._require()
        if not llm.vllm_config.lora_config:
            raise InvalidRequest("this vLLM engine was started without LoRA: serve with --lora, or "
                                 "options.enable_lora: true", param="lora_path")
        await asyncio.to_thread(resolve, spec, Path(self.settings.resolved_path()), "vllm")
        lora = self._add_lora_request(spec)
        try:
            await llm.add_lora(lora)
        except Exception as exc:
            self.loras.pop(spec.name, None)
            raise InvalidRequest(f"vLLM could not load LoRA {spec.name!r}: {exc}", param="lora_path") from exc

    async def unload_adapter(self, name: str) -> None:
        lora = self.loras.pop(name, None)
        if lora is None:
            return await super().unload_adapter(name)
        await self._require().remove_lora(lora.lora_int_id)

    def _lora_for(self, name: str | None) -> LoRARequest | None:
        if name is None:
            return None
        lora = self.loras.get(name)
        if lora is None:
            from llmserve.errors import ModelNotFound

            raise ModelNotFound(f"The model {name!r} does not exist (its LoRA adapter is not loaded)", param="model")
        return lora

    async def stop(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None
            if self._started:
                await llm.abort(list(self._started))
            await asyncio.to_thread(llm.shutdown)

    def _require(self) -> AsyncLLM:
        if self.llm is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.llm

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        llm = self._require()
        s = self.settings
        rid = request.request_id
        if len(self._started) >= s.slots() + s.max_queue:
            raise Overloaded("the request queue is full; try again shortly", retry_after=1)
        if rid in self._started:
            raise InvalidRequest(f"request id {rid!r} is already in flight")
        n_prompt = len(request.prompt_tokens)
        max_tokens = min(request.sampling.max_tokens or self.max_context, self.max_context - n_prompt)
        if max_tokens <= 0:
            raise InvalidRequest("the prompt fills the context window", param="messages")
        lora = self._lora_for(request.adapter)
        self._started[rid] = False
        stream = llm.generate(TokensPrompt(prompt_token_ids=list(request.prompt_tokens)),
                              to_vllm(request.sampling, max_tokens, request.constraint), rid, lora_request=lora)
        finished = False
        n_out = 0
        try:
            while not finished:
                try:
                    if self._started[rid] or s.queue_timeout is None:
                        out = await stream.__anext__()
                    else:
                        out = await asyncio.wait_for(stream.__anext__(), s.queue_timeout)
                except StopAsyncIteration:
                    raise EngineError("vLLM ended the stream without finishing the request") from None
                except asyncio.TimeoutError:
                    raise QueueTimeout(f"no output within the queue timeout ({s.queue_timeout:g}s)", retry_after=1) from None
                self._started[rid] = True
                comp = out.outputs[0]
                n_out += len(comp.token_ids)
                finished = out.finished
                reason = _FINISH.get(comp.finish_reason or "", FinishReason.STOP) if finished else None
                usage = Usage(n_prompt, n_out, out.num_cached_tokens or 0) if finished else None
                yield self._with_logprobs(request, out, Delta(comp.text, tuple(comp.token_ids), reason, usage))
        except (EngineDeadError, EngineGenerateError) as exc:
            finished = True
            raise EngineError(f"vLLM failed: {exc}") from exc
        except LLMServeError:
            raise
        except (ValueError, VLLMValidationError) as exc:  # vLLM's request validation, uncompilable constraints
            finished = True
            raise InvalidRequest(str(exc), param="response_format" if request.constraint else None) from exc
        finally:
            self._started.pop(rid, None)
            await stream.aclose()  # vLLM aborts a request whose generator closes unfinished
            if not finished:
                await llm.abort(rid)

    def _with_logprobs(self, request: GenerationRequest, out, delta: Delta) -> Delta:
        """vLLM's own logprobs (its default ``raw_logprobs``: the model's, before any processing)."""
        k, pk = request.sampling.logprobs, request.sampling.prompt_logprobs
        extra = {}
        comp = out.outputs[0]
        if k is not None and comp.logprobs:
            tokens = list(comp.token_ids)
            if delta.finish_reason is FinishReason.STOP and tokens and tokens[-1] == self.tokenizer.eos_token_id:
                tokens = tokens[:-1]  # the end-of-generation token has no text, and no entry
            extra["logprobs"] = tuple(records(tokens, comp.logprobs, k, self._piece))
        if pk is not None and out.prompt_logprobs:  # all at once, at the end of prefill (DELTA)
            extra["prompt_logprobs"] = tuple(records(request.prompt_tokens, out.prompt_logprobs, pk, self._piece))
        return dataclasses.replace(delta, **extra) if extra else delta

    def _piece(self, token: int) -> bytes:
        return self.tokenizer.decode([token]).encode("utf-8")

    async def abort(self, request_id: str) -> None:
        if self.llm is not None and request_id in self._started:
            await self.llm.abort(request_id)

    # -- model facts ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        self._require()
        return self.tokens.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        self._require()
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        self._require()
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @property
    def capabilities(self) -> Capabilities:
        # every sampling field honoured; structured outputs by vLLM itself, without lazy triggers
        tool_format = self.template.tool_format.name if self.template else None
        if self.tokens is None:
            return Capabilities(sampling=ALL_SAMPLING, max_context=self.max_context, constraints=KINDS,
                                tool_format=tool_format)
        return Capabilities(sampling=ALL_SAMPLING, max_context=self.max_context, constraints=KINDS,
                            tool_format=tool_format,
                            special_tokens=self.tokens.special_tokens, max_token_chars=self.tokens.max_token_chars,
                            vocab_size=len(self.tokenizer))

    def stats(self) -> EngineStats:
        if self.llm is None:
            return EngineStats(loaded=False)
        running = sum(self._started.values())
        return EngineStats(loaded=True, running=running, waiting=len(self._started) - running)
