"""``fleetchat test-message``: FastChat's test_message: ask the controller for a worker, stream a reply.

Like FastChat it refreshes the controller, prints the models, gets a worker address and streams
straight from the worker. A fleetchat worker is asked through ``/v1/generate`` with the message as a
chat message (the worker renders its own chat template); a FastChat worker (no ``/v1/generate``)
through ``/worker_generate_stream`` with the raw message as prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

HELP = "send one message to a model through the controller and print the streamed reply (as FastChat's)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller-address", default="http://127.0.0.1:21001", help="URL of the controller (default: %(default)s)"
    )
    parser.add_argument("--worker-address", default=None, help="talk to this worker directly, skipping the controller")
    parser.add_argument("--model-name", required=True, help="model to ask")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default: 32)")
    parser.add_argument(
        "--message", default="Tell me a story with more than 1000 words.", help="the message (default: %(default)s)"
    )


async def _worker_address(args: argparse.Namespace) -> str | None:
    from fleetchat.controller.client import ControllerClient

    async with ControllerClient(args.controller_address) as client:
        await client.refresh()
        models = await client.list_models()
        print(f"Models: {', '.join(models) if models else '(none)'}")
        address = await client.get_worker_address(args.model_name)
    if not address:
        hint = f"; served models: {', '.join(models)}" if models else "; no worker is registered"
        print(f"No available workers for {args.model_name}{hint}", file=sys.stderr)
        return None
    print(f"worker_addr: {address}")
    return address


async def _stream(args: argparse.Namespace, address: str) -> int:
    import httpx

    from fleetchat.errors import WorkerError, error_from_body
    from fleetchat.protocol.fastchat import parse_frames

    body = {
        "model": args.model_name,
        "messages": [{"role": "user", "content": args.message}],
        "params": {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens},
    }
    print(f"user: {args.message}\nassistant:", end="", flush=True)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=300.0)) as http:
        try:
            async with http.stream("POST", address + "/v1/generate", json=body) as r:
                if r.status_code == 200:
                    async for line in r.aiter_lines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if "error" in item:
                            raise error_from_body(500, item)
                        print(item.get("text", ""), end="", flush=True)
                    print()
                    return 0
                await r.aread()
                if r.status_code != 404:
                    try:
                        raise error_from_body(r.status_code, r.json())
                    except ValueError:
                        raise WorkerError(f"worker {address} answered HTTP {r.status_code}: {r.text[:200]}") from None
            # 404: a FastChat worker. Use its own protocol.
            params = {
                "model": args.model_name,
                "prompt": args.message,
                "temperature": args.temperature,
                "max_new_tokens": args.max_new_tokens,
                "echo": False,
            }
            shown = ""
            async with http.stream("POST", address + "/worker_generate_stream", json=params) as r:
                buffer = b""
                async for part in r.aiter_bytes():
                    items, buffer = parse_frames(buffer + part)
                    for item in items:
                        if item.get("error_code", 0) != 0:
                            raise WorkerError(f"worker {address} failed: {item.get('text')} (code {item['error_code']})")
                        text = item.get("text", "")
                        print(text[len(shown):], end="", flush=True)
                        shown = text
            print()
            return 0
        except httpx.HTTPError as exc:
            raise WorkerError(
                f"cannot stream from the worker at {address} ({type(exc).__name__}: {exc}); if that address "
                f"is wrong, restart the worker with --worker-address"
            ) from exc


async def _main(args: argparse.Namespace) -> int:
    address = args.worker_address.rstrip("/") if args.worker_address else await _worker_address(args)
    if not address:
        return 1
    return await _stream(args, address)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(_main(args))
