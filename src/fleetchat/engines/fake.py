"""A scripted engine for protocol tests: deterministic text from the prompt, no model.

The reply is a sequence of words picked from a small vocabulary by hashing the prompt (and the seed,
when given), one word per token, each with a leading space. It honours ``max_new_tokens`` (finish
"length"), stop strings (finish "stop"), ``echo``, ``logprobs`` and the context length
(ContextLengthExceededError before the first chunk), and it can be told to fail:

``fail="before"``   EngineError before the first chunk
``fail="after:N"``  EngineError after N chunks
``fail="never"``    (default)

``token_delay`` seconds are awaited (not slept: the loop stays free) before each token. Every request
is recorded in ``started``; requests whose iterator was closed early land in ``aborted``.

``load_fake_engine(settings)`` reads the knobs from the environment so real worker processes can use
it: ``FLEETCHAT_FAKE_TOKEN_DELAY``, ``FLEETCHAT_FAKE_REPLY_TOKENS``, ``FLEETCHAT_FAKE_FAIL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fleetchat.engines.base import EngineHealth, EngineSettings
from fleetchat.errors import ContextLengthExceededError, EngineError
from fleetchat.protocol.generation import (
    GenerateRequest,
    GenerationChunk,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)

VOCAB = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
    "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


class FakeTemplate:
    """FastChat's ADD_COLON_SINGLE style, which is how the fake engine renders messages."""

    name = "fake"
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def render(self, messages: list[Any], add_generation_prompt: bool = True) -> str:
        system = "".join(m.content for m in messages if m.role == "system")
        out = system + "\n"
        for m in messages:
            if m.role != "system":
                out += f"{m.role}: {m.content}\n"
        return out + ("assistant:" if add_generation_prompt else "")

    def to_fastchat_dict(self) -> dict[str, Any]:
        return {
            "name": "fake",
            "system_template": "{system_message}",
            "system_message": "",
            "roles": ["user", "assistant"],
            "messages": [],
            "offset": 0,
            "sep_style": 1,  # SeparatorStyle.ADD_COLON_SINGLE
            "sep": "\n",
            "sep2": None,
            "stop_str": None,
            "stop_token_ids": None,
        }


class FakeEngine:
    def __init__(
        self,
        name: str = "fake-model",
        *,
        token_delay: float = 0.0,
        reply_tokens: int = 12,
        fail: str = "never",
        context_length: int = 2048,
        max_running: int = 8,
    ) -> None:
        self.info = ModelInfo(
            name=name, kind="chat", engine="fake", model_path=name, context_length=context_length,
            conv_template="fake", max_running=max_running,
        )
        self.token_delay = token_delay
        self.reply_tokens = reply_tokens
        self.fail = fail
        self.chat_template = FakeTemplate()
        self.running = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self._abort_requested: set[str] = set()

    # -- helpers

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_text(self, request: GenerateRequest) -> str:
        if request.messages is not None:
            return self.chat_template.render(request.messages)
        if request.prompt is not None:
            return request.prompt
        return " ".join(str(t) for t in request.prompt_token_ids or [])

    def reply_words(self, prompt: str, seed: int | None) -> list[str]:
        digest = hashlib.sha256(f"{seed}|{prompt}".encode()).digest()
        return [VOCAB[digest[i % len(digest)] % len(VOCAB)] for i in range(self.reply_tokens)]

    # -- Engine interface

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True, running=self.running)

    async def abort(self, request_id: str) -> None:
        self._abort_requested.add(request_id)

    async def close(self) -> None:
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        prompt = self.prompt_text(request)
        prompt_tokens = len(request.prompt_token_ids) if request.prompt_token_ids else self.count_tokens(prompt)
        params = request.params
        budget = params.max_new_tokens or (self.info.context_length - prompt_tokens)
        if budget < 1 or prompt_tokens + budget > self.info.context_length:
            raise ContextLengthExceededError(
                f"this model's context length is {self.info.context_length} tokens; the prompt has "
                f"{prompt_tokens} and max_tokens is {budget}",
                param="messages" if request.messages is not None else "prompt",
            )
        if self.fail == "before":
            raise EngineError("fake engine: scripted failure before the first token")
        fail_after = int(self.fail.split(":", 1)[1]) if self.fail.startswith("after:") else None

        self.started.append(request.request_id)
        self.running += 1
        done = False
        try:
            words = self.reply_words(prompt, params.seed)
            text = ""
            for i, word in enumerate(words[:budget]):
                if fail_after is not None and i >= fail_after:
                    raise EngineError(f"fake engine: scripted failure after {fail_after} tokens")
                if request.request_id in self._abort_requested:
                    yield GenerationChunk(
                        request_id=request.request_id, finish_reason="abort",
                        prompt_tokens=prompt_tokens, completion_tokens=i,
                    )
                    done = True
                    return
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                piece = " " + word
                finish = None
                if params.stop and any(s in text + piece for s in params.stop):
                    full = text + piece
                    cut = min(full.find(s) for s in params.stop if s in full)
                    piece, finish = full[len(text):cut] if cut >= len(text) else "", "stop"
                if finish is None and i + 1 == len(words):
                    finish = "stop"
                if finish is None and i + 1 == budget:
                    finish = "length"
                logprobs = None
                if params.logprobs is not None:
                    logprobs = [
                        TokenLogprob(
                            token=piece, token_id=VOCAB.index(word), logprob=-0.25,
                            top=[TopLogprob(token=" " + VOCAB[(VOCAB.index(word) + k) % len(VOCAB)],
                                            token_id=(VOCAB.index(word) + k) % len(VOCAB), logprob=-0.25 * (k + 1))
                                 for k in range(params.logprobs)],
                        )
                    ]
                text += piece
                yield GenerationChunk(
                    request_id=request.request_id,
                    text=(prompt + piece) if (request.echo and i == 0) else piece,
                    token_ids=[VOCAB.index(word)],
                    logprobs=logprobs,
                    finish_reason=finish,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=i + 1,
                )
                if finish is not None:
                    done = True
                    return
        finally:
            self.running -= 1
            if done:
                self.finished.append(request.request_id)
            else:
                self.aborted.append(request.request_id)


def load_fake_engine(settings: EngineSettings) -> FakeEngine:
    return FakeEngine(
        settings.served_names()[0],
        token_delay=float(os.environ.get("FLEETCHAT_FAKE_TOKEN_DELAY", "0")),
        reply_tokens=int(os.environ.get("FLEETCHAT_FAKE_REPLY_TOKENS", "12")),
        fail=os.environ.get("FLEETCHAT_FAKE_FAIL", "never"),
        context_length=settings.context_length or 2048,
        max_running=settings.max_running,
    )
