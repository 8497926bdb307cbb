"""Chat templates: the tokenizer's jinja template byte for byte, FastChat's named templates byte for byte.

The expected strings of the named templates are written out by hand from FastChat's
fastchat/conversation.py (``Conversation.get_prompt`` and the registered templates), for the
conversation user "Hello" / assistant "Hi there" / user "How are you?" plus the open assistant slot.
"""

from __future__ import annotations

import json

import pytest

from fleetchat.conversation import (
    JINJA_TEMPLATE_NAME,
    get_chat_template,
    list_chat_templates,
    template_tokenizer,
)
from fleetchat.conversation.template import template_from_fastchat_dict
from fleetchat.errors import InvalidParameterError
from fleetchat.protocol.generation import ChatMessage

CONV = [
    ChatMessage(role="user", content="Hello"),
    ChatMessage(role="assistant", content="Hi there"),
    ChatMessage(role="user", content="How are you?"),
]
HUMAN_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

FASTCHAT_EXPECTED = {
    "raw": "HelloHi thereHow are you?",
    "zero_shot": HUMAN_SYS + "\n### Human: Hello\n### Assistant: Hi there\n### Human: How are you?\n### Assistant:",
    "vicuna_v1.1": USER_SYS + " USER: Hello ASSISTANT: Hi there</s>USER: How are you? ASSISTANT:",
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction: Hello\n\n### Response: Hi there</s>### Instruction: How are you?"
    "\n\n### Response:",
    "chatglm2": "[Round 1]\n\n问：Hello\n\n答：Hi there\n\n[Round 2]\n\n问：How are you?\n\n答：",
    "mistral": "[INST] Hello [/INST] Hi there</s>[INST] How are you? [/INST]",
    "llama-2": "[INST] Hello [/INST] Hi there </s><s>[INST] How are you? [/INST]",
    "llama-3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    # FastChat's zephyr renders an empty system block: its system_template is never empty.
    "zephyr": "<|system|>\n</s>\n<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n<|user|>\nHow are you?</s>"
    "\n<|assistant|>\n",
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
    "<|im_start|>assistant\n",
}

FASTCHAT_EXPECTED_WITH_SYSTEM = {
    "vicuna_v1.1": "Be brief. USER: Hello ASSISTANT: Hi there</s>USER: How are you? ASSISTANT:",
    "llama-2": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] How are you? [/INST]",
    "mistral": "[INST] Be brief.\nHello [/INST] Hi there</s>[INST] How are you? [/INST]",
    "llama-3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatglm2": "Be brief.\n\n[Round 1]\n\n问：Hello\n\n答：Hi there\n\n[Round 2]\n\n问：How are you?\n\n答：",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n<|user|>\nHow are you?"
    "</s>\n<|assistant|>\n",
}


@pytest.mark.parametrize("name", sorted(FASTCHAT_EXPECTED))
def test_named_template_matches_fastchat(name: str) -> None:
    assert get_chat_template(name=name).render(CONV) == FASTCHAT_EXPECTED[name]


@pytest.mark.parametrize("name", sorted(FASTCHAT_EXPECTED_WITH_SYSTEM))
def test_named_template_system_message(name: str) -> None:
    expected = FASTCHAT_EXPECTED_WITH_SYSTEM[name]
    assert get_chat_template(name=name, system_message="Be brief.").render(CONV) == expected
    # a system message inside the conversation does the same as the argument
    with_system = [ChatMessage(role="system", content="Be brief."), *CONV]
    assert get_chat_template(name=name).render(with_system) == expected


def test_one_shot_prepends_the_example() -> None:
    t = get_chat_template(name="one_shot")
    prompt = t.render([ChatMessage(role="user", content="Hello")])
    assert prompt.startswith(HUMAN_SYS + "\n### Human: Got any creative ideas for a 10 year old’s birthday?\n"
                             "### Assistant: Of course! Here are some creative ideas for a 10-year-old's "
                             "birthday party:\n1. Treasure Hunt:")
    assert prompt.endswith("Have a great celebration!\n### Human: Hello\n### Assistant:")
    assert t.stop == ("###",)
    d = t.to_fastchat_dict()
    assert d["offset"] == 2 and d["messages"][0] == ["Human", "Got any creative ideas for a 10 year old’s birthday?"]


def test_without_generation_prompt_the_open_slot_is_left_out() -> None:
    t = get_chat_template(name="vicuna_v1.1")
    two = CONV[:2]
    assert t.render(two, add_generation_prompt=False) == USER_SYS + " USER: Hello ASSISTANT: Hi there</s>"


def test_stop_strings_and_ids_of_named_templates() -> None:
    assert get_chat_template(name="llama-3").stop == ("<|eot_id|>",)
    assert get_chat_template(name="llama-3").stop_token_ids == (128001, 128009)
    assert get_chat_template(name="zephyr").stop == ("</s>",)
    assert "<|im_end|>" in get_chat_template(name="chatml").stop
    assert get_chat_template(name="vicuna_v1.1").stop == ()


def test_fastchat_dict_shape() -> None:
    d = get_chat_template(name="llama-3", system_message="S").to_fastchat_dict()
    for key in ("name", "system_template", "system_message", "roles", "messages", "offset", "sep_style",
                "sep", "sep2", "stop_str", "stop_token_ids"):
        assert key in d
    assert d["name"] == "llama-3" and d["system_message"] == "S"
    assert d["sep_style"] == 8  # LLAMA3: absent from fschat 0.2.36, so main-branch FastChat's number
    assert d["stop_str"] == "<|eot_id|>" and d["stop_token_ids"] == [128001, 128009]
    assert get_chat_template(name="vicuna_v1.1").to_fastchat_dict()["sep_style"] == 2
    assert get_chat_template(name="chatml").to_fastchat_dict()["sep_style"] == 9  # CHATML in fschat 0.2.36
    json.dumps(d)  # JSON-serialisable as the worker endpoint sends it


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(InvalidParameterError) as info:
        get_chat_template(name="no-such-template")
    for name in ("chatml", "vicuna_v1.1", "llama-2", "llama-3", "chatglm2", "alpaca", "zephyr", "mistral",
                 "one_shot"):
        assert name in str(info.value)
        assert name in list_chat_templates()
    assert info.value.param == "conv_template"


def test_no_tokenizer_and_no_name_is_an_error() -> None:
    with pytest.raises(InvalidParameterError):
        get_chat_template()


class _NoTemplateTokenizer:
    chat_template = None
    eos_token = "</s>"
    eos_token_id = 7


def test_tokenizer_without_template_falls_back_to_one_shot() -> None:
    t = get_chat_template(_NoTemplateTokenizer())
    assert t.name == "one_shot" and 7 in t.stop_token_ids


# --- the embedded SmolLM2 tokenizer's own template ------------------------------------------------

@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from fleetchat.engines.resolve import resolve_model

    r = resolve_model("smollm2")
    return AutoTokenizer.from_pretrained(str(r.directory), gguf_file=r.gguf_file)


LONG_CONV = [
    ChatMessage(role="system", content="You answer in French."),
    ChatMessage(role="user", content="What is the capital of France?"),
    ChatMessage(role="assistant", content="La capitale de la France est Paris."),
    ChatMessage(role="user", content="Et de l'Italie ? 🇮🇹 日本語"),
]


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_is_byte_identical(smol_tokenizer, add_generation_prompt: bool) -> None:
    t = get_chat_template(smol_tokenizer)
    assert t.name == JINJA_TEMPLATE_NAME
    for conv in (LONG_CONV, LONG_CONV[1:], LONG_CONV[1:2]):
        expected = smol_tokenizer.apply_chat_template(
            [m.model_dump() for m in conv], tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert t.render(conv, add_generation_prompt=add_generation_prompt) == expected
    # the template's own default system message appears when none is given
    assert "named SmolLM" in t.render(LONG_CONV[1:2])


@pytest.mark.slow
def test_jinja_template_stops_and_system_message(smol_tokenizer) -> None:
    t = get_chat_template(smol_tokenizer, system_message="Be brief.")
    assert "<|im_end|>" in t.stop
    assert smol_tokenizer.eos_token_id in t.stop_token_ids
    assert smol_tokenizer.convert_tokens_to_ids("<|im_end|>") in t.stop_token_ids
    prompt = t.render([ChatMessage(role="user", content="Hi")])
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    # a named template overrides the tokenizer's and keeps the tokenizer's eos as a stop id
    named = get_chat_template(smol_tokenizer, name="vicuna_v1.1")
    assert named.name == "vicuna_v1.1" and smol_tokenizer.eos_token_id in named.stop_token_ids


@pytest.mark.slow
def test_jinja_chatml_exports_as_fastchat_chatml(smol_tokenizer) -> None:
    d = get_chat_template(smol_tokenizer).to_fastchat_dict()
    assert d["sep_style"] == 9 and d["sep"] == "<|im_end|>"
    assert d["system_message"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert "<|im_end|>" in d["stop_str"]


@pytest.mark.slow
def test_source_template_renders_like_transformers(smol_tokenizer) -> None:
    # the path engines without a HF tokenizer (llama.cpp: template text from GGUF metadata) take
    shim = template_tokenizer(smol_tokenizer.chat_template, "<|im_start|>", "<|im_end|>", lambda s: 2)
    t = get_chat_template(shim)
    assert t.render(LONG_CONV) == get_chat_template(smol_tokenizer).render(LONG_CONV)
    assert 2 in t.stop_token_ids


ROUND_TRIP_CHATS = [
    [ChatMessage(role="user", content="What is the capital of France?")],
    [ChatMessage(role="system", content="Be brief."), *CONV],
    CONV,
]


@pytest.mark.parametrize("name", list_chat_templates())
def test_template_from_fastchat_dict_round_trips(name: str) -> None:
    """What a FastChat worker's /worker_get_conv_template sends back renders as the template itself."""
    ours = get_chat_template(name=name, system_message="Sys.")
    d = json.loads(json.dumps(ours.to_fastchat_dict()))  # over the wire, as the API receives it
    back = template_from_fastchat_dict(d)
    for chat in ROUND_TRIP_CHATS:
        for add_generation_prompt in (True, False):
            assert back.render(chat, add_generation_prompt) == ours.render(chat, add_generation_prompt)
    assert back.stop == ours.stop and back.stop_token_ids == ours.stop_token_ids
    assert back.to_fastchat_dict() == d


def test_template_from_fastchat_dict_reads_fschat_0_2_36_numbers_and_refuses_unknown_styles() -> None:
    # a dict as fschat 0.2.36's own worker sends it: stop_str a plain string, no system_message_vision
    d = {"name": "dolly_v2", "system_template": "{system_message}", "system_message": "S", "roles": ["a", "b"],
         "messages": [], "offset": 0, "sep_style": 11, "sep": "\n\n", "sep2": "### End", "stop_str": None,
         "stop_token_ids": None}
    with pytest.raises(InvalidParameterError, match="DOLLY"):
        template_from_fastchat_dict(d)
    one = template_from_fastchat_dict({**d, "name": "x", "sep_style": 1, "sep": "\n### ", "stop_str": "###",
                                       "messages": [["a", "Q?"], ["b", "A."]], "offset": 2})
    assert one.render([ChatMessage(role="user", content="Hi")]) == "S\n### a: Q?\n### b: A.\n### a: Hi\n### b:"
    assert one.stop == ("###",) and one.stop_token_ids == ()
    # an empty system_template leaves the system message out, as FastChat does (its "yuan" template)
    quiet = template_from_fastchat_dict({**d, "system_template": "", "sep_style": 4, "sep": "<sep>"})
    assert quiet.render([ChatMessage(role="user", content="Hi")]) == "aHi<sep>b"
