"""``fleetchat web``: the Gradio web UI (chat, arena, leaderboard) over an OpenAI-compatible API."""

from __future__ import annotations

import argparse

from fleetchat.settings import add_arguments, from_args
from fleetchat.webui.settings import WebSettings

HELP = "Web UI: chat, arena (battle / side-by-side) and a live leaderboard, over the OpenAI API"


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, WebSettings)


def run(args: argparse.Namespace) -> int:
    settings = from_args(WebSettings, args)
    # Heavy imports only now: `fleetchat --help` must not pay for gradio.
    import asyncio

    from fleetchat.webui.app import create_app, launch_kwargs
    from fleetchat.webui.client import ChatClient, make_openai_client
    from fleetchat.webui.context import UiContext
    from fleetchat.webui.store import Store

    store = Store(settings.db_url)
    client = ChatClient(make_openai_client(settings.api_base_url, settings.api_key, settings.request_timeout))
    ctx = UiContext(settings=settings, client=client, store=store)
    demo = create_app(ctx)
    demo.queue(default_concurrency_limit=None, api_open=False)
    print(
        f"fleetchat web: http://{settings.host}:{settings.port} (API {settings.api_base_url}, "
        f"database {store.url.split('@')[-1]})",
        flush=True,
    )
    try:
        demo.launch(**launch_kwargs(ctx))
    finally:
        store.close()
        try:
            asyncio.run(client.close())
        except RuntimeError:
            pass
    return 0
