"""The llama.cpp and vLLM adapters.

Neither library is installed here (llama-cpp-python compiles for minutes, vLLM needs a GPU), so these
tests check (1) that a missing package is one clear ModelLoadError naming the extra to install and
that importing the adapters imports nothing heavy, and (2) the adapters' own logic — rendering,
context check, streaming deltas, stop ids and strings, UTF-8, abort — against small stand-ins that
follow the libraries' documented call shapes. They do not prove compatibility with the real
libraries.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleetchat.engines.base import EngineSettings
from fleetchat.engines.registry import load_engine
from fleetchat.errors import ContextLengthExceededError, InvalidParameterError, ModelLoadError
from fleetchat.protocol.generation import ChatMessage, GenerateRequest, SamplingParams

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REPLY = "Paris 🇫🇷 is nice"
SPECIAL = {1: b"<|im_start|>", 2: b"<|im_end|>"}


# --- missing packages ------------------------------------------------------------------------------

@pytest.mark.parametrize("engine, module, extra", [
    ("llamacpp", "llama_cpp", "fleetchat[llamacpp]"),
    ("vllm", "vllm", "fleetchat[vllm]"),
])
def test_missing_package_is_a_clear_load_error(monkeypatch, engine, module, extra) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import module`` raise ImportError
    with pytest.raises(ModelLoadError) as info:
        load_engine(EngineSettings(model_path="smollm2", engine=engine, device="cuda"))
    assert extra in str(info.value) and "pip install" in str(info.value)


def test_adapters_import_nothing_heavy() -> None:
    code = (
        "import sys, fleetchat.engines.llamacpp, fleetchat.engines.vllm;"
        "print(sorted(m for m in ('llama_cpp', 'vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- llama.cpp adapter against a stand-in Llama ----------------------------------------------------

class FakeLlama:
    """Byte-level vocabulary (id = byte + 3), 1 = <|im_start|> (bos), 2 = <|im_end|> (eos)."""

    def __init__(self, model_path: str = "", n_ctx: int = 0, **kwargs) -> None:
        self.model_path = model_path
        self._n_ctx = n_ctx or 256
        self.metadata = {"tokenizer.chat_template": CHATML, "tokenizer.ggml.add_bos_token": "false"}
        self.prompts: list[list[int]] = []
        self.generated = 0
        self.delay = 0.0

    def n_ctx(self) -> int:
        return self._n_ctx

    def token_bos(self) -> int:
        return 1

    def token_eos(self) -> int:
        return 2

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        ids = [1] if add_bos else []
        i = 0
        while i < len(text):
            for tid, marker in SPECIAL.items():
                if special and text.startswith(marker, i):
                    ids.append(tid)
                    i += len(marker)
                    break
            else:
                ids.append(text[i] + 3)
                i += 1
        return ids

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        return b"".join(SPECIAL[t] if t in SPECIAL and special else b"" if t in SPECIAL else bytes([t - 3])
                        for t in ids)

    def generate(self, tokens: list[int], **kwargs) -> Iterator[int]:
        import time

        self.prompts.append(list(tokens))
        for b in REPLY.encode():
            time.sleep(self.delay)
            self.generated += 1
            yield b + 3
        while True:
            yield 2


def make_llamacpp(**settings):
    from fleetchat.engines.llamacpp import LlamaCppEngine

    llm = FakeLlama(n_ctx=settings.pop("n_ctx", 0))
    engine = LlamaCppEngine(llm, EngineSettings(model_path="x.gguf", **settings), Path("SmolLM2.Q4_1.gguf"))
    return engine, llm


async def collect(engine, request):
    chunks = [c async for c in engine.generate(request)]
    return "".join(c.text for c in chunks), chunks


def ask(text: str, **params) -> GenerateRequest:
    return GenerateRequest(messages=[ChatMessage(role="user", content=text)], params=SamplingParams(**params))


async def test_llamacpp_streams_the_reply_with_the_gguf_template() -> None:
    engine, llm = make_llamacpp()
    assert engine.info.quantization == "Q4_1" and engine.info.conv_template == "tokenizer-chat-template"
    assert engine.chat_template.stop_token_ids == (2,) and "<|im_end|>" in engine.chat_template.stop
    text, chunks = await collect(engine, ask("Capital of France?", temperature=0))
    assert text == REPLY
    assert all("\ufffd" not in c.text for c in chunks)  # the flag emoji is 8 byte tokens, never split
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == len(REPLY.encode()) + 1
    prompt = llm.detokenize(llm.prompts[0], special=True).decode()
    assert prompt == "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"


async def test_llamacpp_stop_string_and_length() -> None:
    engine, _ = make_llamacpp()
    text, chunks = await collect(engine, ask("q", stop=(" is",)))
    assert text == "Paris 🇫🇷" and chunks[-1].finish_reason == "stop"
    text, chunks = await collect(engine, ask("q", max_new_tokens=3))
    assert text == "Par" and chunks[-1].finish_reason == "length"


async def test_llamacpp_named_template_and_errors() -> None:
    engine, llm = make_llamacpp(conv_template="vicuna_v1.1", n_ctx=256)
    await collect(engine, ask("hi", max_new_tokens=4))
    assert llm.detokenize(llm.prompts[0]).decode().endswith("USER: hi ASSISTANT:")
    with pytest.raises(ContextLengthExceededError):
        await collect(engine, ask("x" * 300))
    with pytest.raises(InvalidParameterError):
        await collect(engine, ask("hi", logprobs=2))


async def test_llamacpp_close_early_aborts_and_frees_the_model() -> None:
    engine, llm = make_llamacpp()
    llm.delay = 0.01
    stream = engine.generate(ask("q"))
    first = await stream.__anext__()
    assert first.text
    await stream.aclose()
    produced = llm.generated
    await asyncio.sleep(0.05)
    assert llm.generated <= produced + 1  # the token thread stopped
    assert engine.health().running == 0
    llm.delay = 0
    text, _ = await collect(engine, ask("again"))  # the lock was released
    assert text == REPLY


def test_load_llamacpp_engine_with_stand_in_module(monkeypatch) -> None:
    fake = types.ModuleType("llama_cpp")
    fake.Llama = FakeLlama
    fake.LLAMA_DEFAULT_SEED = 0xFFFFFFFF
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    engine = load_engine(EngineSettings(model_path="smollm2", engine="llamacpp"))
    assert engine._llm.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert engine.info.engine == "llamacpp" and engine.info.name == "smollm2-135m-instruct"
    with pytest.raises(ModelLoadError, match="Q8_0"):
        load_engine(EngineSettings(model_path="smollm2", engine="llamacpp", load_8bit=True))


# --- vLLM adapter against a stand-in AsyncLLMEngine ------------------------------------------------

class FakeTokenizer:
    chat_template = CHATML
    eos_token = "<|im_end|>"
    eos_token_id = 2
    unk_token_id = None

    def __init__(self) -> None:
        self._llm = FakeLlama()

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": self._llm.tokenize(text.encode(), add_bos=add_special_tokens, special=True)}

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=False):
        from fleetchat.conversation import template_tokenizer

        return template_tokenizer(CHATML).apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)

    def convert_tokens_to_ids(self, text: str) -> int | None:
        return {"<|im_end|>": 2, "<|im_start|>": 1}.get(text)

    def decode(self, ids) -> str:
        return self._llm.detokenize(list(ids), special=True).decode()


class FakeAsyncLLM:
    def __init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=128)
        self.aborted: list[str] = []
        self.calls: list[tuple] = []

    async def generate(self, prompt, params, request_id):
        self.calls.append((prompt, params, request_id))
        words = ["The", " capital", " is", " Paris", "."]
        for i in range(len(words)):
            await asyncio.sleep(0)
            done = i == len(words) - 1
            yield SimpleNamespace(
                finished=done,
                outputs=[SimpleNamespace(text="".join(words[: i + 1]), token_ids=list(range(10, 11 + i)),
                                         logprobs=None, finish_reason="stop" if done else None)],
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


async def test_vllm_adapter_deltas_params_and_abort() -> None:
    from fleetchat.engines.vllm import VllmEngine

    fake = FakeAsyncLLM()
    engine = VllmEngine(fake, FakeTokenizer(), EngineSettings(model_path="m", device="cuda"), SimpleNamespace)
    assert engine.info.context_length == 128
    text, chunks = await collect(engine, ask("Capital of France?", temperature=0, max_new_tokens=10))
    assert text == "The capital is Paris." and [c.text for c in chunks][:2] == ["The", " capital"]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 5
    prompt, params, rid = fake.calls[0]
    assert params.temperature == 0.0 and params.max_tokens == 10 and 2 in params.stop_token_ids
    assert "<|im_end|>" in params.stop and params.top_k == -1
    assert FakeTokenizer().decode(prompt["prompt_token_ids"]).endswith("<|im_start|>assistant\n")
    assert fake.aborted == []  # finished normally: nothing to abort
    stream = engine.generate(ask("again"))
    await stream.__anext__()
    await stream.aclose()
    assert fake.aborted == [fake.calls[1][2]]
    with pytest.raises(ContextLengthExceededError):
        await collect(engine, ask("y" * 200))
