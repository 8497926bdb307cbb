"""Where the terminal chat reads turns from and writes replies to.

Three implementations of :class:`ChatIO`:

* :class:`PipeIO` — stdin is not a terminal: each input line is one user turn, each reply is written
  to stdout followed by a blank line; status messages go to stderr, so stdout is only the replies.
* :class:`SimpleIO` — a terminal: prompt_toolkit input (history, ``--multiline``), plain streaming.
* :class:`RichIO` — a terminal with ``--style rich``: replies rendered as markdown while they stream.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, Protocol, TextIO

COMMANDS_HELP = "commands: !!exit, !!reset, !!remove, !!regen, !!save FILE, !!load FILE"


class ChatIO(Protocol):
    interactive: bool

    async def read(self) -> str | None:
        """The next user turn; ``None`` at end of input. May raise KeyboardInterrupt (Ctrl-C at the prompt)."""

    def begin_reply(self) -> None: ...

    def stream(self, delta: str) -> None: ...

    def end_reply(self, interrupted: bool = False) -> None: ...

    def info(self, message: str) -> None:
        """A status line (command results, errors); never mixed into a scripted transcript."""

    def debug(self, lines: list[str]) -> None: ...


class PipeIO:
    """Scripted chat: lines in, replies out. A daemon thread reads stdin so Ctrl-C never hangs on it."""

    interactive = False

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._queue: asyncio.Queue[str | None] | None = None

    def _start_reader(self) -> asyncio.Queue[str | None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for line in self.stdin:
                    loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
            except (OSError, ValueError):
                pass
            finally:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, None)
                except RuntimeError:  # loop already closed: nobody is reading any more
                    pass

        threading.Thread(target=pump, name="fleetchat-stdin", daemon=True).start()
        return queue

    async def read(self) -> str | None:
        if self._queue is None:
            self._queue = self._start_reader()
        while True:
            line = await self._queue.get()
            if line is None or line.strip():
                return line  # blank lines are not turns

    def begin_reply(self) -> None:
        pass

    def stream(self, delta: str) -> None:
        self.stdout.write(delta)
        self.stdout.flush()

    def end_reply(self, interrupted: bool = False) -> None:
        self.stdout.write("\n\n")
        self.stdout.flush()

    def info(self, message: str) -> None:
        print(message, file=self.stderr, flush=True)

    def debug(self, lines: list[str]) -> None:
        self.stdout.write("".join(line + "\n" for line in lines) + "\n")
        self.stdout.flush()


class SimpleIO:
    """A person at a terminal: ``user:`` prompt, streamed ``assistant:`` reply."""

    interactive = True

    def __init__(self, multiline: bool = False, roles: tuple[str, str] = ("user", "assistant")) -> None:
        import re

        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import InMemoryHistory

        self.roles = roles
        self.multiline = multiline
        words = ["!!exit", "!!reset", "!!remove", "!!regen", "!!save", "!!load"]
        self._session: Any = PromptSession(
            history=InMemoryHistory(),
            completer=WordCompleter(words, pattern=re.compile(r"!![a-z]*")),
            multiline=multiline,
        )

    async def read(self) -> str | None:
        try:
            # Ctrl-C at the prompt arrives as a key (raw mode) and raises KeyboardInterrupt; prompt_toolkit
            # must not install (and then remove) a SIGINT handler of its own over the session's.
            text = await self._session.prompt_async(f"{self.roles[0]}: ", handle_sigint=False)
        except EOFError:
            return None
        return text

    def begin_reply(self) -> None:
        sys.stdout.write(f"{self.roles[1]}: ")
        sys.stdout.flush()

    def stream(self, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    def end_reply(self, interrupted: bool = False) -> None:
        sys.stdout.write(" [stopped]\n" if interrupted else "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def debug(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)


class RichIO(SimpleIO):
    """Like :class:`SimpleIO`, with the reply re-rendered as markdown as it streams (rich Live)."""

    def __init__(self, multiline: bool = False, roles: tuple[str, str] = ("user", "assistant")) -> None:
        super().__init__(multiline, roles)
        from rich.console import Console

        self.console = Console()
        self._live: Any = None
        self._text = ""

    def begin_reply(self) -> None:
        from rich.live import Live

        self.console.print(f"[bold]{self.roles[1]}:[/bold]")
        self._text = ""
        self._live = Live(console=self.console, refresh_per_second=8, vertical_overflow="visible")
        self._live.start()

    def stream(self, delta: str) -> None:
        from rich.markdown import Markdown

        self._text += delta
        if self._live is not None:
            self._live.update(Markdown(self._text))

    def end_reply(self, interrupted: bool = False) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if interrupted:
            self.console.print("[stopped]", style="dim", markup=False)
        self.console.print()

    def info(self, message: str) -> None:
        self.console.print(message, style="dim", highlight=False, markup=False)

    def debug(self, lines: list[str]) -> None:
        for line in lines:
            self.console.print(line, style="dim", highlight=False, markup=False, soft_wrap=True)


def make_io(style: str, multiline: bool) -> ChatIO:
    """The IO for this process: scripted when stdin is not a terminal, else simple or rich."""
    if not sys.stdin.isatty():
        return PipeIO()
    return RichIO(multiline) if style == "rich" else SimpleIO(multiline)
