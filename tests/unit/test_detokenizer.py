"""IncrementalDetokenizer with the embedded model's real tokenizer: Chinese and emoji stream intact."""

from __future__ import annotations

import pytest

from fleetchat.engines.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "Party time 🎉🎉 with family 👨‍👩‍👧‍👦 and flags 🇫🇷 — done ✅",
    "混合 text with 中文, emoji 😀 and ünïcödé accents.",
    "  leading spaces\n\nand new lines\tand tabs  ",
]


@pytest.fixture(scope="module")
def tokenizer():
    import torch
    from transformers import AutoTokenizer

    from fleetchat.engines.resolve import resolve_model
    from fleetchat.engines.transformers.loader import dense_cache_folder

    resolved = resolve_model("smollm2")
    folder = dense_cache_folder(resolved, torch.bfloat16)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(resolved.directory, gguf_file=resolved.gguf_file)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("step", [1, 2, 3])
def test_deltas_concatenate_to_the_full_decode(tokenizer, text: str, step: int) -> None:
    prompt = tokenizer("User: say something\nAssistant:", add_special_tokens=False)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add(ids[i : i + step]) for i in range(0, len(ids), step)]
    deltas.append(detok.flush())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == text


def test_multibyte_characters_are_held_until_complete(tokenizer) -> None:
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # byte-level BPE splits the emoji: the case this class exists for
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add([i]) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "🎉"


def test_flush_drops_an_unfinished_character(tokenizer) -> None:
    ids = tokenizer("ok 🎉", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    out = "".join(detok.add([i]) for i in ids[:-1]) + detok.flush()
    assert out == "ok " or out == "ok"
    assert "\ufffd" not in out


def test_special_tokens_are_skipped(tokenizer) -> None:
    ids = tokenizer("Hi<|im_end|>", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.add([i]) for i in ids) + detok.flush() == "Hi"
