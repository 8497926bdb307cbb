"""A thin :class:`~fleetchat.engines.base.Engine` over llama.cpp (llama-cpp-python), for .gguf models.

llama.cpp's context is not thread-safe, so requests run one at a time: the token loop
(``Llama.generate``) runs in a worker thread and hands token ids to the event loop through a queue;
detokenisation (never broken UTF-8) and stop strings use fleetchat's shared
:class:`~fleetchat.engines.detokenizer.IncrementalDetokenizer` and
:class:`~fleetchat.engines.stops.StopMatcher`, so this engine streams like the transformers one.
Abort sets a flag the thread checks after each token. Messages are rendered with the GGUF's own
``tokenizer.chat_template`` (or ``--conv-template``).

``llama_cpp`` is imported only inside :func:`load_llamacpp_engine`: ``pip install 'fleetchat[llamacpp]'``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fleetchat.engines.base import EngineHealth, EngineSettings, check_context_length
from fleetchat.errors import (
    EngineError,
    InvalidParameterError,
    ModelLoadError,
)
from fleetchat.protocol.generation import GenerateRequest, GenerationChunk, ModelInfo, SamplingParams

_GGUF_QUANT = re.compile(r"(I?Q\d_[0-9A-Z_]+|Q\d_\d|BF16|F16|F32)", re.IGNORECASE)


def load_llamacpp_engine(settings: EngineSettings) -> LlamaCppEngine:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            "the llamacpp engine needs llama-cpp-python: pip install 'fleetchat[llamacpp]'"
        ) from exc
    from fleetchat.engines.resolve import resolve_model

    resolved = resolve_model(settings.model_path, settings.revision)
    if not resolved.gguf_file:
        raise ModelLoadError(f"the llamacpp engine loads .gguf files; {settings.model_path} has none")
    if settings.load_8bit:
        raise ModelLoadError("--load-8bit does not apply to llama.cpp: pick an 8-bit GGUF file (Q8_0) instead")
    path = Path(resolved.directory) / resolved.gguf_file
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=settings.context_length or 0,  # 0: the context length the model was trained with
            n_gpu_layers=-1 if settings.device in ("cuda", "mps") else 0,
            seed=settings.seed if settings.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
            verbose=False,
        )
    except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
        raise ModelLoadError(f"llama.cpp cannot load {path}: {exc}") from exc
    return LlamaCppEngine(llm, settings, path)


class LlamaCppEngine:
    def __init__(self, llm: Any, settings: EngineSettings, path: Path) -> None:
        from fleetchat.conversation import get_chat_template, template_tokenizer

        self._llm = llm
        self._lock = asyncio.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._waiting = 0
        self._closed = False
        self.eos_token_id: int = llm.token_eos()
        bos_text = self._token_text(llm.token_bos())
        eos_text = self._token_text(self.eos_token_id)
        metadata = getattr(llm, "metadata", None) or {}
        source = metadata.get("tokenizer.chat_template")
        if source and not settings.conv_template:
            tokenizer = template_tokenizer(source, bos_text, eos_text, self._single_token_id)
        else:
            tokenizer = SimpleNamespace(chat_template=None, eos_token=eos_text, eos_token_id=self.eos_token_id)
        self.chat_template = get_chat_template(tokenizer, settings.conv_template, settings.conv_system_msg)
        self._bos_text = bos_text
        self._add_bos = str(metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() != "false"
        quant = _GGUF_QUANT.search(path.name)
        self.info = ModelInfo(
            name=settings.served_names()[0],
            engine="llamacpp",
            model_path=settings.model_path,
            context_length=int(llm.n_ctx()),
            device=settings.device,
            dtype="gguf",
            quantization=quant.group(1).upper() if quant else None,
            conv_template=self.chat_template.name,
            max_running=1,
        )

    # --- tokens -----------------------------------------------------------------------------------

    def _token_text(self, token_id: int) -> str | None:
        if token_id is None or token_id < 0:
            return None
        try:
            raw = self._llm.detokenize([token_id], special=True)
        except TypeError:  # older llama-cpp-python without ``special``
            raw = self._llm.detokenize([token_id])
        return raw.decode("utf-8", errors="replace") or None

    def _single_token_id(self, text: str) -> int | None:
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def _tokenize(self, text: str) -> list[int]:
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _decode(self, ids: list[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    # --- generation -------------------------------------------------------------------------------

    def _prepare(self, request: GenerateRequest) -> tuple[list[int], str, SamplingParams]:
        p = request.params
        if p.logprobs is not None:
            raise InvalidParameterError("logprobs are not supported by the llamacpp engine", param="logprobs")
        if request.messages is not None:
            text = self.chat_template.render(request.messages)
            ids = self._tokenize(text)
            p = p.model_copy(
                update={
                    "stop": tuple(dict.fromkeys((*p.stop, *self.chat_template.stop))),
                    "stop_token_ids": tuple(dict.fromkeys((*p.stop_token_ids, *self.chat_template.stop_token_ids))),
                }
            )
        elif request.prompt is not None:
            text = request.prompt
            ids = self._tokenize(text)
        else:
            ids = list(request.prompt_token_ids or [])
            text = self._decode(ids)
        room = check_context_length(len(ids), p.max_new_tokens, self.info.context_length)
        if p.max_new_tokens is None:
            p = p.model_copy(update={"max_new_tokens": room})
        return ids, text, p

    def _token_loop(self, ids: list[int], p: SamplingParams, cancel: threading.Event, emit: Any) -> None:
        """Runs in the worker thread: sample tokens until a stop id, the budget, or an abort."""
        if p.seed is not None and hasattr(self._llm, "set_seed"):
            self._llm.set_seed(p.seed)
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else {self.eos_token_id})
        produced = 0
        for token_id in self._llm.generate(
            ids,
            top_k=p.top_k if p.top_k > 0 else 0,  # <= 0: the whole vocabulary
            top_p=p.top_p,
            min_p=0.0,
            temp=0.0 if p.greedy else p.temperature,  # <= 0: greedy
            repeat_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
        ):
            if cancel.is_set():
                return
            emit(int(token_id))
            produced += 1
            if token_id in stop_ids or produced >= (p.max_new_tokens or 0):
                return

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        from fleetchat.engines.detokenizer import IncrementalDetokenizer
        from fleetchat.engines.stops import StopMatcher

        if self._closed:
            raise EngineError("the llamacpp engine is closed")
        ids, text, p = self._prepare(request)
        rid = request.request_id
        cancel = self._cancels.setdefault(rid, threading.Event())
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work() -> None:
            try:
                self._token_loop(ids, p, cancel, lambda tid: put("token", tid))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer as an EngineError
                put("error", exc)
            finally:
                put("done", None)

        thread = threading.Thread(target=work, name=f"llamacpp-{rid[:8]}", daemon=True)
        thread.start()
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else {self.eos_token_id})
        detok = IncrementalDetokenizer(None, ids, decode=self._decode)
        stops = StopMatcher(p.stop)
        produced = 0
        finish: str | None = None

        def chunk(delta: str, token_ids: list[int], reason: str | None = None) -> GenerationChunk:
            return GenerationChunk(
                request_id=rid, text=delta, token_ids=token_ids, finish_reason=reason,
                prompt_tokens=len(ids), completion_tokens=produced,
            )

        try:
            if request.echo:
                yield chunk(text, [])
            if cancel.is_set():  # aborted while it waited for its turn
                yield chunk("", [], "abort")
                return
            while finish is None:
                kind, value = await queue.get()
                if kind == "error":
                    raise EngineError(f"llama.cpp failed: {value}")
                if kind == "done":
                    finish = "abort" if cancel.is_set() else "length"
                    tail, _ = stops.feed(detok.flush())
                    yield chunk(tail + stops.flush(), [], finish)
                    break
                produced += 1
                if value in stop_ids:
                    finish = "stop"
                    tail, _ = stops.feed(detok.flush())
                    yield chunk(tail + stops.flush(), [value], finish)
                    break
                delta, hit = stops.feed(detok.add([value]))
                if hit:
                    finish = "stop"
                elif produced >= (p.max_new_tokens or 0):
                    finish = "length"
                    tail, hit = stops.feed(detok.flush())
                    delta += tail if hit else tail + stops.flush()
                    finish = "stop" if hit else "length"
                if delta or finish:
                    yield chunk(delta, [value], finish)
        finally:
            cancel.set()  # stops the thread when the consumer went away early
            await asyncio.to_thread(thread.join)
            self._cancels.pop(rid, None)
            self._lock.release()

    async def abort(self, request_id: str) -> None:
        event = self._cancels.get(request_id)
        if event is not None:
            event.set()

    def health(self) -> EngineHealth:
        running = 1 if self._lock.locked() else 0
        return EngineHealth(ok=not self._closed, running=running, waiting=self._waiting)

    async def close(self) -> None:
        self._closed = True
        for event in self._cancels.values():
            event.set()
        async with self._lock:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
