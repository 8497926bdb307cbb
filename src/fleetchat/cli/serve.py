"""``fleetchat serve``: controller, one worker per model, the API server and the web UI, in one command.

Models: ``--model-path`` is repeatable; each starts one worker. Name a model with
``--model-path PATH=NAME`` (or several names: ``PATH=a,b``), or with ``--model-names`` given once per
``--model-path`` in the same order. The same model can be served twice under two names::

    fleetchat serve --model-path smollm2=smollm2-a --model-path smollm2=smollm2-b

Without ``--model-path``: the embedded SmolLM2 chat model and the all-MiniLM-L6-v2 embedding model.
Engine flags (``--engine --device --dtype --load-8bit ...``) go to every chat worker (embedding workers
get all but ``--engine``). Children listen on ``--host`` with the default ports unless told otherwise,
log to files under ``--log-dir``, and are stopped cleanly on Ctrl-C or SIGTERM. A child that dies
while starting is named with its last log lines, and serve exits 1. Once serving, a worker that dies is
reported and started again (at most 5 times in 10 minutes) while the others keep serving; the
controller, the API server or the web UI dying stops everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetchat.cli.supervisor import Child, Supervisor

HELP = "start controller, model workers, the OpenAI API server and the web UI in one command"

DEFAULT_MODELS = ("smollm2", "all-minilm-l6-v2")


def configure(parser: argparse.ArgumentParser) -> None:
    from fleetchat.engines.base import EngineSettings
    from fleetchat.settings import add_arguments

    g = parser.add_argument_group("serve")
    g.add_argument("--model-path", action="append", default=[], metavar="PATH[=NAME,...]",
                   help="a model to serve, one worker each (repeatable); PATH=NAME names it "
                   f"(default: {' and '.join(DEFAULT_MODELS)})")
    g.add_argument("--model-names", action="append", default=[], metavar="NAMES",
                   help="names (comma list) for the --model-path at the same position (repeatable)")
    g.add_argument("--host", default="127.0.0.1", help="address every child binds (default: 127.0.0.1)")
    g.add_argument("--controller-port", type=int, default=21001, help="controller port (default: 21001)")
    g.add_argument("--worker-port", type=int, default=21002,
                   help="port of the first worker; the next ones count up (default: 21002)")
    g.add_argument("--api-port", type=int, default=8000, help="OpenAI API port (default: 8000)")
    g.add_argument("--web-port", type=int, default=7860, help="web UI port (default: 7860)")
    g.add_argument("--no-web", action="store_true", help="do not start the web UI")
    g.add_argument("--api-keys", default=None, help="API keys the API server accepts (comma list)")
    g.add_argument("--log-dir", default=None, help="where the children's logs go (default: a new temp folder)")
    g.add_argument("--start-timeout", type=float, default=900.0,
                   help="seconds to wait for every model to be listed (default: 900)")
    add_arguments(parser, EngineSettings, skip=("model_path", "model_names"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    path: str
    names: tuple[str, ...]
    embedding: bool


def model_specs(paths: list[str], names: list[str]) -> list[ModelSpec]:
    """Pair each --model-path with its names (``PATH=NAME,...`` or the --model-names at its position)."""
    from fleetchat.engines.resolve import is_embedding_model

    if len(names) > max(len(paths), 0) or (names and not paths):
        raise SystemExit("error: give --model-names once per --model-path, in the same order")
    out = []
    for i, raw in enumerate(paths or list(DEFAULT_MODELS)):
        path, sep, given = raw.partition("=")
        listed = tuple(n.strip() for n in given.split(",") if n.strip()) if sep else ()
        if i < len(names):
            if listed:
                raise SystemExit(f"error: {raw!r} names its model already; drop the --model-names for it")
            listed = tuple(n.strip() for n in names[i].split(",") if n.strip())
        out.append(ModelSpec(path.strip(), listed, is_embedding_model(path.strip())))
    return out


def _engine_flags(args: argparse.Namespace, *, embedding: bool) -> list[str]:
    """The engine flags given on serve's command line, re-spelt for a worker."""
    from fleetchat.engines.base import EngineSettings

    argv: list[str] = []
    for f in dataclasses.fields(EngineSettings):
        if f.name in ("model_path", "model_names") or f.name not in vars(args):
            continue
        if embedding and f.name == "engine":
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        value = getattr(args, f.name)
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif f.default is True:
                argv.append("--no-" + flag[2:])
        elif isinstance(value, list):
            for v in value:
                argv += [flag, str(v)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, object]:
    import httpx

    try:
        r = httpx.get(url, headers=headers, timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return 0, None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _post(url: str, timeout: float = 10.0) -> int:
    import httpx

    try:
        return httpx.post(url, timeout=timeout, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


class _Stop(Exception):
    """SIGTERM / SIGHUP: stop like Ctrl-C."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    import logging

    from fleetchat.cli.supervisor import ChildFailed, Supervisor

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    specs = model_specs(args.model_path, args.model_names)
    host = args.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    controller_url = f"http://{shown}:{args.controller_port}"
    api_url = f"http://{shown}:{args.api_port}"
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="fleetchat-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    api_keys = [k.strip() for k in (args.api_keys or "").split(",") if k.strip()]

    env = dict(os.environ)
    # one-run registration secret: only our own workers can register with our controller
    env.setdefault("FLEETCHAT_CONTROLLER_SECRET", secrets.token_urlsafe(24))
    env["PYTHONUNBUFFERED"] = "1"
    sup = Supervisor(log_dir, env)
    log_level = ["--log-level", str(args.log_level)]

    def say(text: str) -> None:
        print(text, flush=True)

    # SIGINT too: a process started in the background by a shell inherits SIGINT as ignored
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        say(f"fleetchat serve: logs in {log_dir}")
        ctl = sup.start("controller", "controller", [*log_level, "--host", host, "--port",
                                                     str(args.controller_port)], controller_url)
        if not sup.wait_until(lambda: _get(controller_url + "/health")[0] == 200, 60,
                              lambda t: say(f"  waiting for the controller ({t:.0f}s)")):
            raise ChildFailed(ctl)
        say(f"  controller  {controller_url}")

        workers = []
        for i, spec in enumerate(specs):
            port = args.worker_port + i
            argv = [*log_level, "--host", host, "--port", str(port), "--controller-address", controller_url,
                    "--model-path", spec.path, *_engine_flags(args, embedding=spec.embedding)]
            if spec.names:
                argv += ["--model-names", ",".join(spec.names)]
            label = f"worker {spec.path}" + (f" ({','.join(spec.names)})" if spec.names else "")
            workers.append(sup.start(label, "worker", argv, f"http://{shown}:{port}"))

        api_argv = [*log_level, "--host", host, "--port", str(args.api_port),
                    "--controller-address", controller_url]
        if api_keys:
            api_argv += ["--api-keys", ",".join(api_keys)]
        api = sup.start("api", "api", api_argv, api_url + "/v1")
        auth = {"Authorization": f"Bearer {api_keys[0]}"} if api_keys else None

        def registered() -> dict[str, list[str]]:
            """Worker address -> its model names, for the workers the controller knows."""
            status, body = _get(controller_url + "/workers")
            if status != 200 or not isinstance(body, list):
                return {}
            return {str(w.get("address", "")).rstrip("/"): list(w.get("models") or []) for w in body}

        def progress(t: float) -> None:
            done = registered()
            waiting = [w.name for w in workers if not done.get(w.url)]
            if waiting:
                say(f"  loading models ({t:.0f}s): waiting for {', '.join(waiting)}")
            else:
                say(f"  waiting for the API server ({t:.0f}s)")

        last_refresh = [time.monotonic()]

        def all_listed() -> bool:
            done = registered()
            if not all(done.get(w.url) for w in workers):
                return False
            wanted = {name for w in workers for name in done[w.url]}
            status, body = _get(api_url + "/v1/models", auth)
            listed = {m.get("id") for m in body.get("data", [])} if status == 200 and isinstance(body, dict) else set()
            if wanted <= listed:
                return True
            # A worker that registered a moment before its socket was listening failed the controller's
            # first status probe and stays unlisted until its next heartbeat: have it probed again.
            now = time.monotonic()
            if status == 200 and now - last_refresh[0] > 2.0:
                last_refresh[0] = now
                _post(controller_url + "/refresh_all_workers")
            return False

        if not sup.wait_until(all_listed, args.start_timeout, progress):
            say(f"fleetchat serve: models not listed after {args.start_timeout:.0f}s; see the logs in {log_dir}")
            return 1
        _, models = _get(api_url + "/v1/models", auth)
        names = sorted(m["id"] for m in models["data"]) if isinstance(models, dict) else []
        for w in workers:
            say(f"  {w.name:<32} {w.url}")
        say(f"  OpenAI API  {api.url}  models: {', '.join(names)}")

        web = None
        if not args.no_web and _module_exists("fleetchat.cli.web"):
            web_url = f"http://{shown}:{args.web_port}"
            web_argv = [*log_level, "--host", host, "--port", str(args.web_port), "--api-base-url", api_url + "/v1"]
            if api_keys:
                web_argv += ["--api-key", api_keys[0]]
            web = sup.start("web", "web", web_argv, web_url)
            if not sup.wait_until(lambda: _get(web_url + "/", timeout=5)[0] == 200, 180,
                                  lambda t: say(f"  starting the web UI ({t:.0f}s)")):
                raise ChildFailed(web)
            say(f"  web UI      {web_url}")

        say(f"fleetchat is ready: OpenAI API at {api.url}" + (f", web UI at {web.url}" if web else "")
            + ". Press Ctrl-C to stop.")
        while True:
            try:
                sup.check()
            except ChildFailed as exc:
                if exc.child not in workers:
                    raise  # the controller, the API or the web UI: nothing works without them
                _restart_worker(sup, exc.child, say)
            time.sleep(0.5)
    except ChildFailed as exc:
        child = exc.child
        code = child.exit_code()
        why = f"exited with code {code}" if code is not None else "did not become ready"
        print(f"fleetchat serve: {child.name} {why}. Last lines of {child.log_path}:", file=sys.stderr)
        for line in child.tail().splitlines():
            print(f"  | {line}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        say("fleetchat serve: stopping ...")
        return 0
    finally:
        # a second Ctrl-C while stopping must not leave children behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        sup.stop_all()
        for s, handler in previous.items():
            signal.signal(s, handler)
        say("fleetchat serve: stopped")


def _restart_worker(sup: Supervisor, child: Child, say: Callable[[str], None]) -> None:
    """A worker died after start-up: the other workers keep serving; start it again (bounded)."""
    code = child.exit_code()
    say(f"fleetchat serve: {child.name} at {child.url} exited with code {code}; the other workers keep "
        f"serving. Last lines of {child.log_path}:")
    for line in child.tail(8).splitlines():
        say(f"  | {line}")
    if sup.restart(child):
        say(f"fleetchat serve: restarting {child.name} (restart {len(child.restarts)})")
    else:
        say(f"fleetchat serve: {child.name} keeps dying; left stopped (see {child.log_path})")


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
