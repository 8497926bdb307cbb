"""``fleetchat status``: what the controller knows, checked from here, with hints for common mistakes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

HELP = "show the workers, models, load and heartbeat age known to a controller, and diagnose problems"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller-address", default="http://127.0.0.1:21001", help="URL of the controller (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each answer (default: 3)")


async def collect(controller_address: str, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the controller, then probe every registered worker from here. Never raises for a dead peer."""
    import httpx

    from fleetchat.controller.client import ControllerClient
    from fleetchat.errors import FleetchatError

    report: dict[str, Any] = {"controller": controller_address, "ok": False, "workers": [], "models": [], "problems": []}
    async with ControllerClient(controller_address, timeout=timeout) as client:
        try:
            report["health"] = await client.health()
            report["models"] = await client.list_models()
            workers = await client.workers()
        except FleetchatError as exc:
            if "cannot reach" in str(exc) or "did not answer" in str(exc):
                report["problems"].append(
                    f"cannot reach the controller at {controller_address}: is `fleetchat controller` running? "
                    f"(pass --controller-address if it runs elsewhere)"
                )
                return report
            # A FastChat controller: no /health or /workers, but /list_models works.
            try:
                report["models"] = await client.list_models()
            except FleetchatError as exc2:
                report["problems"].append(str(exc2))
                return report
            workers = []
            report["problems"].append(f"the controller has no /workers listing (a FastChat controller?): {exc}")
    report["ok"] = True
    async with httpx.AsyncClient(timeout=timeout) as http:

        async def probe(w: dict[str, Any]) -> dict[str, Any]:
            try:
                r = await http.post(w["address"] + "/worker_get_status")
                r.raise_for_status()
                return {**w, "answers_here": True, "status_here": r.json()}
            except httpx.HTTPError as exc:
                return {**w, "answers_here": False, "error_here": f"{type(exc).__name__}: {exc}".strip()}

        report["workers"] = list(await asyncio.gather(*(probe(w) for w in workers)))
    expiration = float(report.get("health", {}).get("heart_beat_expiration", 90))
    if not report["workers"] and not report["problems"]:
        report["problems"].append(
            f"no workers are registered: start one with `fleetchat worker --controller-address {controller_address}`"
        )
    for w in report["workers"]:
        if not w["answers_here"] or w.get("reachable") is False:
            why = w.get("error_here") or w.get("probe_error") or "no answer"
            report["problems"].append(
                f"worker {w['address']} is registered but does not answer at that address ({why}). If it "
                f"listens on another host or port, restart it with --worker-address http://HOST:PORT "
                f"(the address clients can reach)."
            )
        elif w.get("heartbeat_age_s", 0) > expiration / 2:
            report["problems"].append(
                f"worker {w['address']} last sent a heartbeat {w['heartbeat_age_s']:.0f}s ago; it will be "
                f"dropped after {expiration:.0f}s (is its --controller-address right?)"
            )
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"controller {report['controller']}: {'up' if report['ok'] else 'DOWN'}"]
    if report["ok"]:
        lines.append(f"models: {', '.join(report['models']) or '(none)'}")
        if report["workers"]:
            lines.append(f"{'worker':<32} {'models':<28} {'queue':>5} {'load':>5} {'heartbeat':>10}  answers")
            for w in report["workers"]:
                lines.append(
                    f"{w['address']:<32} {','.join(w['models'])[:28]:<28} {w.get('queue_length', 0):>5} "
                    f"{w.get('load', 0):>5} {w.get('heartbeat_age_s', 0):>9.1f}s  "
                    f"{'yes' if w['answers_here'] else 'NO'}"
                )
    for problem in report["problems"]:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = asyncio.run(collect(args.controller_address.rstrip("/"), args.timeout))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    if not report["ok"]:
        return 1
    sys.stdout.flush()
    return 0 if not report["problems"] else 2
