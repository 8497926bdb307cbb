"""The terminal chat's session logic with a scripted engine: history, !! commands, Ctrl-C, --debug.

The real model is exercised end to end in tests/e2e/test_cli_chat.py; here a tiny scripted engine
makes the command semantics checkable in milliseconds.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest

from fleetchat.cli.chat_io import PipeIO
from fleetchat.cli.chat_session import ChatOptions, ChatSession, parse_saved_conversation
from fleetchat.errors import ContextLengthExceededError
from fleetchat.protocol.generation import ChatMessage, GenerateRequest, GenerationChunk, ModelInfo


class ScriptedEngine:
    """Replies "reply N to <last user text> (saw K messages)" word by word."""

    def __init__(self, delay: float = 0.0) -> None:
        self.info = ModelInfo(name="scripted", engine="scripted", dtype="float32", quantization="int8",
                              conv_template="chatml")
        self.requests: list[GenerateRequest] = []
        self.closed_early: list[str] = []
        self.delay = delay

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        msgs = request.messages or []
        if "TOO LONG" in msgs[-1].content:
            raise ContextLengthExceededError("prompt of 9999 tokens does not fit the context of 2048")
        words = f"reply {len(self.requests)} to {msgs[-1].content} (saw {len(msgs)} messages)".split(" ")
        finished = False
        try:
            for i, w in enumerate(words):
                await asyncio.sleep(self.delay)
                yield GenerationChunk(request_id=request.request_id, text=(" " if i else "") + w,
                                      prompt_tokens=10, completion_tokens=i + 1)
            finished = True
            yield GenerationChunk(request_id=request.request_id, finish_reason="stop", prompt_tokens=10,
                                  completion_tokens=len(words))
        finally:
            if not finished:
                self.closed_early.append(request.request_id)

    async def close(self) -> None:
        pass


class MemoryIO:
    interactive = False

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.replies: list[str] = []
        self.infos: list[str] = []
        self.debugs: list[list[str]] = []
        self.interrupted: list[bool] = []
        self._current = ""

    async def read(self) -> str | None:
        return self.lines.pop(0) if self.lines else None

    def begin_reply(self) -> None:
        self._current = ""

    def stream(self, delta: str) -> None:
        self._current += delta

    def end_reply(self, interrupted: bool = False) -> None:
        self.replies.append(self._current)
        self.interrupted.append(interrupted)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def debug(self, lines: list[str]) -> None:
        self.debugs.append(lines)


async def chat(lines: list[str], **options) -> tuple[ChatSession, MemoryIO, ScriptedEngine]:
    engine, mio = ScriptedEngine(), MemoryIO(lines)
    session = ChatSession(engine, mio, ChatOptions(**options))
    assert await session.run() == 0
    return session, mio, engine


async def test_history_is_sent_with_each_turn() -> None:
    session, mio, engine = await chat(["My name is Alice.", "What is my name?"])
    assert mio.replies[1] == "reply 2 to What is my name? (saw 3 messages)"
    assert [m.content for m in engine.requests[1].messages] == [
        "My name is Alice.", "reply 1 to My name is Alice. (saw 1 messages)", "What is my name?"]
    assert [m.role for m in session.history] == ["user", "assistant", "user", "assistant"]
    # sampling flags reach the engine
    assert engine.requests[0].params.temperature == 0.7 and engine.requests[0].params.max_new_tokens == 512


async def test_no_history() -> None:
    _, mio, engine = await chat(["one", "two"], no_history=True)
    assert len(engine.requests[1].messages) == 1 and mio.replies[1].endswith("(saw 1 messages)")


async def test_reset_remove_regen() -> None:
    session, mio, engine = await chat(["a", "b", "!!remove", "c", "!!reset", "d", "!!regen"])
    # after !!remove the "b" exchange is gone, "c" follows "a"
    assert [m.content for m in engine.requests[2].messages][-1] == "c"
    assert len(engine.requests[2].messages) == 3
    # after !!reset, "d" starts a new conversation
    assert len(engine.requests[3].messages) == 1
    # !!regen asks again with the same messages and replaces the reply
    assert engine.requests[4].messages == engine.requests[3].messages
    assert session.history[-1].content == "reply 5 to d (saw 1 messages)" and len(session.history) == 2
    assert "conversation reset" in mio.infos and "removed the last exchange" in mio.infos


async def test_exit_stops_reading() -> None:
    _, mio, engine = await chat(["hi", "!!exit", "never"])
    assert len(engine.requests) == 1


async def test_save_and_load_roundtrip(tmp_path) -> None:
    target = tmp_path / "conv"
    session, mio, _ = await chat(["x", "y", f"!!save {target}"])
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert saved["template"] == "chatml" and [m["content"] for m in saved["messages"]][::2] == ["x", "y"]
    session2, mio2, engine2 = await chat([f"!!load {tmp_path / 'conv.json'}", "z"])
    assert engine2.requests[0].messages[:4] == session.history
    assert "loaded 4 messages" in mio2.infos[0]


async def test_load_errors_are_reported_not_raised(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _, mio, _ = await chat([f"!!load {bad}", f"!!load {tmp_path / 'missing.json'}", "!!save", "!!bogus"])
    assert mio.infos[0].startswith("cannot load") and mio.infos[1].startswith("cannot load")
    assert mio.infos[2] == "usage: !!save FILE" and "unknown command" in mio.infos[3]


def test_load_fastchat_conv_dict() -> None:
    data = {"template_name": "vicuna_v1.1", "offset": 0,
            "messages": [["USER", "hi"], ["ASSISTANT", "hello"], ["USER", "bye"], ["ASSISTANT", None]]}
    assert parse_saved_conversation(data) == [
        ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="bye")]


async def test_engine_error_drops_the_turn_and_goes_on() -> None:
    session, mio, _ = await chat(["TOO LONG please", "short"])
    assert "context" in mio.infos[0] and "!!reset" in mio.infos[0]
    assert [m.content for m in session.history][0] == "short"


async def test_debug_reports_speed_template_and_quantization() -> None:
    _, mio, _ = await chat(["hi"], debug=True)
    text = "\n".join(mio.debugs[0])
    assert "conv_template: chatml" in text and "tokens/s" in text and "quantization int8" in text
    assert "dtype float32" in text and '"reply 1 to hi (saw 1 messages)"' in text


async def test_interrupt_stops_the_reply_not_the_session() -> None:
    engine = ScriptedEngine(delay=0.05)
    mio = MemoryIO([])
    session = ChatSession(engine, mio, ChatOptions())
    turn = asyncio.create_task(session.say("slow one"))
    await asyncio.sleep(0.12)
    assert session.interrupt()
    stats = await turn
    assert stats is not None and stats.interrupted and mio.interrupted == [True]
    assert engine.closed_early == [engine.requests[0].request_id]  # the engine's stream was closed
    partial = session.history[-1].content
    assert 0 < len(partial) < len("reply 1 to slow one (saw 1 messages)")
    engine.delay = 0
    await session.say("next")
    assert mio.replies[-1] == "reply 2 to next (saw 3 messages)"
    assert not session.interrupt()


async def test_pipe_io_one_turn_per_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    pio = PipeIO(stdin=io.StringIO("first\n\n!!reset\nsecond\n"), stdout=out, stderr=err)
    session = ChatSession(ScriptedEngine(), pio, ChatOptions())
    assert await session.run() == 0
    assert out.getvalue() == "reply 1 to first (saw 1 messages)\n\nreply 2 to second (saw 1 messages)\n\n"
    assert "conversation reset" in err.getvalue()


def test_chat_flags_parse() -> None:
    from fleetchat.cli.main import build_parser

    args = build_parser().parse_args(
        ["chat", "--model-path", "smollm2", "--load-8bit", "--conv-template", "chatml", "--temperature", "0",
         "--max-new-tokens", "8", "--no-history", "--style", "rich", "--multiline", "--debug"])
    assert args.load_8bit and args.conv_template == "chatml" and args.temperature == 0.0
    assert args.max_new_tokens == 8 and args.no_history and args.style == "rich" and args.debug


@pytest.mark.parametrize("flags, message", [
    (["--conv-template", "nope"], "unknown chat template 'nope'"),
    (["--temperature", "5"], "temperature"),
])
def test_bad_flags_fail_before_loading(capsys, flags, message) -> None:
    from fleetchat.cli.main import main

    assert main(["chat", "--model-path", "smollm2", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "loading" not in err
