"""FastChat's view of an engine: engine deltas as FastChat stream items, the chat template as
FastChat Conversation JSON."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fleetchat.engines.base import Engine
from fleetchat.protocol.fastchat import StreamItem, StreamLogprobs, Usage
from fleetchat.protocol.generation import GenerateRequest, GenerationChunk


def _fastchat_logprobs(acc: StreamLogprobs, chunk: GenerationChunk, text_before: str) -> None:
    offset = len(text_before)
    for lp in chunk.logprobs or []:
        acc.text_offset.append(offset)
        acc.tokens.append(lp.token)
        acc.token_logprobs.append(lp.logprob)
        acc.top_logprobs.append({t.token: t.logprob for t in lp.top})
        offset += len(lp.token)


async def fastchat_stream(
    engine: Engine, request: GenerateRequest, stream_interval: int
) -> AsyncIterator[StreamItem]:
    """Engine deltas -> FastChat items (full text so far), every ``stream_interval`` steps and at the end."""
    text = ""
    logprobs = StreamLogprobs() if request.params.logprobs is not None else None
    step = 0
    async with contextlib.aclosing(engine.generate(request)) as chunks:
        async for chunk in chunks:
            if logprobs is not None:
                _fastchat_logprobs(logprobs, chunk, text)
            text += chunk.text
            step += 1
            if chunk.finish_reason is not None or step % stream_interval == 0:
                yield StreamItem(
                    text=text,
                    usage=Usage(
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
                    ),
                    finish_reason=chunk.finish_reason,
                    logprobs=logprobs,
                )


def conv_template_dict(engine: Any) -> dict[str, Any]:
    """FastChat Conversation JSON of the engine's chat template (via :mod:`fleetchat.conversation`)."""
    for attr in ("chat_template", "template"):
        template = getattr(engine, attr, None)
        if template is not None and hasattr(template, "to_fastchat_dict"):
            return template.to_fastchat_dict()
    from fleetchat.conversation import get_chat_template

    name = engine.info.conv_template
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None and name == "tokenizer-chat-template":
        name = None  # the tokenizer's own jinja template, not a named one
    return get_chat_template(tokenizer=tokenizer, name=name).to_fastchat_dict()
