"""Load a tokenizer and a causal LM with transformers, on the device and in the dtype asked for.

GGUF files are dequantized once into a plain Hugging Face folder (safetensors + config + tokenizer
files) under ``~/.cache/fleetchat/models/<name>-<hash>/`` (``FLEETCHAT_CACHE_DIR`` overrides the
root), so the next load takes seconds instead of ~15 s, the model runs on dense bf16 matmuls rather
than transformers' packed-GGUF float32 kernels, and a FastChat ``model_worker`` can load that folder
too (``AutoModelForCausalLM.from_pretrained(folder)``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fleetchat.engines.base import EngineSettings
from fleetchat.engines.resolve import ResolvedModel, resolve_model
from fleetchat.errors import ModelLoadError

log = logging.getLogger("fleetchat.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE_FORMAT = "v1"  # bump when the cached folder's layout changes


@dataclass
class LoadedModel:
    """What the engine needs from loading: the model and tokenizer plus facts for ModelInfo."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    resolved: ResolvedModel
    device: torch.device
    dtype: torch.dtype
    quantization: str | None
    context_length: int
    sharded: bool  # spread over several GPUs by accelerate
    folder: Path  # a plain HF folder holding this model (the dense cache for GGUF files)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with avx512_bf16 or AMX (bf16 matmuls ~3x fp32 there)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(settings: EngineSettings) -> torch.dtype:
    """``auto``: bf16 on a CPU with avx512_bf16/AMX, fp16 on CUDA/MPS, else fp32."""
    if settings.dtype != "auto":
        return _DTYPES[settings.dtype]
    if settings.device in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cache_root() -> Path:
    root = os.environ.get("FLEETCHAT_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fleetchat" / "models"


def dense_cache_folder(resolved: ResolvedModel, dtype: torch.dtype) -> Path:
    """Where the dense copy of a GGUF file lives; the hash changes when the file does."""
    gguf = resolved.directory / (resolved.gguf_file or "")
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}|{_CACHE_FORMAT}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_root() / f"{resolved.name}-{str(dtype).removeprefix('torch.')}-{digest}"


def _check_devices(settings: EngineSettings) -> torch.device:
    if settings.device == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("--device cuda: CUDA is not available (no GPU or a CPU-only torch build)")
        if settings.num_gpus > torch.cuda.device_count():
            raise ModelLoadError(
                f"--num-gpus {settings.num_gpus}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda:0")
    if settings.device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("--device mps: the MPS backend is not available on this machine")
        return torch.device("mps")
    if settings.num_gpus > 1 or settings.max_gpu_memory:
        raise ModelLoadError("--num-gpus / --max-gpu-memory need --device cuda")
    return torch.device("cpu")


def _convert_gguf(resolved: ResolvedModel, dtype: torch.dtype, folder: Path, progress: Any) -> None:
    """Dequantize a GGUF file into a dense Hugging Face folder (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    progress.set_postfix_str("dequantizing GGUF (first load only)")
    src = str(resolved.directory)
    model = AutoModelForCausalLM.from_pretrained(
        src,
        gguf_file=resolved.gguf_file,
        dtype=dtype,
        # dequantize=True: plain nn.Linear weights instead of GGUF blocks with float32 kernels
        quantization_config=GgufConfig(gguf_file=resolved.gguf_file, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=resolved.gguf_file)
    progress.update(1)
    progress.set_postfix_str(f"writing {folder}")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _context_length(config: Any, settings: EngineSettings) -> int:
    if settings.context_length:
        return settings.context_length
    for attr in (
        "max_position_embeddings",
        "n_positions",
        "max_seq_len",
        "seq_length",
        "max_sequence_length",
    ):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_model(settings: EngineSettings) -> LoadedModel:
    """Resolve ``settings.model_path`` and load it. Failures are one-line ModelLoadError messages."""
    from tqdm.auto import tqdm

    resolved = resolve_model(settings.model_path, settings.revision)
    if resolved.kind != "chat":
        raise ModelLoadError(f"{settings.model_path} is an embedding model; use --engine embeddings")
    device = _check_devices(settings)
    dtype = resolve_dtype(settings)
    started = time.perf_counter()
    with tqdm(
        total=3, desc=f"loading {resolved.name}", unit="step", file=sys.stderr, leave=False
    ) as progress:
        folder = resolved.directory
        if resolved.gguf_file:
            folder = dense_cache_folder(resolved, dtype)
            if not (folder / "config.json").is_file():
                try:
                    folder.parent.mkdir(parents=True, exist_ok=True)
                    _convert_gguf(resolved, dtype, folder, progress)
                except ModelLoadError:
                    raise
                except Exception as exc:
                    raise ModelLoadError(
                        f"cannot convert {resolved.gguf_file}: {type(exc).__name__}: {exc}"
                    ) from exc
        progress.update(1 if progress.n == 0 else 0)
        progress.set_postfix_str("loading weights")
        model, tokenizer = _load_folder(folder, settings, dtype, device)
        progress.update(1)
        quantization = None
        if settings.load_8bit:
            from fleetchat.engines.transformers.quantization import quantize_linears

            progress.set_postfix_str("quantizing to int8")
            quantize_linears(model, dtype)
            quantization = "int8"
        progress.update(1)
    sharded = bool(getattr(model, "hf_device_map", None)) and len(set(model.hf_device_map.values())) > 1
    log.info(
        "loaded %s from %s in %.1fs (%s, %s)",
        resolved.name,
        folder,
        time.perf_counter() - started,
        device,
        dtype,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        device=device,
        dtype=dtype,
        quantization=quantization,
        context_length=_context_length(model.config, settings),
        sharded=sharded,
        folder=folder,
    )


def _load_folder(
    folder: Path, settings: EngineSettings, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": settings.trust_remote_code}
    if device.type == "cuda" and settings.num_gpus > 1:
        kwargs["device_map"] = "auto"
        if settings.max_gpu_memory:
            kwargs["max_memory"] = {i: settings.max_gpu_memory for i in range(settings.num_gpus)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=settings.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"cannot load {folder}: {type(exc).__name__}: {first[:300]}") from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
