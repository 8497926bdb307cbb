"""The native CPU kernels (kernels.c) against plain torch: linear and its epilogues, RMSNorm, attention.

Skipped where the CPU lacks AMX / AVX-512 BF16 or there is no C compiler (the runner then uses torch).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fleetchat.engines.transformers.native import EPI_ADD, EPI_SILU_MUL, EPI_STORE_F32, load_kernels

KERNELS, WHY = load_kernels()
pytestmark = pytest.mark.skipif(KERNELS is None, reason=f"native kernels unavailable: {WHY}")


@pytest.fixture(scope="module")
def k():
    return KERNELS


def bf16(*shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(torch.bfloat16)


@pytest.mark.parametrize("rows", [1, 7, 16, 33, 100])
def test_linear_matches_a_float32_matmul(k, rows: int) -> None:
    w, x = bf16(96, 160, scale=0.05), bf16(rows, 160, seed=1)
    y = torch.empty(rows, 96, dtype=torch.bfloat16)
    k.linear(x, k.pack(w), y)
    want = F.linear(x.float(), w.float())
    assert (y.float() - want).abs().max() <= 0.01 * want.abs().max()


def test_linear_rows_do_not_depend_on_the_rest_of_the_call(k) -> None:
    """A row's bits are the same alone, at any offset and in calls of any size (batch invariance)."""
    packed, x = k.pack(bf16(64, 96, scale=0.1)), bf16(80, 96, seed=2)
    full = torch.empty(80, 64, dtype=torch.bfloat16)
    k.linear(x, packed, full)
    for start, n in ((0, 1), (5, 1), (3, 17), (31, 2), (40, 40)):
        part = torch.empty(n, 64, dtype=torch.bfloat16)
        k.linear(x[start : start + n].contiguous(), packed, part)
        assert torch.equal(part, full[start : start + n]), (start, n)


@pytest.mark.parametrize("rows", [1, 5, 16, 40])
def test_int8_linear_matches_its_dequantized_weights(k, rows: int) -> None:
    """int8 weights x 16-bit activations: within bf16 rounding of x @ dequantized(W).T."""
    w, x = torch.randn(64, 192) * 0.05, bf16(rows, 192, seed=10)
    packed = k.pack_int8(w)
    y = torch.empty(rows, 64)
    k.linear(x, packed, y, EPI_STORE_F32)
    scales = w.abs().amax(1) / 127
    dequantized = torch.round(w / scales[:, None]).clamp(-127, 127) * scales[:, None]
    want = F.linear(x.float(), dequantized)
    assert (y - want).abs().max() <= 2e-4 * want.abs().max() + 1e-4
    # integer sums: a row's result is the same bits alone as in the full call
    one = torch.empty(1, 64)
    k.linear(x[rows - 1 :].contiguous(), packed, one, EPI_STORE_F32)
    assert torch.equal(one, y[rows - 1 :])


def test_epilogues_add_store_float32_and_silu_mul(k) -> None:
    w, x = bf16(64, 96, scale=0.1), bf16(5, 96, seed=3)
    packed = k.pack(w)
    y = torch.empty(5, 64, dtype=torch.bfloat16)
    k.linear(x, packed, y)
    logits = torch.empty(5, 64)
    k.linear(x, packed, logits, EPI_STORE_F32)
    assert torch.equal(logits.to(torch.bfloat16), y)  # the same sums, rounded once for bf16
    residual = torch.randn(5, 64)
    summed = residual.clone()
    k.linear(x, packed, summed, EPI_ADD)
    assert torch.allclose(summed, residual + logits)
    gate, up = bf16(32, 96, scale=0.1, seed=4), bf16(32, 96, scale=0.1, seed=5)
    interleaved = torch.stack((gate.view(-1, 16, 96), up.view(-1, 16, 96)), 1).reshape(64, 96)
    act = torch.empty(5, 32, dtype=torch.bfloat16)
    k.linear(x, k.pack(interleaved), act, EPI_SILU_MUL)
    want = F.silu(F.linear(x, gate)) * F.linear(x, up)
    assert (act.float() - want.float()).abs().max() <= 0.02 * want.float().abs().max()


def test_rmsnorm_matches_torch(k) -> None:
    x, weight = torch.randn(9, 64) * 3, bf16(64, seed=6)
    out = torch.empty(9, 64, dtype=torch.bfloat16)
    k.rmsnorm(x, weight, 1e-5, out)
    want = F.rms_norm(x, (64,), eps=1e-5) * weight.float()
    assert (out.float() - want).abs().max() <= 0.01 * want.abs().max()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def test_attention_matches_causal_softmax_attention(k) -> None:
    """Three prompt tokens of one slot and one decode token of another, in one call."""
    hq, hkv, d, cap = 6, 2, 64, 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(cap).float(), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    folded_sin = torch.cat((-sin[:, : d // 2], sin[:, d // 2 :]), -1).contiguous()
    k_cache, v_cache = bf16(3, hkv, cap, d, seed=7), bf16(3, hkv, cap, d, seed=8)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    qkv = bf16(4, (hq + 2 * hkv) * d, seed=9)
    slots, positions = torch.tensor([0, 0, 0, 2]), torch.tensor([10, 11, 12, 30])
    out = torch.empty(4, hq * d, dtype=torch.bfloat16)
    k.attention(qkv, (hq, hkv, d), slots, positions, cos, folded_sin, k_cache, v_cache, d**-0.5, out)

    want_k, want_v = before_k.clone(), before_v.clone()
    for i in range(4):  # the cache gets every row's rotated key and value
        s, p = int(slots[i]), int(positions[i])
        keys = qkv[i, hq * d : (hq + hkv) * d].view(hkv, d).float()
        want_k[s, :, p] = rotate(keys, cos[p], sin[p]).to(torch.bfloat16)
        want_v[s, :, p] = qkv[i, (hq + hkv) * d :].view(hkv, d)
    assert (k_cache.float() - want_k.float()).abs().max() <= 0.02
    assert torch.equal(v_cache, want_v)
    for i in range(4):
        s, p = int(slots[i]), int(positions[i])
        q = rotate(qkv[i, : hq * d].view(hq, d).float(), cos[p], sin[p]).to(torch.bfloat16).float()
        keys = k_cache[s, :, : p + 1].float().repeat_interleave(hq // hkv, 0)
        values = v_cache[s, :, : p + 1].float().repeat_interleave(hq // hkv, 0)
        probs = torch.softmax(q[:, None] @ keys.transpose(1, 2) * d**-0.5, -1)
        want = (probs @ values)[:, 0]
        assert (out[i].view(hq, d).float() - want).abs().max() <= 0.02, i
    # row 1 (position 11) saw row 0's key (position 10) written in the same call: causal, in-chunk
    alone = torch.empty(1, hq * d, dtype=torch.bfloat16)
    k.attention(
        qkv[1:2].contiguous(), (hq, hkv, d), slots[1:2], positions[1:2], cos, folded_sin,
        k_cache, v_cache, d**-0.5, alone,
    )  # fmt: skip
    assert torch.equal(alone, out[1:2])


def test_kernels_are_built_once_and_cached(tmp_path, monkeypatch) -> None:
    """A fresh cache folder gets the library built; a missing compiler is a reason, not a crash."""
    from fleetchat.engines.transformers import native

    monkeypatch.setenv("FLEETCHAT_CACHE", str(tmp_path))
    native._load.cache_clear()
    try:
        kernels, why = native.load_kernels()
        assert kernels is not None, why
        assert len(list((tmp_path / "kernels").glob("fleetchat-kernels-*.so"))) == 1
        native._load.cache_clear()
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("FLEETCHAT_CACHE", str(tmp_path / "other"))
        kernels, why = native.load_kernels()
        assert kernels is None and "could not build" in why
    finally:
        native._load.cache_clear()
