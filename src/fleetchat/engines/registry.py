"""Engines as records in a lazy registry: heavy imports happen only when an engine is chosen."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fleetchat.engines.base import EmbeddingEngine, Engine, EngineSettings
from fleetchat.errors import ModelLoadError


@dataclass(frozen=True)
class EngineEntry:
    name: str
    target: str  # "module:callable"; the callable takes EngineSettings and returns an engine
    description: str


ENGINES: dict[str, EngineEntry] = {
    e.name: e
    for e in (
        EngineEntry(
            "transformers",
            "fleetchat.engines.transformers:load_transformers_engine",
            "Hugging Face transformers with continuous batching (CPU, CUDA, MPS)",
        ),
        EngineEntry(
            "embeddings",
            "fleetchat.engines.embeddings:load_embedding_engine",
            "sentence embeddings with a transformers encoder (mean pooling)",
        ),
        EngineEntry("llamacpp", "fleetchat.engines.llamacpp:load_llamacpp_engine", "llama.cpp via llama-cpp-python"),
        EngineEntry("vllm", "fleetchat.engines.vllm:load_vllm_engine", "vLLM's AsyncLLMEngine"),
        EngineEntry("fake", "fleetchat.engines.fake:load_fake_engine", "scripted engine for protocol tests"),
    )
}


def choose_engine(settings: EngineSettings) -> str:
    """``auto``: the embedding engine for embedding models, else transformers."""
    if settings.engine != "auto":
        return settings.engine
    from fleetchat.engines.resolve import is_embedding_model

    return "embeddings" if is_embedding_model(settings.model_path) else "transformers"


def load_engine(settings: EngineSettings) -> Engine | EmbeddingEngine:
    """Import the chosen engine's module and build it. Errors are ModelLoadError with one clear line."""
    name = choose_engine(settings)
    entry = ENGINES.get(name)
    if entry is None:
        raise ModelLoadError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"engine {name!r} is not available: {exc}") from exc
    return getattr(module, attr)(settings)
