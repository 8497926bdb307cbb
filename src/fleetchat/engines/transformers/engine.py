"""The transformers engine: continuous batching on one dedicated thread, async streams outside.

Shape (nano-vllm's): the engine thread loops ``schedule()`` -> ``runner.run()`` -> ``postprocess()``.
Requests and aborts reach it through a thread-safe inbox; each step's chunks go back to the asyncio
loop in one ``loop.call_soon_threadsafe`` call that fills per-request ``asyncio.Queue``s, so the event
loop never waits on the model. Closing a ``generate`` iterator (client gone, task cancelled) sends an
abort, and the next step frees the request's slot.

``FLEETCHAT_TORCH_THREADS`` sets the engine's intra-op threads (default: torch's, one per core); on
a machine whose cores are shared with the API server and other processes, 1 can be faster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import torch

from fleetchat.engines.base import EngineHealth, EngineSettings, check_context_length
from fleetchat.engines.detokenizer import IncrementalDetokenizer, fast_decoder
from fleetchat.engines.stops import StopMatcher
from fleetchat.engines.transformers.loader import LoadedModel
from fleetchat.engines.transformers.runner import make_runner
from fleetchat.engines.transformers.sampler import TokenChoice, sample
from fleetchat.engines.transformers.scheduler import Scheduler, StepPlan
from fleetchat.engines.transformers.sequence import Sequence
from fleetchat.errors import (
    EngineError,
    FleetchatError,
    InvalidParameterError,
    OverloadedError,
)
from fleetchat.protocol.generation import (
    GenerateRequest,
    GenerationChunk,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger("fleetchat.engine")

_STOP = object()


class TransformersEngine:
    """Implements :class:`fleetchat.engines.base.Engine` over a loaded Hugging Face model."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        from fleetchat.conversation import get_chat_template

        self.settings = settings
        self.loaded = loaded
        threads = os.environ.get("FLEETCHAT_TORCH_THREADS")
        if threads:  # the engine thread's intra-op threads; default: torch's (one per core)
            torch.set_num_threads(max(1, int(threads)))
        self.tokenizer = loaded.tokenizer
        self.template = get_chat_template(self.tokenizer, settings.conv_template, settings.conv_system_msg)
        self.context_length = loaded.context_length
        self.runner = make_runner(
            loaded.model, max_running=settings.max_running, context_length=self.context_length
        )
        self.scheduler = Scheduler(settings.max_running, settings.max_batched_tokens)
        self.eos_ids = self._eos_ids(loaded)
        self._decode_one = fast_decoder(self.tokenizer, skip_special_tokens=False)
        self._token_text: dict[int, str] = {}
        self._slots: list[Sequence] = []  # slot index -> the sequence holding it
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self.info = ModelInfo(
            name=settings.served_names()[0],
            kind="chat",
            engine="transformers",
            model_path=settings.model_path,
            context_length=self.context_length,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            quantization=loaded.quantization,
            conv_template=self.template.name,
            max_running=settings.max_running,
        )
        self.runner_path = self.runner.path
        self._warm_up()
        self._thread = threading.Thread(target=self._loop, name="fleetchat-engine", daemon=True)
        self._thread.start()
        log.info(
            "engine ready: %s on %s (%s%s), runner %s, max_running %d, max_batched_tokens %d, torch threads %d",
            self.info.name, self.info.device, self.info.dtype,
            ", int8" if loaded.quantization else "", self.runner_path,
            settings.max_running, settings.max_batched_tokens, torch.get_num_threads(),
        )  # fmt: skip

    @staticmethod
    def _eos_ids(loaded: LoadedModel) -> frozenset[int]:
        ids: set[int] = set()
        for source in (
            loaded.tokenizer.eos_token_id,
            getattr(loaded.model.generation_config, "eos_token_id", None),
        ):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return frozenset(ids)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """One tiny step so the first request does not pay for kernel initialisation."""
        slot = self.runner.allocate()
        try:
            self.runner.run([], [(slot, [0, 1, 2, 3], 0, True)])
            self.runner.run([(slot, 4, 4)], [])
        finally:
            self.runner.release(slot, 0)

    # ---------------------------------------------------------------------------------- public API
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def health(self) -> EngineHealth:
        alive = self._thread.is_alive() and not self._closed
        return EngineHealth(
            ok=alive,
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting) + self._inbox.qsize(),
            detail="" if alive else "engine stopped",
        )

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        if self._closed:
            raise EngineError("the engine is closed")
        loop = asyncio.get_running_loop()
        prompt_ids, prompt_text, stops, stop_ids = self._prepare(request)
        max_new = check_context_length(len(prompt_ids), request.params.max_new_tokens, self.context_length)
        if self.health().waiting >= self.settings.max_waiting:
            raise OverloadedError(
                f"{self.info.name} is overloaded: {self.settings.max_waiting} requests are already waiting; retry later"
            )
        items: asyncio.Queue = asyncio.Queue()
        seed = request.params.seed if request.params.seed is not None else self.settings.seed
        generator = None
        if seed is not None and not request.params.greedy:
            generator = torch.Generator(device=self.runner.device).manual_seed(seed)
        seq = Sequence(
            request_id=request.request_id,
            prompt_ids=prompt_ids,
            params=request.params,
            max_new_tokens=max_new,
            stop_token_ids=stop_ids,
            emit=items.put_nowait,
            loop=loop,
            generator=generator,
            detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids),
            stops=StopMatcher(stops),
            arrival=time.monotonic(),
        )
        finished = False
        try:
            if request.echo:
                yield GenerationChunk(
                    request_id=request.request_id, text=prompt_text, prompt_tokens=len(prompt_ids)
                )
            self._inbox.put(("add", seq))
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._inbox.put(("abort", request.request_id))

    # ------------------------------------------------------------------------------- request prep
    def _prepare(self, request: GenerateRequest) -> tuple[list[int], str, list[str], frozenset[int]]:
        params = request.params
        stops = list(params.stop)
        stop_ids = set(params.stop_token_ids)
        if request.messages is not None:
            text = self.template.render(list(request.messages), add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not params.ignore_eos:  # the template's end-of-turn markers are its EOS
                stops += list(self.template.stop)
                stop_ids |= set(self.template.stop_token_ids)
        elif request.prompt is not None:
            text = request.prompt
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        else:
            ids = list(request.prompt_token_ids or [])
            vocab = self.loaded.model.config.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise InvalidParameterError(f"prompt token ids must be in [0, {vocab})", param="prompt")
            text = self.tokenizer.decode(ids) if request.echo else ""
        if not ids:
            raise InvalidParameterError("the prompt is empty", param="prompt")
        if not params.ignore_eos:
            stop_ids |= self.eos_ids
        return list(ids), text, stops, frozenset(stop_ids)

    # ---------------------------------------------------------------------------- the engine thread
    def _loop(self) -> None:
        # everything the engine thread does to tensors (steps, cache growth, slot moves) happens in
        # inference mode: tensors made inside it cannot be updated in place outside it
        with torch.inference_mode():
            self._run_loop()

    def _run_loop(self) -> None:
        outbox: dict[Any, list] = defaultdict(list)
        while True:
            try:
                if not self._iterate(outbox):
                    return
            except Exception as exc:  # a broken step must not kill the thread or leave streams hanging
                log.exception("engine step failed")
                self._fail_all(EngineError(f"generation failed: {type(exc).__name__}: {exc}"), outbox)
            self._deliver(outbox)

    def _iterate(self, outbox: dict) -> bool:
        """Take in requests and aborts, then run one step. False once the engine is told to stop."""
        try:
            message = self._inbox.get(block=self.scheduler.idle)
        except queue.Empty:
            message = None
        while message is not None:
            if message is _STOP:
                self._fail_all(EngineError("the engine is closed"), outbox)
                self._deliver(outbox)
                return False
            self._handle(message, outbox)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                message = None
        plan = self.scheduler.schedule()
        if not plan.empty:
            self._step(plan, outbox)
        return True

    def _handle(self, message: tuple[str, Any], outbox: dict) -> None:
        kind, value = message
        if kind == "add":
            self.scheduler.add(value)
        elif kind == "abort":
            seq = self.scheduler.find(value)
            if seq is not None:
                self._finish(seq, "abort", outbox, text="")

    def _deliver(self, outbox: dict) -> None:
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass
        outbox.clear()

    def _step(self, plan: StepPlan, outbox: dict) -> None:
        for seq in plan.admitted:
            seq.slot = self.runner.allocate()
            self._slots.append(seq)
        decode = sorted(plan.decode, key=lambda s: s.slot)
        decode_items = [(s.slot, s.next_input(1)[0], s.num_computed) for s in decode]
        prefill_items = []
        rows = list(decode)
        for seq, n in plan.prefill:
            wants = seq.num_computed + n >= seq.num_tokens
            prefill_items.append((seq.slot, seq.next_input(n), seq.num_computed, wants))
            if wants:
                rows.append(seq)
        logits = self.runner.run(decode_items, prefill_items)
        for seq in decode:
            seq.num_computed += 1
        for seq, n in plan.prefill:
            seq.num_computed += n
        if rows:
            for seq, choice in zip(rows, sample(logits, rows), strict=False):
                self._append_token(seq, choice, outbox)

    def _append_token(self, seq: Sequence, choice: TokenChoice, outbox: dict) -> None:
        token = choice.token_id
        seq.output_ids.append(token)
        finish: str | None = None
        if token in seq.stop_token_ids:
            text, finish = seq.stops.feed(seq.detokenizer.flush())[0] + seq.stops.flush(), "stop"
        else:
            text, stopped = seq.stops.feed(seq.detokenizer.add([token]))
            if stopped:
                finish = "stop"
            elif len(seq.output_ids) >= seq.max_new_tokens or seq.num_tokens >= self.context_length:
                tail, stopped = seq.stops.feed(seq.detokenizer.flush())
                text += tail + ("" if stopped else seq.stops.flush())
                finish = "stop" if stopped else "length"
        logprobs = None if choice.logprob is None else [self._token_logprob(choice)]
        if finish is not None:
            self._finish(seq, finish, outbox, text=text, token_ids=[token], logprobs=logprobs)
            return
        outbox[seq.loop].append(
            (
                seq.emit,
                GenerationChunk(
                    request_id=seq.request_id,
                    text=text,
                    token_ids=[token],
                    logprobs=logprobs,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.output_ids),
                ),
            )
        )

    def _token_logprob(self, choice: TokenChoice) -> TokenLogprob:
        top = [
            TopLogprob(token=self._text_of(t), token_id=t, logprob=lp)
            for t, lp in zip(choice.top_ids or [], choice.top_logprobs or [], strict=False)
        ]
        return TokenLogprob(
            token=self._text_of(choice.token_id),
            token_id=choice.token_id,
            logprob=choice.logprob or 0.0,
            top=top,
        )

    def _text_of(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self._decode_one([token_id])
        return text

    def _finish(
        self, seq: Sequence, reason: str, outbox: dict, *, text: str, token_ids=(), logprobs=None
    ) -> None:
        seq.finish_reason = reason
        if self.scheduler.finish(seq) and seq.slot >= 0:
            self._release(seq)
        chunk = GenerationChunk(
            request_id=seq.request_id,
            text=text,
            token_ids=list(token_ids),
            logprobs=logprobs,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
        )
        outbox[seq.loop].append((seq.emit, chunk))

    def _release(self, seq: Sequence) -> None:
        """Free ``seq``'s slot; the runner may move the last slot's sequence into it (compaction)."""
        slot = seq.slot
        last_seq = self._slots[-1]
        moved = self.runner.release(slot, last_seq.num_computed)
        if moved is not None:
            self._slots[slot] = last_seq
            last_seq.slot = slot
        self._slots.pop()
        seq.slot = -1

    def _fail_all(self, error: FleetchatError, outbox: dict) -> None:
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            if self.scheduler.finish(seq) and seq.slot >= 0:
                try:
                    self._release(seq)
                except Exception:  # keep failing the others: every stream must end
                    log.exception("could not free the slot of %s", seq.request_id)
            outbox[seq.loop].append((seq.emit, error))
        while True:  # requests still in the inbox
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message is not _STOP and message[0] == "add":
                outbox[message[1].loop].append((message[1].emit, error))


def _put_all(items: list) -> None:
    for put, item in items:
        put(item)
