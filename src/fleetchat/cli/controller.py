"""``fleetchat controller``: the worker registry and dispatcher (FastChat-compatible)."""

from __future__ import annotations

import argparse
import logging

from fleetchat.controller.settings import ControllerSettings
from fleetchat.settings import add_arguments, from_args

HELP = "run the controller that workers register with (FastChat-compatible, default 127.0.0.1:21001)"

log = logging.getLogger("fleetchat.controller")


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ControllerSettings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if str(args.log_level).upper() != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise

    from fleetchat.controller.app import create_app

    settings = from_args(ControllerSettings, args)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.controller_secret:
        log.warning(
            "the controller listens on %s without a registration secret: anyone who can reach it can "
            "register a worker and receive prompts. Set --controller-secret (or FLEETCHAT_CONTROLLER_SECRET).",
            settings.host,
        )
    app = create_app(settings)
    log.info(
        "controller on %s (dispatch %s, heartbeat expiration %.1fs%s)",
        settings.url,
        settings.dispatch_method,
        settings.heart_beat_expiration,
        ", registration secret required" if settings.controller_secret else "",
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=str(args.log_level).lower(), access_log=False
    )
    uvicorn.Server(config).run()
    return 0
