"""Chat templates: turn a list of :class:`ChatMessage` into the prompt text a model expects.

Two kinds behind one small interface (:class:`ChatTemplate`):

* :class:`JinjaChatTemplate` — the tokenizer's own ``chat_template`` (the default). Rendering is
  delegated to ``tokenizer.apply_chat_template`` so it is byte-identical to Hugging Face's.
* :class:`NamedChatTemplate` — one of FastChat's named templates (``--conv-template``), for models
  without a chat template; the records live in :mod:`fleetchat.conversation.registry`.

Both carry the stop strings / stop token ids that end an assistant turn and can describe themselves
in FastChat's ``Conversation`` JSON shape for ``/worker_get_conv_template``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from fleetchat.conversation.registry import TEMPLATES, TemplateRecord
from fleetchat.conversation.styles import (
    FSCHAT_0_2_36_STYLES,
    RENDERERS,
    SYSTEM_AWARE_RENDERERS,
    SeparatorStyle,
    Turn,
    fastchat_wire_value,
    render_turns,
)
from fleetchat.errors import InvalidParameterError
from fleetchat.protocol.generation import ChatMessage

log = logging.getLogger(__name__)

# Tokens that close a turn in common jinja templates; each one found in a template's source becomes
# a stop string (and a stop token id when the tokenizer knows it as one token).
END_OF_TURN_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
)
JINJA_TEMPLATE_NAME = "tokenizer-chat-template"
_ROLE_INDEX = {"user": 0, "assistant": 1}


@runtime_checkable
class ChatTemplate(Protocol):
    name: str
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str: ...

    def to_fastchat_dict(self) -> dict[str, Any]: ...


def _as_messages(messages: Iterable[ChatMessage | dict[str, Any]]) -> list[ChatMessage]:
    return [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(x for x in items if x is not None and x != ""))


class NamedChatTemplate:
    """A FastChat template record bound to a system message (and optionally a tokenizer's eos)."""

    def __init__(
        self, record: TemplateRecord, system_message: str | None = None, eos_token_id: int | None = None
    ) -> None:
        self.record = record
        self.name = record.name
        self.system_message = record.system_message if system_message is None else system_message
        self.stop: tuple[str, ...] = record.stop_str
        self.stop_token_ids: tuple[int, ...] = _unique((*record.stop_token_ids, eos_token_id))

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
        """FastChat's ``get_prompt``: system messages set the system prompt, the rest are turns."""
        msgs = _as_messages(messages)
        systems = [m.content for m in msgs if m.role == "system"]
        system_message = "\n".join(systems) if systems else self.system_message
        turns: list[Turn] = [*self.record.few_shot]
        turns += [(_ROLE_INDEX[m.role], m.content) for m in msgs if m.role != "system"]
        if add_generation_prompt:
            turns.append((1, None))
        return render_turns(self.record, system_message, turns)

    def to_fastchat_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "name": r.name,
            "system_template": r.system_template,
            "system_message": self.system_message,
            "system_message_vision": "",
            "roles": list(r.roles),
            "messages": [[r.roles[i], text] for i, text in r.few_shot],
            "offset": len(r.few_shot),
            "sep_style": fastchat_wire_value(r.sep_style),
            "sep": r.sep,
            "sep2": r.sep2,
            "stop_str": (r.stop_str[0] if len(r.stop_str) == 1 else list(r.stop_str)) if r.stop_str else None,
            "stop_token_ids": list(self.stop_token_ids) or None,
            "max_image_size_mb": None,
        }

    def __repr__(self) -> str:
        return f"NamedChatTemplate({self.name!r})"


class JinjaChatTemplate:
    """The tokenizer's own jinja ``chat_template``, rendered by ``tokenizer.apply_chat_template``.

    ``tokenizer`` is a Hugging Face tokenizer, or any object with ``chat_template``,
    ``apply_chat_template(conversation, tokenize=False, add_generation_prompt=...)`` and optionally
    ``eos_token``, ``eos_token_id`` and ``convert_tokens_to_ids`` (see :func:`template_tokenizer`).
    """

    def __init__(self, tokenizer: Any, system_message: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = JINJA_TEMPLATE_NAME
        self.system_message = system_message
        self.source: str = tokenizer.chat_template
        eos = getattr(tokenizer, "eos_token", None)
        eos_text = eos if isinstance(eos, str) else None
        markers = [m for m in END_OF_TURN_MARKERS if m in self.source]
        self.stop: tuple[str, ...] = _unique([*markers, eos_text])
        ids = [getattr(tokenizer, "eos_token_id", None)] + [self._single_token_id(m) for m in markers]
        self.stop_token_ids: tuple[int, ...] = _unique(ids)

    def _single_token_id(self, text: str) -> int | None:
        convert = getattr(self.tokenizer, "convert_tokens_to_ids", None)
        if convert is None:
            return None
        try:
            tid = convert(text)
        except Exception:  # noqa: BLE001 - an unknown token is simply not a stop id
            return None
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return tid if isinstance(tid, int) and tid >= 0 and tid != unk else None

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
        msgs = _as_messages(messages)
        if self.system_message is not None and not any(m.role == "system" for m in msgs):
            msgs = [ChatMessage(role="system", content=self.system_message), *msgs]
        conversation = [{"role": m.role, "content": m.content} for m in msgs]
        try:
            out = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja's raise_exception(): e.g. roles that must alternate
            raise InvalidParameterError(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        return out if isinstance(out, str) else str(out)

    def to_fastchat_dict(self) -> dict[str, Any]:
        """FastChat cannot express a jinja template; export the equivalent record when one renders
        identically (ChatML templates), else a DEFAULT-style description with the right stops."""
        equivalent = self._fastchat_equivalent()
        if equivalent is not None:
            d = equivalent.to_fastchat_dict()
            d["stop_str"] = list(self.stop) or None
            d["stop_token_ids"] = list(self.stop_token_ids) or None
            return d
        return {
            "name": self.name,
            "system_template": "{system_message}",
            "system_message": self.system_message or "",
            "system_message_vision": "",
            "roles": ["user", "assistant"],
            "messages": [],
            "offset": 0,
            "sep_style": fastchat_wire_value(SeparatorStyle.DEFAULT),
            "sep": "\n",
            "sep2": None,
            "stop_str": list(self.stop) or None,
            "stop_token_ids": list(self.stop_token_ids) or None,
            "max_image_size_mb": None,
        }

    def _fastchat_equivalent(self) -> NamedChatTemplate | None:
        probe = [ChatMessage(role="user", content="PROBE-1")]
        try:
            one = self.render(probe)
        except InvalidParameterError:
            return None
        m = re.fullmatch(
            r"<\|im_start\|>system\n(.*)<\|im_end\|>\n<\|im_start\|>user\nPROBE-1<\|im_end\|>\n"
            r"<\|im_start\|>assistant\n",
            one,
            flags=re.S,
        )
        if m is None:
            return None
        candidate = NamedChatTemplate(
            dataclasses.replace(TEMPLATES["chatml"], stop_str=self.stop), system_message=m.group(1)
        )
        longer = [*probe, ChatMessage(role="assistant", content="A-1"), ChatMessage(role="user", content="U-2")]
        return candidate if candidate.render(longer) == self.render(longer) else None

    def __repr__(self) -> str:
        return f"JinjaChatTemplate({self.name!r})"


def _style_from_wire(value: int, system_template: str) -> SeparatorStyle:
    """Inverse of :func:`fastchat_wire_value`: fschat 0.2.36 numbers 1..19, main-branch numbers above."""
    if 1 <= value <= len(FSCHAT_0_2_36_STYLES):
        style = SeparatorStyle[FSCHAT_0_2_36_STYLES[value - 1]]
        # 0.2.36 has no LLAMA3; fleetchat exports it with the main-branch number, 8 (0.2.36's CHATGLM)
        if style is SeparatorStyle.CHATGLM and "<|start_header_id|>" in system_template:
            return SeparatorStyle.LLAMA3
        return style
    try:
        return SeparatorStyle(value)
    except ValueError:
        raise InvalidParameterError(f"unknown FastChat sep_style {value}", param="conv_template") from None


def template_from_fastchat_dict(d: dict[str, Any]) -> NamedChatTemplate:
    """A template from FastChat's ``Conversation`` JSON (a FastChat worker's ``/worker_get_conv_template``).

    Renders exactly as FastChat's ``Conversation.get_prompt`` for the same chat: the conversation's
    ``messages`` become the few-shot turns, ``stop_str`` and ``stop_token_ids`` the stops.
    InvalidParameterError for a separator style fleetchat has no renderer for (CHATINTERN, DOLLY, ...).
    """
    try:
        system_template = d.get("system_template")
        system_template = "{system_message}" if system_template is None else str(system_template)
        style = _style_from_wire(int(d["sep_style"]), system_template)
        roles = (str(d["roles"][0]), str(d["roles"][1]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"not a FastChat conversation template: {exc!r}", param="conv_template") from None
    if style not in RENDERERS and style not in SYSTEM_AWARE_RENDERERS:
        raise InvalidParameterError(
            f"FastChat template {d.get('name')!r} uses separator style {style.name}, which fleetchat "
            "cannot render", param="conv_template",
        )
    few_shot = tuple(
        (roles.index(role) if role in roles else i % 2, text) for i, (role, text) in enumerate(d.get("messages") or [])
    )
    stop = d.get("stop_str")
    record = TemplateRecord(
        name=str(d.get("name") or "fastchat"),
        roles=roles,
        sep_style=style,
        sep=d.get("sep") if d.get("sep") is not None else "\n",
        sep2=d.get("sep2"),
        system_template=system_template,
        system_message=str(d.get("system_message") or ""),
        few_shot=few_shot,
        stop_str=_unique([stop] if isinstance(stop, str) else stop or ()),
        stop_token_ids=_unique(int(t) for t in d.get("stop_token_ids") or ()),
        description="from a FastChat worker's conversation template",
    )
    return NamedChatTemplate(record)


def list_chat_templates() -> list[str]:
    """Names accepted by ``--conv-template`` (besides the default, the tokenizer's own template)."""
    return sorted(TEMPLATES)


def get_chat_template(
    tokenizer: Any = None, name: str | None = None, system_message: str | None = None
) -> ChatTemplate:
    """The template to render chats with.

    ``name`` picks a named template (InvalidParameterError listing the names when unknown);
    without a name the tokenizer's own ``chat_template`` is used, and a tokenizer that has none
    falls back to FastChat's default ``one_shot`` template (logged).
    """
    eos_id = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if name:
        record = TEMPLATES.get(name)
        if record is None:
            raise InvalidParameterError(
                f"unknown chat template {name!r}; choose one of: {', '.join(list_chat_templates())}",
                param="conv_template",
            )
        return NamedChatTemplate(record, system_message, eos_id if isinstance(eos_id, int) else None)
    if tokenizer is None:
        raise InvalidParameterError(
            "a chat template needs a tokenizer with a chat_template or a template name "
            f"(one of: {', '.join(list_chat_templates())})",
            param="conv_template",
        )
    if getattr(tokenizer, "chat_template", None):
        return JinjaChatTemplate(tokenizer, system_message)
    log.warning("the tokenizer has no chat_template; using the 'one_shot' template (set --conv-template)")
    return NamedChatTemplate(TEMPLATES["one_shot"], system_message, eos_id if isinstance(eos_id, int) else None)


class _SourceTemplateTokenizer:
    """A minimal stand-in for a HF tokenizer, for engines that only have the template text
    (llama.cpp reads ``tokenizer.chat_template`` from GGUF metadata)."""

    def __init__(
        self,
        source: str,
        bos_token: str | None,
        eos_token: str | None,
        token_to_id: Callable[[str], int | None] | None,
    ) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(source)
        self.chat_template = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._token_to_id = token_to_id
        self.eos_token_id = token_to_id(eos_token) if (token_to_id and eos_token) else None
        self.unk_token_id = None

    def convert_tokens_to_ids(self, text: str) -> int | None:
        return self._token_to_id(text) if self._token_to_id else None

    def apply_chat_template(
        self, conversation: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        return self._template.render(
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


def template_tokenizer(
    source: str,
    bos_token: str | None = None,
    eos_token: str | None = None,
    token_to_id: Callable[[str], int | None] | None = None,
) -> Any:
    """Wrap a raw jinja chat template so :func:`get_chat_template` can use it without a HF tokenizer."""
    return _SourceTemplateTokenizer(source, bos_token, eos_token, token_to_id)
