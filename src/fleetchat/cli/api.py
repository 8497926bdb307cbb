"""``fleetchat api``: the OpenAI-compatible API server in front of a controller and its workers."""

from __future__ import annotations

import argparse

HELP = "run the OpenAI-compatible API server (default http://127.0.0.1:8000/v1)"


def configure(parser: argparse.ArgumentParser) -> None:
    from fleetchat.api.settings import ApiSettings
    from fleetchat.settings import add_arguments

    add_arguments(parser, ApiSettings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from fleetchat.api.app import create_app
    from fleetchat.api.settings import ApiSettings
    from fleetchat.settings import from_args

    settings = from_args(ApiSettings, args)
    app = create_app(settings)
    log_level = str(getattr(args, "log_level", "info")).lower()
    print(f"fleetchat api: OpenAI-compatible API at http://{settings.host}:{settings.port}/v1 "
          f"(controller {settings.controller_address})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level,
                access_log=log_level == "debug", timeout_graceful_shutdown=5)
    return 0
