"""``fleetchat worker``: load a model and serve it to the controller's clients (FastChat-compatible).

Start-up order does not matter: the model is loaded first, then the worker serves and registers; if
the controller is not reachable it keeps retrying and says so in the log. A controller that refuses
the registration secret stops the worker (exit 1).
"""

from __future__ import annotations

import argparse
import logging

from fleetchat.engines.base import EngineSettings
from fleetchat.settings import add_arguments, from_args
from fleetchat.worker.settings import WorkerSettings

HELP = "load a model and serve it as a model worker (FastChat-compatible, default port 21002)"

log = logging.getLogger("fleetchat.worker")


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, WorkerSettings)
    add_arguments(parser, EngineSettings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if str(args.log_level).upper() != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise

    from fleetchat.engines.registry import load_engine
    from fleetchat.errors import FleetchatError
    from fleetchat.worker.app import create_app

    settings = from_args(WorkerSettings, args)
    engine_settings = from_args(EngineSettings, args)
    if settings.host in ("0.0.0.0", "::") and not settings.worker_address:
        log.warning(
            "listening on %s but advertising %s to the controller: pass --worker-address "
            "http://<this machine's address>:%d if clients run on other machines",
            settings.host,
            settings.address,
            settings.port,
        )
    log.info("loading %s ...", engine_settings.model_path)
    engine = load_engine(engine_settings)
    names = engine_settings.model_names or (engine.info.name,)
    log.info("loaded %s (%s engine) as %s", engine_settings.model_path, engine.info.engine, ", ".join(names))

    server: uvicorn.Server | None = None
    fatal: list[FleetchatError] = []

    def on_fatal(err: FleetchatError) -> None:
        fatal.append(err)
        if server is not None:
            server.should_exit = True

    app = create_app({name: engine for name in names}, settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=str(args.log_level).lower(), access_log=False
    )
    server = uvicorn.Server(config)
    log.info(
        "worker %s%s",
        settings.address,
        "" if settings.no_register else f", registering with {settings.controller_address}",
    )
    try:
        server.run()
    finally:
        import asyncio

        asyncio.run(engine.close())
    if fatal:
        raise fatal[0]
    return 0
