"""A thin :class:`~fleetchat.engines.base.Engine` over vLLM's ``AsyncLLMEngine`` (GPU serving).

vLLM does the batching, paging and detokenisation; this adapter renders messages with fleetchat's
chat template (the tokenizer's own by default), checks the context length before submitting, maps
:class:`SamplingParams` onto vLLM's, and turns vLLM's cumulative outputs into text deltas. Closing
the stream early (client gone) aborts the request in vLLM.

``vllm`` is imported only inside :func:`load_vllm_engine`: ``pip install 'fleetchat[vllm]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fleetchat.engines.base import EngineHealth, EngineSettings, check_context_length
from fleetchat.errors import ContextLengthExceededError, EngineError, ModelLoadError
from fleetchat.protocol.generation import (
    GenerateRequest,
    GenerationChunk,
    ModelInfo,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)


def _load_tokenizer(directory: Path, gguf_file: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def load_vllm_engine(settings: EngineSettings) -> VllmEngine:
    try:
        import vllm
    except ImportError as exc:
        raise ModelLoadError("the vllm engine needs vLLM: pip install 'fleetchat[vllm]'") from exc
    from fleetchat.engines.resolve import resolve_model

    if settings.device != "cuda":
        raise ModelLoadError(f"the vllm engine runs on CUDA GPUs; got --device {settings.device}")
    if settings.load_8bit:
        raise ModelLoadError("--load-8bit is not supported by the vllm engine; serve a pre-quantized model")
    resolved = resolve_model(settings.model_path, settings.revision)
    model = str(Path(resolved.directory) / resolved.gguf_file) if resolved.gguf_file else str(resolved.directory)
    try:
        tokenizer = _load_tokenizer(Path(resolved.directory), resolved.gguf_file, settings.trust_remote_code)
        args = vllm.AsyncEngineArgs(
            model=model,
            tokenizer=str(resolved.directory),
            dtype=settings.dtype,
            tensor_parallel_size=settings.num_gpus,
            trust_remote_code=settings.trust_remote_code,
            max_model_len=settings.context_length,
            max_num_seqs=settings.max_running,
            seed=settings.seed if settings.seed is not None else 0,
        )
        engine = vllm.AsyncLLMEngine.from_engine_args(args)
    except Exception as exc:
        raise ModelLoadError(f"vLLM cannot load {settings.model_path}: {exc}") from exc
    return VllmEngine(engine, tokenizer, settings, vllm.SamplingParams)


class VllmEngine:
    def __init__(self, engine: Any, tokenizer: Any, settings: EngineSettings, sampling_cls: Any) -> None:
        from fleetchat.conversation import get_chat_template

        self._engine = engine
        self._sampling_cls = sampling_cls
        self.tokenizer = tokenizer
        self.chat_template = get_chat_template(tokenizer, settings.conv_template, settings.conv_system_msg)
        self._running: set[str] = set()
        self._closed = False
        context = settings.context_length or _model_context_length(engine) or 2048
        self.info = ModelInfo(
            name=settings.served_names()[0],
            engine="vllm",
            model_path=settings.model_path,
            context_length=context,
            device="cuda",
            dtype=settings.dtype,
            quantization=None,
            conv_template=self.chat_template.name,
            max_running=settings.max_running,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _prepare(self, request: GenerateRequest) -> tuple[list[int], SamplingParams]:
        p = request.params
        if request.messages is not None:
            text = self.chat_template.render(request.messages)
            # the rendered template already holds BOS and the other special tokens it needs
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            p = p.model_copy(
                update={
                    "stop": tuple(dict.fromkeys((*p.stop, *self.chat_template.stop))),
                    "stop_token_ids": tuple(dict.fromkeys((*p.stop_token_ids, *self.chat_template.stop_token_ids))),
                }
            )
        elif request.prompt is not None:
            ids = self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        else:
            ids = list(request.prompt_token_ids or [])
        room = check_context_length(len(ids), p.max_new_tokens, self.info.context_length)
        if p.max_new_tokens is None:
            p = p.model_copy(update={"max_new_tokens": room})
        return list(ids), p

    def _vllm_params(self, p: SamplingParams) -> Any:
        return self._sampling_cls(
            n=1,
            temperature=0.0 if p.greedy else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            seed=p.seed,
            max_tokens=p.max_new_tokens,
            stop=list(p.stop),
            stop_token_ids=list(p.stop_token_ids),
            ignore_eos=p.ignore_eos,
            logprobs=p.logprobs,
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        if self._closed:
            raise EngineError("the vllm engine is closed")
        ids, p = self._prepare(request)
        rid = request.request_id
        stream = self._engine.generate({"prompt_token_ids": ids}, self._vllm_params(p), rid)
        self._running.add(rid)
        text_len = token_len = 0
        finished = False
        try:
            if request.echo:
                yield GenerationChunk(request_id=rid, text=self.tokenizer.decode(ids), prompt_tokens=len(ids))
            async for out in stream:
                o = out.outputs[0]
                delta, new_ids = o.text[text_len:], list(o.token_ids[token_len:])
                logprobs = _logprobs(o.logprobs[token_len:], new_ids) if p.logprobs is not None and o.logprobs else None
                text_len, token_len = len(o.text), len(o.token_ids)
                finished = bool(out.finished)
                # vLLM says "stop", "length" or "abort"; anything else ended the request normally
                reason = (o.finish_reason if o.finish_reason in ("stop", "length", "abort") else "stop") if finished else None
                if delta or new_ids or reason:
                    yield GenerationChunk(
                        request_id=rid, text=delta, token_ids=new_ids, logprobs=logprobs, finish_reason=reason,
                        prompt_tokens=len(ids), completion_tokens=token_len,
                    )
                if finished:
                    break
        except (ContextLengthExceededError, EngineError):
            raise
        except Exception as exc:
            raise EngineError(f"vLLM failed: {exc}") from exc
        finally:
            self._running.discard(rid)
            if not finished:
                await self._engine.abort(rid)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def health(self) -> EngineHealth:
        return EngineHealth(ok=not self._closed, running=len(self._running))

    async def close(self) -> None:
        self._closed = True
        for rid in list(self._running):
            await self._engine.abort(rid)
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _model_context_length(engine: Any) -> int | None:
    for path in (("model_config", "max_model_len"), ("engine", "model_config", "max_model_len")):
        obj = engine
        for attr in path:
            obj = getattr(obj, attr, None)
        if isinstance(obj, int):
            return obj
    return None


def _logprobs(steps: list[Any], ids: list[int]) -> list[TokenLogprob]:
    """vLLM gives, per generated token, a dict token_id -> Logprob(logprob, rank, decoded_token)."""
    out = []
    for token_id, step in zip(ids, steps, strict=False):
        chosen = step.get(token_id)
        top = sorted(step.items(), key=lambda kv: -kv[1].logprob)
        out.append(
            TokenLogprob(
                token=(chosen.decoded_token or "") if chosen else "",
                token_id=token_id,
                logprob=chosen.logprob if chosen else float("-inf"),
                top=[TopLogprob(token=lp.decoded_token or "", token_id=tid, logprob=lp.logprob) for tid, lp in top],
            )
        )
    return out
