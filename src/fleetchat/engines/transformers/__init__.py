"""The default engine: Hugging Face transformers models with continuous batching.

    loader.py        resolve + load (GGUF dequantized once into a cached HF folder), dtype/device/int8
    quantization.py  int8 weight-only linear layers for --load-8bit
    sequence.py      one request's state
    scheduler.py     the pure batch policy (admit, decode, chunked prefill)
    kv_cache.py      preallocated per-slot KV cache, compact slots
    runner.py        one step's forward: native Llama path, torch Llama path, generic HF fallback
    native.py        builds (cc, first use) and loads kernels.c: AMX matmuls, RMSNorm, attention
    linear.py        the torch Llama path's fused, oneDNN-packed linear layers
    sampler.py       batched sampling with per-request params and seeds
    engine.py        the engine thread and the async Engine interface
    benchmark.py     in-process throughput / latency benchmark

Importing this package is cheap; torch and transformers load when an engine is built.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

# OpenMP threads that spin at barriers collapse when the cores are shared (with the API server, the
# worker's event loop, other processes): a decode step measured 0.9 s instead of 0.07 s on this
# 2-core machine under load. Passive waiting costs little when the machine is quiet. OpenMP reads
# this once, when torch is first imported, so it only helps when set before that (the CLI imports
# this package before torch; a user's own setting wins).
if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from fleetchat.engines.base import EngineSettings

if TYPE_CHECKING:
    from fleetchat.engines.transformers.engine import TransformersEngine


def load_transformers_engine(settings: EngineSettings) -> TransformersEngine:
    """Load the model named by ``settings`` and start its engine thread (blocking; seconds)."""
    from fleetchat.engines.transformers.engine import TransformersEngine
    from fleetchat.engines.transformers.loader import load_model

    return TransformersEngine(load_model(settings), settings)


__all__ = ["load_transformers_engine"]
