"""``fleetchat bench``: streamed chat load against OpenAI-compatible servers, side by side.

For each concurrency level (``--concurrency 1,8,32``) every target is run in turn: the server at
``--base-url``, another at ``--compare-base-url`` (any OpenAI-compatible server: llama.cpp, vLLM,
FastChat ...), and with ``--direct MODEL_PATH`` the engine in this process without HTTP, so the
API's overhead shows as the gap between the rows. Each level reports requests ok/failed, output
tokens/s, TTFT p50/p99, inter-chunk latency p50, TPOT p50 and latency p50/p99, as a table and
(``--json-out``) as JSON. Output tokens are the server's own count (``stream_options.include_usage``)
when it gives one, else one per streamed chunk. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse

HELP = "benchmark an OpenAI-compatible server (and the engine direct) over a sweep of concurrency levels"

DEFAULT_PROMPT = (
    "Write a very long and detailed story about a lighthouse keeper who finds a hidden city under the sea. "
    "Describe every street, every person she meets and everything that happens, chapter by chapter."
)


def configure(parser: argparse.ArgumentParser) -> None:
    from fleetchat.engines.base import EngineSettings
    from fleetchat.settings import add_arguments

    g = parser.add_argument_group("load")
    g.add_argument("--base-url", default="http://127.0.0.1:8000/v1",
                   help="OpenAI-compatible server to load, ending in /v1 (default: http://127.0.0.1:8000/v1)")
    g.add_argument("--api-key", default=None, help="API key for --base-url")
    g.add_argument("--model", default=None, help="model to ask for (default: the first chat model listed)")
    g.add_argument("--compare-base-url", default=None, help="a second server, run side by side in the same run")
    g.add_argument("--compare-model", default=None, help="model name on the second server (default: --model)")
    g.add_argument("--compare-api-key", default=None, help="API key for the second server")
    g.add_argument("--direct", default=None, metavar="MODEL_PATH",
                   help="also run this model's engine in-process (no HTTP) as the baseline")
    g.add_argument("--only-direct", action="store_true", help="with --direct: skip --base-url")
    g.add_argument("--concurrency", default="1,8,32", help="comma list of concurrency levels (default: 1,8,32)")
    g.add_argument("--max-tokens", type=int, default=256, help="max_tokens of each request (default: 256)")
    g.add_argument("--requests-per-level", type=int, default=None,
                   help="requests per level (default: 2 x concurrency, at least 4)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds per level instead of a request count (requests in flight finish and count)")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message of every request")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    g.add_argument("--seed", type=int, default=None, help="seed of request i is SEED + i (default: none)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos=true (an extension of fleetchat, vLLM and llama.cpp) so every "
                   "reply is max_tokens long")
    g.add_argument("--warmup", type=int, default=1, help="unmeasured requests per target first (default: 1)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    g.add_argument("--json-out", default=None, metavar="FILE", help="write the results as JSON here")
    add_arguments(parser, EngineSettings, skip=("model_path", "model_names", "seed"))


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --concurrency must be a comma list of numbers, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise SystemExit(f"error: --concurrency levels must be >= 1, got {text!r}")
    return levels


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    import json
    import logging
    import os

    from fleetchat.bench.load import run_level
    from fleetchat.bench.report import table, to_json
    from fleetchat.bench.stats import LevelResult
    from fleetchat.bench.targets import EngineTarget, HttpTarget
    from fleetchat.engines.base import EngineSettings
    from fleetchat.settings import from_args

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the table
    levels = _levels(args.concurrency)
    if args.max_tokens < 1:
        raise SystemExit("error: --max-tokens must be at least 1")
    if args.requests_per_level is not None and args.duration is not None:
        raise SystemExit("error: give --requests-per-level or --duration, not both")
    if args.only_direct and not args.direct:
        raise SystemExit("error: --only-direct needs --direct MODEL_PATH")
    load_before = [round(x, 2) for x in os.getloadavg()]

    targets: list = []
    if not args.only_direct:
        targets.append(HttpTarget("api", args.base_url, args.model, args.api_key, timeout=args.timeout,
                                  ignore_eos=args.ignore_eos))
    if args.compare_base_url:
        targets.append(HttpTarget("compare", args.compare_base_url, args.compare_model or args.model,
                                  args.compare_api_key, timeout=args.timeout, ignore_eos=args.ignore_eos))
    if args.direct:
        settings = from_args(EngineSettings, args, model_path=args.direct, model_names=(), seed=None)
        targets.append(EngineTarget("direct", args.direct, settings, ignore_eos=args.ignore_eos))

    rows: list[tuple[str, LevelResult]] = []
    try:
        for t in targets:
            await t.prepare()
            print(f"target {t.name}: {t.describe()}", flush=True)
            for i in range(args.warmup):
                rec = await t.send(args.prompt, min(args.max_tokens, 16), args.temperature, None)
                if not rec.ok:
                    print(f"  warm-up request {i} failed: {rec.error}", flush=True)
        for level in levels:
            count = args.requests_per_level or max(4, 2 * level)
            for t in targets:
                async def send(i: int, t=t) -> object:  # noqa: ANN001
                    seed = args.seed + i if args.seed is not None else None
                    return await t.send(args.prompt, args.max_tokens, args.temperature, seed)

                if args.duration is not None:
                    result = await run_level(send, level, duration=args.duration)
                else:
                    result = await run_level(send, level, requests=count)
                rows.append((t.name, result))
                print(f"  {t.name:<8} concurrency {level:>3}: {result.requests_ok} ok, {result.requests_failed} failed, "
                      f"{result.output_tokens_per_s:.1f} output tokens/s"
                      + (f" (errors: {'; '.join(result.errors)})" if result.errors else ""), flush=True)
    finally:
        for t in targets:
            await t.close()

    print()
    print(table(rows))
    config = {k: getattr(args, k) for k in ("base_url", "model", "compare_base_url", "direct", "concurrency",
                                            "max_tokens", "requests_per_level", "duration", "prompt",
                                            "temperature", "seed", "ignore_eos", "warmup")}
    config["concurrency"] = levels
    report = to_json(config, [t.describe() for t in targets], rows, load_before)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results written to {args.json_out}")
    failed = sum(r.requests_failed for _, r in rows)
    ok = sum(r.requests_ok for _, r in rows)
    return 0 if ok and not failed else 1
