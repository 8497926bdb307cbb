"""FastChat's separator styles: how a named template joins system prompt, roles and messages.

Each style is one small function in :data:`RENDERERS`, keyed by :class:`SeparatorStyle`, instead of
FastChat's long ``if/elif`` in ``Conversation.get_prompt``. The functions reproduce FastChat's
renderings byte for byte (quirks included, e.g. an empty message is treated as "the model speaks
next"), so a prompt built here equals the one FastChat builds for the same template.

A renderer receives the template record, the formatted system prompt and the turns as
``(role_index, text | None)`` pairs, where ``role_index`` is 0 for the user and 1 for the assistant
and ``None`` marks the open slot the model will fill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetchat.conversation.registry import TemplateRecord

Turn = tuple[int, str | None]

# fschat 0.2.36 (the release users install) numbers its styles 1..19 in this order.
FSCHAT_0_2_36_STYLES = (
    "ADD_COLON_SINGLE ADD_COLON_TWO ADD_COLON_SPACE_SINGLE NO_COLON_SINGLE NO_COLON_TWO "
    "ADD_NEW_LINE_SINGLE LLAMA2 CHATGLM CHATML CHATINTERN DOLLY RWKV PHOENIX ROBIN FALCON_CHAT "
    "CHATGLM3 DEEPSEEK_CHAT METAMATH YUAN2"
).split()


class SeparatorStyle(IntEnum):
    """FastChat's styles in the order of FastChat's main branch.

    The integer on the wire (``/worker_get_conv_template``) is :func:`fastchat_wire_value`, not this
    value: the released fschat 0.2.36 has no LLAMA3 and so numbers every later style one lower.
    """

    ADD_COLON_SINGLE = 1
    ADD_COLON_TWO = 2
    ADD_COLON_SPACE_SINGLE = 3
    NO_COLON_SINGLE = 4
    NO_COLON_TWO = 5
    ADD_NEW_LINE_SINGLE = 6
    LLAMA2 = 7
    LLAMA3 = 8
    CHATGLM = 9
    CHATML = 10
    CHATINTERN = 11
    DOLLY = 12
    RWKV = 13
    PHOENIX = 14
    ROBIN = 15
    FALCON_CHAT = 16
    CHATGLM3 = 17
    DEEPSEEK_CHAT = 18
    METAMATH = 19
    YUAN2 = 20
    GEMMA = 21
    CLLM = 22
    DEFAULT = 23


def _add_colon_single(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = system + t.sep
    for role, text in turns:
        out += f"{t.roles[role]}: {text}{t.sep}" if text else f"{t.roles[role]}:"
    return out


def _add_colon_two(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    seps = (t.sep, t.sep2 or "")
    out = system + seps[0]
    for role, text in turns:
        out += f"{t.roles[role]}: {text}{seps[role]}" if text else f"{t.roles[role]}:"
    return out


def _add_colon_space_single(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = system + t.sep
    for role, text in turns:
        out += f"{t.roles[role]}: {text}{t.sep}" if text else f"{t.roles[role]}: "
    return out


def _no_colon_single(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = system
    for role, text in turns:
        out += f"{t.roles[role]}{text}{t.sep}" if text else t.roles[role]
    return out


def _no_colon_two(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    seps = (t.sep, t.sep2 or "")
    out = system
    for role, text in turns:
        out += f"{t.roles[role]}{text}{seps[role]}" if text else t.roles[role]
    return out


def _add_new_line_single(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = "" if system == "" else system + t.sep
    for role, text in turns:
        out += f"{t.roles[role]}\n{text}{t.sep}" if text else f"{t.roles[role]}\n"
    return out


def _llama2(t: TemplateRecord, system: str, turns: Sequence[Turn], *, has_system: bool) -> str:
    # The first user message is written bare: "[INST] " (or the system block) already opens it.
    seps = (t.sep, t.sep2 or "")
    out = system if has_system else "[INST] "
    for i, (role, text) in enumerate(turns):
        tag = t.roles[role]
        if text:
            out += text + " " if i == 0 else f"{tag} {text}{seps[role]}"
        else:
            out += tag
    return out


def _llama3(t: TemplateRecord, system: str, turns: Sequence[Turn], *, has_system: bool) -> str:
    out = "<|begin_of_text|>" + (system if has_system else "")
    for role, text in turns:
        out += f"<|start_header_id|>{t.roles[role]}<|end_header_id|>\n\n"
        if text:
            out += f"{text.strip()}<|eot_id|>"
    return out


def _chatglm(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    # ChatGLM2 counts rounds from 1, ChatGLM(1) from 0 (FastChat keys this on the template name).
    first_round = 1 if t.name == "chatglm2" else 0
    out = system + t.sep if system else ""
    for i, (role, text) in enumerate(turns):
        if i % 2 == 0:
            out += f"[Round {i // 2 + first_round}]{t.sep}"
        out += f"{t.roles[role]}：{text}{t.sep}" if text else f"{t.roles[role]}："
    return out


def _chatml(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = "" if system == "" else system + t.sep + "\n"
    for role, text in turns:
        out += f"{t.roles[role]}\n{text}{t.sep}\n" if text else f"{t.roles[role]}\n"
    return out


def _default(t: TemplateRecord, system: str, turns: Sequence[Turn]) -> str:
    out = system + "\n"
    for role, text in turns:
        out += f"{t.roles[role]}: {text}\n" if text else f"{t.roles[role]}:"
    return out


Renderer = Callable[["TemplateRecord", str, Sequence[Turn]], str]

RENDERERS: dict[SeparatorStyle, Renderer] = {
    SeparatorStyle.ADD_COLON_SINGLE: _add_colon_single,
    SeparatorStyle.ADD_COLON_TWO: _add_colon_two,
    SeparatorStyle.ADD_COLON_SPACE_SINGLE: _add_colon_space_single,
    SeparatorStyle.NO_COLON_SINGLE: _no_colon_single,
    SeparatorStyle.NO_COLON_TWO: _no_colon_two,
    SeparatorStyle.ADD_NEW_LINE_SINGLE: _add_new_line_single,
    SeparatorStyle.CHATGLM: _chatglm,
    SeparatorStyle.CHATML: _chatml,
    SeparatorStyle.DEFAULT: _default,
}
# Styles that look at whether a system message is set (not only at the formatted system prompt).
SYSTEM_AWARE_RENDERERS = {SeparatorStyle.LLAMA2: _llama2, SeparatorStyle.LLAMA3: _llama3}


def render_turns(t: TemplateRecord, system_message: str, turns: Sequence[Turn]) -> str:
    """Render ``turns`` with template ``t`` exactly as FastChat's ``Conversation.get_prompt``."""
    system = t.system_template.format(system_message=system_message)
    aware = SYSTEM_AWARE_RENDERERS.get(t.sep_style)
    if aware is not None:
        return aware(t, system, turns, has_system=bool(system_message))
    return RENDERERS[t.sep_style](t, system, turns)


def fastchat_wire_value(style: SeparatorStyle) -> int:
    """The ``sep_style`` integer FastChat 0.2.36 clients read; main-branch numbers for newer styles."""
    try:
        return FSCHAT_0_2_36_STYLES.index(style.name) + 1
    except ValueError:
        return int(style)
