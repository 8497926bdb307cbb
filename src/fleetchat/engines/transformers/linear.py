"""Linear layers of the fast runner: dense weights fused and pre-packed for oneDNN, and a probe of
whether a layer's output for a row depends on how many rows share the call (batch invariance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODE_TILE = 32  # rows per linear-layer call for decode tokens (see LlamaRunner.run)


class DenseLinear(nn.Module):
    """One or more dense linears over the same input, computed as one matmul (outputs side by side).

    On CPU the weight is pre-packed once into oneDNN's blocked layout: ``F.linear`` re-lays the
    weight out on every call, and packing measured 20-30 % faster per call here (32-128 rows, bf16),
    with bit-identical results.
    """

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.weight = torch.cat([p.weight.detach() for p in parts]).contiguous()
        biases = [getattr(p, "bias", None) for p in parts]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    b if b is not None else torch.zeros(p.weight.shape[0])
                    for b, p in zip(biases, parts, strict=True)
                ]
            ).to(self.weight.dtype)
        self.packed = pack_weight(self.weight, self.bias)
        if self.packed is not None:
            self.weight = None  # the packed copy is all forward needs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def pack_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The oneDNN-packed weight, or None where that is unavailable or disagrees with F.linear."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, DECODE_TILE)
        probe = torch.randn(3, weight.shape[1], dtype=weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
        want = F.linear(probe, weight, bias)
        if not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2):
            return None
    except (RuntimeError, AttributeError):
        return None
    return packed


def rows_independent(linear: nn.Module) -> bool:
    """Whether ``linear`` gives a row the same bits in any call of 1 .. ``DECODE_TILE`` rows.

    Measured, not assumed: kernels pick code paths by row count, and that differs between CPUs
    and between packed oneDNN, int8 and plain ``F.linear``. Only packed dense layers are probed.
    """
    if not isinstance(linear, DenseLinear) or linear.packed is None:
        return False
    gen = torch.Generator().manual_seed(0)
    n, k = linear.packed.shape
    x = torch.randn(DECODE_TILE + 8, k, generator=gen).to(linear.packed.dtype)
    full = linear(x[:DECODE_TILE])
    for start, rows in ((0, 1), (0, 3), (0, 17), (5, 1), (8, DECODE_TILE)):  # sizes and offsets
        got = linear(x[start : start + rows])
        want = full[start : start + rows] if start + rows <= DECODE_TILE else None
        if want is None:  # the shifted full tile: compare the overlap
            want, got = full[start:], got[: DECODE_TILE - start]
        if not torch.equal(got, want):
            return False
    return True


def fuse_linears(parts: list[nn.Module]) -> nn.Module:
    from fleetchat.engines.transformers.quantization import Int8Linear

    if all(isinstance(p, Int8Linear) for p in parts):
        return parts[0] if len(parts) == 1 else Int8Linear.cat(parts)
    if all(isinstance(p, nn.Linear) for p in parts):
        return DenseLinear(parts)
    raise TypeError("cannot fuse mixed linear kinds")
