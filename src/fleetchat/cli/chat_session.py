"""One terminal chat: the conversation (a list of ChatMessage), in-chat commands, streaming replies.

The session talks to any :class:`~fleetchat.engines.base.Engine` and any
:class:`~fleetchat.cli.chat_io.ChatIO`, so tests drive it with a scripted engine and in-memory IO.
Ctrl-C while a reply streams cancels the stream (closing the engine's iterator aborts the request)
and the chat goes on; the partial reply stays in the history, ``!!regen`` replaces it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetchat.cli.chat_io import COMMANDS_HELP, ChatIO
from fleetchat.errors import FleetchatError, InvalidParameterError
from fleetchat.protocol.generation import ChatMessage, GenerateRequest, SamplingParams


@dataclass(frozen=True)
class ChatOptions:
    temperature: float = 0.7
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    no_history: bool = False
    debug: bool = False
    system_message: str | None = None  # only for showing the prompt in --debug; the engine applies it


@dataclass
class ReplyStats:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float | None = None
    finish_reason: str | None = None
    interrupted: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ChatSession:
    engine: Any
    io: ChatIO
    options: ChatOptions = ChatOptions()
    history: list[ChatMessage] = field(default_factory=list)
    _reply_task: asyncio.Task[ReplyStats] | None = None

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Read turns until ``!!exit`` or end of input. Returns the exit status."""
        with _SigintToCancel(self) as sigint:
            while True:
                sigint.install()  # again each turn: a line editor may have replaced it
                try:
                    text = await self.io.read()
                except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, not the end
                    self.io.info("(Ctrl-C: use !!exit or Ctrl-D to quit)")
                    continue
                if text is None:
                    return 0
                if self.io.interactive and not text.strip():
                    return 0  # FastChat: an empty line at the prompt ends the chat
                if text.strip().startswith("!!"):
                    if not await self.command(text.strip()):
                        return 0
                    continue
                await self.say(text)

    async def say(self, text: str) -> ReplyStats | None:
        """One user turn and the assistant's reply (None when generation failed)."""
        if self.options.no_history:
            self.history = []
        self.history.append(ChatMessage(role="user", content=text))
        return await self._answer()

    async def _answer(self) -> ReplyStats | None:
        messages = list(self.history)
        try:
            stats = await self._stream(messages)
        except FleetchatError as exc:
            self.history.pop()  # the turn that failed is not part of the conversation
            hint = " (try !!reset)" if exc.code == "context_length_exceeded" else ""
            self.io.info(f"error: {exc}{hint}")
            return None
        if stats.text or not stats.interrupted:
            self.history.append(ChatMessage(role="assistant", content=stats.text))
        else:
            self.history.pop()
        if self.options.debug:
            self.io.debug(self._debug_lines(messages, stats))
        return stats

    async def _stream(self, messages: list[ChatMessage]) -> ReplyStats:
        o = self.options
        params = SamplingParams(
            temperature=o.temperature,
            top_p=o.top_p,
            repetition_penalty=o.repetition_penalty,
            max_new_tokens=o.max_new_tokens,
            seed=o.seed,
        )
        request = GenerateRequest(messages=messages, params=params)
        stats = ReplyStats()

        async def consume() -> ReplyStats:
            start = time.perf_counter()
            stream = self.engine.generate(request)
            try:
                async for chunk in stream:
                    if chunk.text:
                        if stats.first_token_seconds is None:
                            stats.first_token_seconds = time.perf_counter() - start
                        stats.text += chunk.text
                        self.io.stream(chunk.text)
                    stats.prompt_tokens = chunk.prompt_tokens or stats.prompt_tokens
                    stats.completion_tokens = chunk.completion_tokens or stats.completion_tokens
                    if chunk.finish_reason:
                        stats.finish_reason = chunk.finish_reason
            finally:
                stats.seconds = time.perf_counter() - start
                await stream.aclose()  # aborts the request in the engine when we stop early
            return stats

        self.io.begin_reply()
        self._reply_task = asyncio.ensure_future(consume())
        try:
            await self._reply_task
        except asyncio.CancelledError:
            if not self._reply_task.cancelled():
                raise  # the whole session is being cancelled, not just this reply
            stats.interrupted = True
            stats.finish_reason = "abort"
        finally:
            self._reply_task = None
            self.io.end_reply(interrupted=stats.interrupted)
        return stats

    def interrupt(self) -> bool:
        """Stop the reply being generated (Ctrl-C). False when none is."""
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
            return True
        return False

    # --- commands ---------------------------------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Run an in-chat ``!!`` command; False means leave the chat."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name == "!!exit":
            return False
        if name == "!!reset":
            self.history = []
            self.io.info("conversation reset")
        elif name == "!!remove":
            self.io.info("removed the last exchange" if self._remove_last_exchange() else "nothing to remove")
        elif name == "!!regen":
            if self.history and self.history[-1].role == "assistant":
                self.history.pop()
            if self.history and self.history[-1].role == "user":
                await self._answer()
            else:
                self.io.info("no user message to answer again")
        elif name == "!!save":
            self._save(arg)
        elif name == "!!load":
            self._load(arg)
        else:
            self.io.info(f"unknown command {name!r}; {COMMANDS_HELP}")
        return True

    def _remove_last_exchange(self) -> bool:
        if not self.history:
            return False
        if self.history[-1].role == "assistant":
            self.history.pop()
        if self.history and self.history[-1].role == "user":
            self.history.pop()
        return True

    def _save(self, arg: str) -> None:
        if not arg:
            self.io.info("usage: !!save FILE")
            return
        path = Path(arg).expanduser()
        if not path.suffix:
            path = path.with_suffix(".json")
        data = {
            "template": getattr(getattr(self.engine, "info", None), "conv_template", None),
            "system_message": self.options.system_message,
            "messages": [m.model_dump() for m in self.history],
        }
        try:
            path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            self.io.info(f"cannot save to {path}: {exc.strerror or exc}")
            return
        self.io.info(f"saved {len(self.history)} messages to {path}")

    def _load(self, arg: str) -> None:
        if not arg:
            self.io.info("usage: !!load FILE")
            return
        path = Path(arg).expanduser()
        if not path.exists() and not path.suffix and path.with_suffix(".json").exists():
            path = path.with_suffix(".json")
        try:
            self.history = parse_saved_conversation(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            self.io.info(f"cannot load {path}: {exc.strerror or exc}")
            return
        except (ValueError, InvalidParameterError) as exc:
            self.io.info(f"cannot load {path}: {exc}")
            return
        self.io.info(f"loaded {len(self.history)} messages from {path}")

    # --- --debug ----------------------------------------------------------------------------------

    def _debug_lines(self, messages: list[ChatMessage], stats: ReplyStats) -> list[str]:
        info = self.engine.info
        # engines keep their ChatTemplate as ``chat_template`` (or ``template``); the prompt shown is
        # the one the engine renders from the same messages
        template = next(
            (t for t in (getattr(self.engine, a, None) for a in ("chat_template", "template")) if hasattr(t, "render")),
            None,
        )
        template_name = getattr(template, "name", None) or info.conv_template or "(engine default)"
        try:
            prompt = template.render(messages) if template is not None else "(rendered inside the engine)"
        except FleetchatError as exc:
            prompt = f"(cannot render: {exc})"
        ttft = f", first token after {stats.first_token_seconds:.2f} s" if stats.first_token_seconds else ""
        return [
            f"[debug] conv_template: {template_name}",
            f"[debug] prompt: {json.dumps(prompt, ensure_ascii=False)}",
            f"[debug] outputs: {json.dumps(stats.text, ensure_ascii=False)}",
            f"[debug] speed: {stats.tokens_per_second:.1f} tokens/s ({stats.completion_tokens} tokens in "
            f"{stats.seconds:.2f} s{ttft}; prompt {stats.prompt_tokens} tokens; finish {stats.finish_reason})",
            f"[debug] model: {info.name} · engine {info.engine} · device {info.device} · dtype {info.dtype or 'default'} · "
            f"quantization {info.quantization or 'none'}",
        ]


def parse_saved_conversation(data: Any) -> list[ChatMessage]:
    """Messages from a ``!!save`` file, or from FastChat's ``conv.dict()`` JSON (role names mapped by
    position: FastChat stores ``[role_name, text]`` pairs after ``offset`` few-shot messages)."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError("expected a JSON object with a 'messages' list")
    raw = data["messages"]
    if all(isinstance(m, dict) for m in raw):
        return [ChatMessage.model_validate(m) for m in raw]
    offset = int(data.get("offset", 0) or 0)
    out = []
    for i, pair in enumerate(raw[offset:]):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("each FastChat message must be a [role, text] pair")
        if pair[1] is not None:
            out.append(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=str(pair[1])))
    return out


class _SigintToCancel:
    """While the chat runs, Ctrl-C stops the streaming reply; with no reply streaming and no
    terminal prompt to catch it (scripted input), it ends the chat."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.installed = False

    def __enter__(self) -> _SigintToCancel:
        self.main = asyncio.current_task()
        return self

    def install(self) -> None:
        def on_sigint() -> None:
            if not self.session.interrupt() and self.main is not None:
                self.main.cancel()

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
            self.installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no signals here
            pass

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
