"""History: what a Gradio chatbot holds, turned into OpenAI chat messages and back.

Gradio 6 hands a chatbot's value back as message dicts whose ``content`` is a list of parts
(``[{"type": "text", "text": ...}]``); we give it plain ``{"role", "content": str}`` dicts. Error
lines shown in a chat start with :data:`ERROR_PREFIX` and are never sent back to a model.
"""

from __future__ import annotations

from typing import Any

ERROR_PREFIX = "**Error:** "


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "" if content is None else str(content)


def normalize(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` dicts, whatever shape Gradio handed over."""
    return [{"role": str(m.get("role")), "content": text_of(m)} for m in history or []]


def is_error(message: dict[str, str]) -> bool:
    return message["role"] == "assistant" and message["content"].startswith(ERROR_PREFIX)


def error_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": ERROR_PREFIX + text}


def to_openai(history: list[dict[str, str]], system_prompt: str = "") -> list[dict[str, str]]:
    """The messages to send: optional system prompt, then the turns without error lines."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [m for m in history if m["role"] in ("user", "assistant") and not is_error(m)]
    return messages


def drop_last_reply(history: list[dict[str, str]]) -> list[dict[str, str]]:
    """History up to and including the last user message (for Regenerate)."""
    out = list(history)
    while out and out[-1]["role"] != "user":
        out.pop()
    return out
