"""The narrow engine interface every backend implements, and the settings engines are built from.

A chat engine has five members::

    info                      ModelInfo: name, context length, device, dtype, template ...
    generate(request)         async iterator of GenerationChunk (text deltas, never broken UTF-8)
    abort(request_id)         stop a request and free its batch slot / KV cache
    health()                  EngineHealth: ok, running, waiting
    count_tokens(text)        tokens of a text, for /count_token and context checks
    close()                   release the model

Cancellation: closing the iterator returned by ``generate`` (``aclose()``, or the consumer task being
cancelled because the HTTP client went away) aborts the request, so callers never have to call
``abort`` on that path themselves; ``abort`` is for aborting from elsewhere.

Errors: ``generate`` raises :mod:`fleetchat.errors` classes (ContextLengthExceededError before the
first chunk when the prompt plus ``max_new_tokens`` does not fit; OverloadedError when the queue is
full). An embedding engine has ``info``, ``embed``, ``health``, ``count_tokens`` and ``close``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fleetchat.errors import ContextLengthExceededError
from fleetchat.protocol.generation import EmbeddingResult, GenerateRequest, GenerationChunk, ModelInfo
from fleetchat.settings import option


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    running: int = 0
    waiting: int = 0
    detail: str = ""

    @property
    def queue_length(self) -> int:
        return self.running + self.waiting


def check_context_length(prompt_tokens: int, max_new_tokens: int | None, context_length: int) -> int:
    """The number of tokens the reply may have; ContextLengthExceededError when nothing fits.

    ``max_new_tokens`` None means "the rest of the context". Never truncates silently.
    """
    ctx = context_length
    if max_new_tokens is None:
        if prompt_tokens >= ctx:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {ctx} tokens, but the prompt has {prompt_tokens} "
                f"tokens, leaving no room for a reply",
                param="messages",
            )
        return ctx - prompt_tokens
    if prompt_tokens + max_new_tokens > ctx:
        raise ContextLengthExceededError(
            f"this model's maximum context length is {ctx} tokens, but {prompt_tokens + max_new_tokens} "
            f"were requested ({prompt_tokens} in the prompt, {max_new_tokens} for max_tokens)",
            param="max_tokens",
        )
    return max_new_tokens


@runtime_checkable
class Engine(Protocol):
    info: ModelInfo

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]: ...

    async def abort(self, request_id: str) -> None: ...

    def health(self) -> EngineHealth: ...

    def count_tokens(self, text: str) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class EmbeddingEngine(Protocol):
    info: ModelInfo

    async def embed(self, texts: list[str]) -> EmbeddingResult: ...

    def health(self) -> EngineHealth: ...

    def count_tokens(self, text: str) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    """How to load one model. Shared by ``fleetchat chat``, ``fleetchat worker`` and ``serve``."""

    model_path: str = option(
        "smollm2",
        help="model to load: 'smollm2' (embedded SmolLM2-135M-Instruct), 'all-minilm-l6-v2' "
        "(embedded embedding model), a local Hugging Face folder, a .gguf file, or a hub repo id",
    )
    model_names: tuple[str, ...] = option(
        (), help="names the model is served under (comma list; default: derived from --model-path)"
    )
    engine: str = option(
        "auto",
        help="engine: auto, transformers, embeddings, llamacpp, vllm, fake",
        choices=("auto", "transformers", "embeddings", "llamacpp", "vllm", "fake"),
    )
    revision: str = option("main", help="hub revision (branch, tag or commit) for a repo id")
    device: str = option("cpu", help="device to run on", choices=("cpu", "cuda", "mps"))
    dtype: str = option(
        "auto",
        help="weights dtype; auto = bfloat16 on CPUs with avx512_bf16/AMX, float16 on CUDA, else float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    load_8bit: bool = option(False, help="quantise linear weights to int8 (works on CPU)")
    num_gpus: int = option(1, help="GPUs to shard the model over (accelerate device map)")
    max_gpu_memory: str | None = option(None, help="per-GPU memory cap for sharding, e.g. 13GiB")
    conv_template: str | None = option(
        None, help="named chat template; default: the tokenizer's own chat_template"
    )
    conv_system_msg: str | None = option(None, help="default system message for the chat template")
    context_length: int | None = option(None, help="override the context length read from the config")
    max_running: int = option(32, help="max sequences decoded together (continuous batching)")
    max_batched_tokens: int = option(
        512, help="max tokens per engine step (bounds prefill so long prompts don't stall streams)"
    )
    max_waiting: int = option(256, help="max queued requests before new ones are refused as overloaded")
    seed: int | None = option(None, help="default random seed for requests that give none")
    trust_remote_code: bool = option(False, help="allow model repos to run their own code")

    def served_names(self) -> tuple[str, ...]:
        if self.model_names:
            return self.model_names
        from fleetchat.engines.resolve import default_model_name

        return (default_model_name(self.model_path),)
