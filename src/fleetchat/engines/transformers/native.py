"""Native CPU kernels (``kernels.c``): built with the system C compiler on first use, loaded with ctypes.

The fast runner's decode step is dominated, in plain torch, by op dispatch (~20 small ops per layer)
and by a batched matmul that is slow for one query against a short cache. ``kernels.c`` does a
layer's work in four calls: RMSNorm, an AMX bf16 matmul with fused epilogues (residual add,
SiLU(gate) * up), and attention with RoPE and the cache write fused in (one row per token, decode
and prompt tokens alike).

Needs x86-64 with AMX (BF16 and INT8) and AVX-512 BF16 (Intel Sapphire Rapids and later), Linux,
and ``cc``.
Anything missing is reported by :func:`load_kernels` as a reason, and the runner then uses its
plain torch path. The library is cached under ``~/.cache/fleetchat/kernels/`` keyed by the source,
the compiler and the CPU, so it is built once per machine (about a second).

``FLEETCHAT_NATIVE=0`` turns the kernels off (for comparisons).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger("fleetchat.engine")

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-march=native", "-mamx-tile", "-mamx-bf16", "-mamx-int8", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]
_CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f", "avx512bw")
ABI_VERSION = 1

EPI_STORE, EPI_ADD, EPI_SILU_MUL, EPI_STORE_F32 = 0, 1, 2, 3


@dataclass(frozen=True)
class Int8Packed:
    """int8 weights ``[N, K]`` in AMX-INT8's layout and their float32 per-output-channel scales."""

    weight: torch.Tensor
    scales: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape


class Kernels:
    """The loaded library with typed entry points taking tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, f = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
        lib.fc_pack.argtypes = [p, i, i, p]
        lib.fc_linear.argtypes = [p, i, i, p, i, p, ctypes.c_int]
        lib.fc_rmsnorm.argtypes = [p, i, i, p, f, p]
        lib.fc_attention.argtypes = [p, i, i, i, i, p, p, p, p, p, p, i, f, p]
        lib.fc_pack_i8.argtypes = [p, i, i, p]
        lib.fc_linear_i8.argtypes = [p, i, i, p, p, i, p, ctypes.c_int]
        lib.fc_set_threads.argtypes = [ctypes.c_int]
        for fn in (lib.fc_pack_i8, lib.fc_linear_i8, lib.fc_set_threads, lib.fc_pack, lib.fc_linear, lib.fc_rmsnorm, lib.fc_attention):
            fn.restype = None
        self.lib = lib

    def set_threads(self, n: int) -> None:
        """Threads of every kernel call (the engine passes torch's intra-op thread count)."""
        self.lib.fc_set_threads(n)

    @staticmethod
    def supports(out_features: int, in_features: int) -> bool:
        return out_features % 32 == 0 and in_features % 32 == 0

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight [N, K]`` (any float dtype) as bf16 in the AMX layout ``fc_linear`` reads."""
        w = weight.detach().to(torch.bfloat16).contiguous()
        out = torch.empty_like(w)
        self.lib.fc_pack(w.data_ptr(), w.shape[0], w.shape[1], out.data_ptr())
        return out

    def pack_int8(self, weight: torch.Tensor) -> Int8Packed:
        """``weight [N, K]`` quantized to int8 per output channel (absmax / 127) in AMX-INT8's layout."""
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        return self.pack_quantized(torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales)

    def pack_quantized(self, qweight: torch.Tensor, scales: torch.Tensor) -> Int8Packed:
        """Already quantized int8 weights ``[N, K]`` and their per-channel scales, packed for AMX-INT8."""
        q = qweight.detach().contiguous()
        out = torch.empty_like(q)
        self.lib.fc_pack_i8(q.data_ptr(), q.shape[0], q.shape[1], out.data_ptr())
        return Int8Packed(out, scales.detach().float().contiguous())

    def linear(
        self, x: torch.Tensor, packed: torch.Tensor | Int8Packed, out: torch.Tensor, epilogue: int = EPI_STORE
    ) -> None:
        """``out (=, +=) x @ W.T`` (or SiLU(gate) * up for EPI_SILU_MUL); x contiguous bf16."""
        if isinstance(packed, Int8Packed):
            self.lib.fc_linear_i8(
                x.data_ptr(), x.shape[0], x.shape[1], packed.weight.data_ptr(), packed.scales.data_ptr(),
                packed.weight.shape[0], out.data_ptr(), epilogue,
            )  # fmt: skip
        else:
            self.lib.fc_linear(
                x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), packed.shape[0], out.data_ptr(), epilogue
            )

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor) -> None:
        self.lib.fc_rmsnorm(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), eps, out.data_ptr())

    def attention(
        self,
        qkv: torch.Tensor,
        heads: tuple[int, int, int],
        slots: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
        out: torch.Tensor,
    ) -> None:
        """Rotate and cache each row's key and value, then attend (row i at ``positions[i]`` of
        ``slots[i]``; prompt chunks are consecutive rows of one slot)."""
        hq, hkv, d = heads
        self.lib.fc_attention(
            qkv.data_ptr(), qkv.shape[0], hq, hkv, d, slots.data_ptr(), positions.data_ptr(), cos.data_ptr(),
            sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[2], scale, out.data_ptr(),
        )  # fmt: skip


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cache_dir() -> Path:
    root = os.environ.get("FLEETCHAT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fleetchat")
    return Path(root) / "kernels"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", str(out), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: concurrent workers never load a half-written file


def load_kernels() -> tuple[Kernels | None, str]:
    """``(kernels, "")`` or ``(None, why not)``; built and loaded once per process."""
    if os.environ.get("FLEETCHAT_NATIVE", "1").lower() in ("0", "false", "no", "off"):
        return None, "turned off by FLEETCHAT_NATIVE=0"
    return _load()


@cache
def _load() -> tuple[Kernels | None, str]:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"needs Linux on x86-64 (this is {platform.system()} {platform.machine()})"
    flags = _cpu_flags()
    missing = [f for f in _CPU_FLAGS if f not in flags]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (cc/gcc) to build the kernels"
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        source + " ".join(_FLAGS).encode() + compiler.encode() + " ".join(sorted(flags)).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"fleetchat-kernels-{key}.so"
    try:
        if not target.exists():
            log.info("building native CPU kernels (first use on this machine) ...")
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, f"could not build the kernels: {exc}"
    if lib.fc_abi_version() != ABI_VERSION:
        return None, "stale kernel library"
    if lib.fc_init() != 0:
        return None, "the kernel refused AMX (arch_prctl ARCH_REQ_XCOMP_PERM failed)"
    return Kernels(lib), ""
