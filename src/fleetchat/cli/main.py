"""The ``fleetchat`` command: one subcommand per module under :mod:`fleetchat.cli`.

Each subcommand module defines ``HELP`` (one line), ``configure(parser)`` (adds its flags; imports
nothing heavy) and ``run(args) -> int``. A :class:`~fleetchat.errors.FleetchatError` escaping ``run``
is printed as one readable line (no traceback) and exits 1; ``--traceback`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fleetchat import __version__
from fleetchat.errors import FleetchatError

# Torch's OpenMP threads spin between ops by default; on a small shared CPU that starves the event loop
# and the other processes (measured: engine steps several times slower). Only read before torch loads.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS: dict[str, str] = {
    "serve": "fleetchat.cli.serve",
    "chat": "fleetchat.cli.chat",
    "controller": "fleetchat.cli.controller",
    "worker": "fleetchat.cli.worker",
    "api": "fleetchat.cli.api",
    "web": "fleetchat.cli.web",
    "status": "fleetchat.cli.status",
    "test-message": "fleetchat.cli.test_message",
    "bench": "fleetchat.cli.bench",
}


def _add_command(sub: argparse._SubParsersAction, name: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=module.HELP, description=module.HELP)
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    p.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    module.configure(p)
    p.set_defaults(_run=module.run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` set, just that subcommand's module is imported.

    Importing one subcommand at a time means a broken or slow module never takes the others down.
    """
    parser = argparse.ArgumentParser(
        prog="fleetchat",
        description="Serve chat LLMs: controller, model workers, OpenAI-compatible API, web UI.",
    )
    parser.add_argument("--version", action="version", version=f"fleetchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            _add_command(sub, name, module_name)
        except Exception as exc:  # listing every command must survive one broken module
            if only is not None:
                raise
            sub.add_parser(name, help=f"(unavailable: {type(exc).__name__}: {exc})")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args) or 0)
    except FleetchatError as exc:
        if args.traceback:
            raise
        print(f"fleetchat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
