"""``fleetchat chat``: chat with a model in the terminal, the model loaded in this process.

Scripted use: when stdin is not a terminal each input line is one user turn and each reply is
printed followed by a blank line (status and banners go to stderr), and decoding is greedy unless
``--temperature`` is given, so a script gets the same answers every run::

    printf 'What is the capital of France?\\n' | fleetchat chat --model-path smollm2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

HELP = "chat with a model in the terminal (loads the model in this process)"


def configure(parser: argparse.ArgumentParser) -> None:
    from fleetchat.engines.base import EngineSettings
    from fleetchat.settings import add_arguments

    add_arguments(parser, EngineSettings)
    g = parser.add_argument_group("chat")
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature, 0 = greedy (default: 0.7 at a terminal; 0 when stdin is not a terminal, "
        "so scripted chats are reproducible)",
    )
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    g.add_argument(
        "--repetition-penalty",
        "--repetition_penalty",
        dest="repetition_penalty",
        type=float,
        default=1.0,
        help="penalise repeated tokens, 1.0 = off (default: 1.0)",
    )
    g.add_argument("--max-new-tokens", type=int, default=512, help="max tokens per reply (default: 512)")
    g.add_argument("--no-history", action="store_true", help="answer each turn without the previous ones")
    g.add_argument("--style", choices=("simple", "rich"), default="simple", help="display style (default: simple)")
    g.add_argument("--multiline", action="store_true", help="multi-line input: Enter adds a line, Esc+Enter sends")
    g.add_argument("--debug", action="store_true", help="after each reply print template, prompt, output, speed")


def run(args: argparse.Namespace) -> int:
    from fleetchat.engines.base import EngineSettings
    from fleetchat.settings import from_args

    settings = from_args(EngineSettings, args)
    if args.temperature is None:
        # FastChat's 0.7 for people; greedy for scripts: the embedded 135M model answers "Paris" to the
        # README's scripted question every time greedily, but only about two times in three at 0.7.
        args.temperature = 0.7 if sys.stdin.isatty() else 0.0
    try:
        return asyncio.run(_chat(settings, args))
    except asyncio.CancelledError:  # Ctrl-C with nothing to stop (scripted input)
        return 130


async def _chat(settings, args: argparse.Namespace) -> int:
    from fleetchat.cli.chat_io import COMMANDS_HELP, make_io
    from fleetchat.cli.chat_session import ChatOptions, ChatSession
    from fleetchat.engines.registry import choose_engine, load_engine
    from fleetchat.errors import ModelLoadError
    from fleetchat.protocol.generation import SamplingParams

    # validate the sampling flags before spending time on loading the model
    SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    if settings.conv_template:
        from fleetchat.conversation import get_chat_template

        get_chat_template(name=settings.conv_template)  # an unknown name fails now, listing the names
    if choose_engine(settings) != "fake":
        from fleetchat.engines.resolve import resolve_model

        resolve_model(settings.model_path, settings.revision)  # a wrong --model-path fails in one line, now
    io = make_io(args.style, args.multiline)
    print(
        f"loading {settings.model_path} with the {choose_engine(settings)} engine on {settings.device} ...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    # Loaded on the event loop's thread on purpose: an engine may start its step thread or tasks
    # against the running loop; nothing else runs yet, so blocking here costs nothing.
    engine = load_engine(settings)
    try:
        if not hasattr(engine, "generate"):
            raise ModelLoadError(f"{settings.model_path} is an embedding model; chat needs a chat model")
        info = engine.info
        print(
            f"loaded {info.name} in {time.perf_counter() - started:.1f} s "
            f"({info.device}, {info.dtype or 'default dtype'}, quantization {info.quantization or 'none'}, "
            f"context {info.context_length} tokens)",
            file=sys.stderr,
            flush=True,
        )
        if io.interactive:
            print(f"{COMMANDS_HELP}; Ctrl-C stops a reply; Ctrl-D or an empty line quits.", file=sys.stderr)
        options = ChatOptions(
            temperature=args.temperature,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_new_tokens,
            seed=settings.seed,
            no_history=args.no_history,
            debug=args.debug,
            system_message=settings.conv_system_msg,
        )
        return await ChatSession(engine, io, options).run()
    finally:
        await engine.close()
