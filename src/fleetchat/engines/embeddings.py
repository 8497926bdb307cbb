"""Sentence embeddings with a transformers encoder: pooling (mean by default) + L2 normalisation.

Made for sentence-transformers folders such as the embedded all-MiniLM-L6-v2
(``--model-path all-minilm-l6-v2``): the pooling mode comes from ``1_Pooling/config.json``, the
maximum sequence length from ``sentence_bert_config.json``, normalisation from ``modules.json``
(plain encoder folders get mean pooling, normalised).

Model work runs in one dedicated thread, so the event loop never blocks. Concurrent ``embed`` calls
are queued and coalesced: one loop task takes every waiting text (up to ``max_batch``) into one
forward pass, then hands each caller its rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetchat.engines.base import EngineHealth, EngineSettings
from fleetchat.errors import EngineError, InvalidParameterError, ModelLoadError
from fleetchat.protocol.generation import EmbeddingResult, ModelInfo

log = logging.getLogger("fleetchat.engines.embeddings")


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[EmbeddingResult]
    results: list[list[float]] = field(default_factory=list)
    tokens: int = 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class TransformersEmbeddingEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: ModelInfo,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 256,
        max_batch: int = 32,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetchat-embed")
        self._queue: asyncio.Queue[_Job] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.running = 0  # texts in the forward pass now
        self.waiting = 0  # texts queued

    # -- interface

    def health(self) -> EngineHealth:
        return EngineHealth(ok=self._executor is not None, running=self.running, waiting=self.waiting)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts:
            raise InvalidParameterError("input must hold at least one text", param="input")
        if any(not isinstance(t, str) for t in texts):
            raise InvalidParameterError("input must be a list of strings", param="input")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop_task is None or self._loop_task.done():
            self._queue = asyncio.Queue()
            self._loop_task = loop.create_task(self._batch_loop(), name="fleetchat-embed-batcher")
        job = _Job(list(texts), loop.create_future())
        self.waiting += len(texts)
        await self._queue.put(job)
        return await job.future

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- batching

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            jobs = [first]
            size = len(first.texts)
            while size < self.max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if size + len(nxt.texts) > self.max_batch:
                    carry = nxt
                    break
                jobs.append(nxt)
                size += len(nxt.texts)
            jobs = [j for j in jobs if not j.future.cancelled()] or jobs[:0]
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            self.waiting -= len(texts)
            self.running += len(texts)
            try:
                # A single job bigger than max_batch is split into several forward passes.
                vectors: list[list[float]] = []
                tokens = 0
                for start in range(0, len(texts), self.max_batch):
                    v, n = await loop.run_in_executor(self._executor, self._forward, texts[start : start + self.max_batch])
                    vectors.extend(v)
                    tokens += n
                # Token counts per job: recount cheaply from the tokenizer lengths.
                offset = 0
                for job in jobs:
                    rows = vectors[offset : offset + len(job.texts)]
                    offset += len(job.texts)
                    if not job.future.done():
                        job_tokens = tokens if len(jobs) == 1 else sum(
                            min(self.count_tokens(t), self.max_seq_length) for t in job.texts
                        )
                        job.future.set_result(EmbeddingResult(embeddings=rows, prompt_tokens=job_tokens))
            except Exception as exc:
                err = exc if isinstance(exc, (EngineError, InvalidParameterError)) else EngineError(
                    f"embedding failed: {type(exc).__name__}: {exc}"
                )
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                self.running -= len(texts)

    def _forward(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Runs in the engine thread: tokenize, encode, pool, normalise."""
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
        )
        with torch.inference_mode():
            out = self.model(**batch)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().tolist(), int(batch["attention_mask"].sum().item())


def load_embedding_engine(settings: EngineSettings) -> TransformersEmbeddingEngine:
    """Load an encoder folder (or the embedded all-MiniLM-L6-v2) as an embedding engine."""
    from fleetchat.engines.resolve import resolve_model

    resolved = resolve_model(settings.model_path, settings.revision)
    directory = resolved.directory
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            settings.dtype
        ]
        model = AutoModel.from_pretrained(str(directory), dtype=dtype, trust_remote_code=settings.trust_remote_code)
        model.to(settings.device).eval()
    except Exception as exc:
        raise ModelLoadError(f"cannot load embedding model from {directory}: {type(exc).__name__}: {exc}") from exc

    pooling_cfg = _read_json(directory / "1_Pooling" / "config.json") or {}
    pooling = "cls" if pooling_cfg.get("pooling_mode_cls_token") else "max" if pooling_cfg.get("pooling_mode_max_tokens") else "mean"
    modules = _read_json(directory / "modules.json")
    normalize = True if not isinstance(modules, list) else any("Normalize" in str(m.get("type", "")) for m in modules)
    st_cfg = _read_json(directory / "sentence_bert_config.json") or {}
    max_pos = int(getattr(model.config, "max_position_embeddings", 512))
    max_seq = int(st_cfg.get("max_seq_length") or min(getattr(tokenizer, "model_max_length", max_pos), max_pos))
    if settings.context_length:
        max_seq = min(settings.context_length, max_pos)
    info = ModelInfo(
        name=settings.served_names()[0],
        kind="embedding",
        engine="embeddings",
        model_path=str(directory),
        context_length=max_seq,
        device=settings.device,
        dtype=str(dtype).replace("torch.", ""),
        max_running=settings.max_running,
    )
    log.info("loaded embedding model %s (%s pooling, max %d tokens)", info.name, pooling, max_seq)
    return TransformersEmbeddingEngine(model, tokenizer, info, pooling=pooling, normalize=normalize, max_seq_length=max_seq)
