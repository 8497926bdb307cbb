"""Model runners: turn one scheduled step into next-token logits.

A step is a flat list of tokens: one per decoding sequence plus a prompt chunk per prefilling
sequence. ``run(decode, prefill)`` returns float32 logits, one row per decoding sequence and one per
prefill chunk that reaches the end of its prompt, in that order.

Three implementations:

* :class:`NativeLlamaRunner` — the default on CPUs with AMX-BF16 (Intel Sapphire Rapids and later):
  the same Llama-shaped models on our own kernels (``kernels.c``, see ``native.py``), four calls per
  layer, every token of a step one row. About 2x the torch path at one stream and 3x at 32 here.
* :class:`LlamaRunner` — our own forward for Llama-shaped models (Llama, Mistral without sliding
  window, Qwen2: RMSNorm, RoPE, GQA, SwiGLU), reading the Hugging Face modules' weights. All tokens
  of a step go through each linear layer together (q/k/v and gate/up fused into one matmul each),
  keys/values are written into the preallocated :class:`SlotKVCache`, and decode attention is two
  batched matmuls over the compact slots with a length mask (``scaled_dot_product_attention`` is
  very slow on this CPU for one query against a short cache); prompt chunks use the same
  arithmetic with a causal mask. The step is batch-invariant (see ``LlamaRunner.run``).
* :class:`HFRunner` — any other architecture (or a model sharded over GPUs): the generic Hugging
  Face forward, one sequence at a time with its own ``DynamicCache``. Correct, not fast.

``make_runner`` picks one and says which in ``runner.path`` (logged; ``FLEETCHAT_NATIVE=0`` skips the
native kernels).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fleetchat.engines.transformers.kv_cache import SlotKVCache
from fleetchat.engines.transformers.linear import DECODE_TILE, fuse_linears, rows_independent

log = logging.getLogger("fleetchat.engine")

DecodeItem = tuple[int, int, int]  # (slot, token id, position)
PrefillItem = tuple[int, list[int], int, bool]  # (slot, token ids, start position, wants logits)

_FAST_TYPES = ("llama", "mistral", "qwen2")
_BLOCK = 64  # attention sums values per block of this many positions (see LlamaRunner._attend)
_PREFILL_TILE = 128  # rows per linear-layer call for prompt tokens


def _round_up(n: int, multiple: int = _BLOCK) -> int:
    return -(-n // multiple) * multiple


def _logit_rows(n_dec: int, prefill_start: int, prefill: list[PrefillItem]) -> list[int]:
    """Rows of a step that need logits: every decode row, then the last row of each prompt chunk
    that reaches the end of its prompt (prompt rows start at ``prefill_start``)."""
    rows = list(range(n_dec))
    offset = prefill_start
    for _, ids, _, wants in prefill:
        offset += len(ids)
        if wants:
            rows.append(offset - 1)
    return rows


def fast_path_reason(model: Any) -> str | None:
    """None when :class:`LlamaRunner` can run ``model``, else why not."""
    config = model.config
    if config.model_type not in _FAST_TYPES:
        return f"architecture {config.model_type!r} has no fast path"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act}"
    layer = model.model.layers[0]
    if hasattr(layer.self_attn, "q_norm") or not hasattr(layer.mlp, "gate_proj"):
        return "unexpected layer structure"
    if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
        return "model sharded over several devices"
    return None


class LlamaRunner:
    path = "fast-llama"

    def __init__(self, model: Any, *, max_running: int, context_length: int) -> None:
        self._init_common(model, max_running=max_running, context_length=context_length)
        self.lm_head = fuse_linears([model.lm_head]) if isinstance(model.lm_head, nn.Linear) else model.lm_head
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]),
                    fuse_linears([attn.o_proj]),
                    layer.post_attention_layernorm.weight,
                    fuse_linears([mlp.gate_proj, mlp.up_proj]),
                    fuse_linears([mlp.down_proj]),
                )
            )
        # decode rows go unpadded where every linear gives a row the same result in any call of up
        # to DECODE_TILE rows (oneDNN's packed bf16 kernels on this CPU); one layer shows the kinds
        first = self.layers[0]
        self.unpadded_decode = all(rows_independent(m) for m in (self.lm_head, *first[1:3], *first[4:]))

    def _init_common(self, model: Any, *, max_running: int, context_length: int) -> None:
        """Shapes, embeddings, rotary tables and the KV cache: what every Llama runner needs."""
        cfg = model.config
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype if model.lm_head.weight.is_floating_point() else torch.float32
        self.hq = cfg.num_attention_heads
        self.hkv = getattr(cfg, "num_key_value_heads", None) or self.hq
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.group = self.hq // self.hkv
        self.scale = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.embed = model.model.embed_tokens
        self.final_norm = model.model.norm.weight
        self.intermediate = model.model.layers[0].mlp.gate_proj.out_features
        # cos/sin tables for every position, computed by the model's own rotary module (any rope type)
        positions = torch.arange(context_length, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = model.model.rotary_emb(probe, positions)
        half = self.head_dim // 2
        sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        self.cos, self.sin = cos[0].to(self.dtype), sin.to(self.dtype)
        self.cache = SlotKVCache(
            layers=len(model.model.layers),
            slots=max_running,
            kv_heads=self.hkv,
            head_dim=self.head_dim,
            max_len=context_length,
            dtype=self.dtype,
            device=self.device,
        )

    # slots -----------------------------------------------------------------------------------------
    def allocate(self) -> int:
        return self.cache.allocate()

    def release(self, slot: int, length_of_last: int) -> int | None:
        return self.cache.release(slot, length_of_last)

    # forward ---------------------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # fused kernel: accumulates in float32 and rounds once, as Hugging Face's LlamaRMSNorm does
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * weight

    def _rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows ``[rows, hq + hkv, d]`` for rotating q and k heads together, once per step.

        The attention scale is folded into the query heads' rows, saving a pass over the scores
        in every layer; for a power-of-two scale (head_dim 64, 256, ...) that is bit-exact.
        """
        out = []
        for table in (self.cos, self.sin):
            rows = table[positions][:, None, :]
            out.append(
                torch.cat((rows.mul(self.scale).expand(-1, self.hq, -1), rows.expand(-1, self.hkv, -1)), 1)
            )
        return out[0], out[1]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]; the sign is folded into the table
        return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of ``q [b, hkv, rows, d]`` over ``k, v [b, hkv, span, d]`` with an additive mask.

        Written so that a row's result does not depend on the span or on which other rows or
        sequences share the step: masked keys weigh exactly zero, and the weighted sum of values
        is taken per fixed block of positions (whose bounds do not move) and then added up in
        block order. That makes a greedy request's output identical alone and inside any batch,
        and chunked prefill identical to whole prefill.
        """
        b, h, rows, d = q.shape
        scores = torch.matmul(q, k.transpose(-1, -2)).add_(mask)  # q carries the 1/sqrt(d) scale
        probs = torch.softmax(scores, dim=-1)  # bf16 in and out, float32 inside (exact zeros where masked)
        blocks = k.shape[2] // _BLOCK
        probs = probs.view(b, h, rows, blocks, _BLOCK).transpose(2, 3)
        parts = torch.matmul(probs, v.reshape(b, h, blocks, _BLOCK, d))  # [b, h, blocks, rows, d]
        return parts.sum(dim=2)  # accumulates in float32, in block order

    def _span(self, length: int) -> int:
        """How many cache positions attention reads for sequences up to ``length`` long.

        A slice shorter than the cache's capacity is not contiguous, and the CPU batched matmul then
        copies it first (measured: a third of the attention time). Reading the whole capacity
        instead is cheaper as long as it is at most twice the length; the extra positions are
        masked to exact zeros, so the result is the same.
        """
        span = _round_up(length)
        return self.cache.capacity if self.cache.capacity <= 2 * span else span

    def _tiled(self, fn: Any, x: torch.Tensor, segments: list[tuple[int, int, int]]) -> torch.Tensor:
        """``fn(x)`` computed tile by tile (see the note on batch invariance in :meth:`run`)."""
        outs = [
            fn(x[i : min(i + tile, end)]) for start, end, tile in segments for i in range(start, end, tile)
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _decode_attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Decode attention: ``q [b, hkv, group, d]`` over ``k, v [b, hkv, span, d]``, one plain matmul each.

        A row's result does not depend on the span nor on the batch: masked keys weigh exactly zero,
        and the CPU batched matmul for these shapes (a few query rows per sequence) was measured to
        give bit-identical rows for any span (64 .. 8192 positions, zero-weighted tails) and any
        batch size, so the per-block sum of :meth:`_attend` is not needed here (it cost twice the
        time of one matmul at 300 positions).
        """
        scores = torch.matmul(q, k.transpose(-1, -2)).add_(mask)  # q carries the 1/sqrt(d) scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    @torch.inference_mode()
    def run(self, decode: list[DecodeItem], prefill: list[PrefillItem]) -> torch.Tensor:
        """One step. Rows are laid out ``[decode rows | pad | prefill rows | pad]``.

        Batch invariance: a CPU bf16 matmul's result for a row can depend on how many rows the call
        has and where the row sits in it (tail rows take other kernels). So every linear layer runs
        on fixed-size tiles — decode rows in tiles of ``DECODE_TILE``, prompt rows in tiles of
        ``_PREFILL_TILE`` — where a row's result was measured not to depend on its position.
        oneDNN's packed bf16 linear gives a row the same result in any call of 1 .. 32 rows, so
        with packed weights decode rows are not padded (one stream pays for one row, not 32);
        other kernels (int8, unpacked) get zero rows padding the last tile. Together with
        :meth:`_attend` and :meth:`_decode_attend` this makes a request's logits bit-identical
        whatever else shares the step, so greedy output alone == inside a batch.
        """
        dev = self.device
        n_dec = len(decode)
        n_pre = sum(len(ids) for _, ids, _, _ in prefill)
        d_pad = n_dec if self.unpadded_decode else _round_up(n_dec, DECODE_TILE)
        p_pad = _round_up(n_pre, _PREFILL_TILE)
        total = d_pad + p_pad
        segments = [(0, d_pad, DECODE_TILE), (d_pad, total, _PREFILL_TILE)]
        tokens = [t for _, t, _ in decode] + [0] * (d_pad - n_dec)
        positions = [p for _, _, p in decode] + [0] * (d_pad - n_dec)
        for _, ids, start, _ in prefill:
            tokens.extend(ids)
            positions.extend(range(start, start + len(ids)))
        tokens += [0] * (p_pad - n_pre)
        positions += [0] * (p_pad - n_pre)
        self.cache.ensure_capacity(max(positions) + 1)
        pos_t = torch.tensor(positions, device=dev)
        cos, sin = self._rope_tables(pos_t)
        x = self.embed(torch.tensor(tokens, device=dev))

        hq, hkv, group, hd = self.hq, self.hkv, self.group, self.head_dim
        if n_dec:
            hi = self.cache.used
            dec_slots = torch.tensor([s for s, _, _ in decode], device=dev)
            dec_pos = pos_t[:n_dec]
            # row of (slot, kv head, position) in a layer's cache viewed as [slots * hkv * capacity, d]
            cap = self.cache.capacity
            dec_rows = (
                (dec_slots[:, None] * hkv + torch.arange(hkv, device=dev)) * cap + dec_pos[:, None]
            ).view(-1)
            compact = n_dec == hi and all(s == i for i, (s, _, _) in enumerate(decode))
            lengths = torch.ones(hi, dtype=torch.long, device=dev)
            lengths[dec_slots] = dec_pos + 1
            dec_span = self._span(int(max(p for _, _, p in decode)) + 1)
            dec_mask = torch.zeros(hi, 1, 1, dec_span, dtype=self.dtype, device=dev)
            dec_mask.masked_fill_(
                torch.arange(dec_span, device=dev) >= lengths[:, None, None, None], float("-inf")
            )
            # rows of slots that do not decode this step (prefilling) are computed and thrown away
            qd = None if compact else torch.zeros(hi, hq, hd, dtype=x.dtype, device=dev)
        pre_masks = []
        for _, ids, start, _ in prefill:
            end = start + len(ids)
            span = self._span(end)
            allowed = torch.arange(span, device=dev)[None, :] <= torch.arange(start, end, device=dev)[:, None]
            mask = torch.zeros(len(ids), span, dtype=self.dtype, device=dev).masked_fill_(
                ~allowed, float("-inf")
            )
            pre_masks.append(mask.repeat(self.group, 1)[None, None])  # rows ordered (group, position)

        kv_dim = hkv * hd
        q_dim = hq * hd
        # a decode-only step whose slots are compact writes attention straight into o_proj's input
        direct = n_dec and compact and not prefill and d_pad == n_dec
        if not direct:  # pad rows stay zero; real rows rewritten each layer
            out = torch.zeros(total, hq, hd, dtype=x.dtype, device=dev)
        for li, (w_in, qkv_proj, o_proj, w_post, gate_up, down) in enumerate(self.layers):
            kc, vc = self.cache.k[li], self.cache.v[li]
            qkv = self._tiled(qkv_proj, self._norm(x, w_in), segments)
            qk = self._rope(qkv[:, : q_dim + kv_dim].view(total, hq + hkv, hd), cos, sin)  # q and k at once
            q, k = qk[:, :hq], qk[:, hq:]
            v = qkv[:, q_dim + kv_dim :].view(total, hkv, hd)
            if n_dec:
                kc.view(-1, hd).index_copy_(0, dec_rows, k[:n_dec].reshape(-1, hd))
                vc.view(-1, hd).index_copy_(0, dec_rows, v[:n_dec].reshape(-1, hd))
                if compact:
                    qd_l = q[:n_dec]
                else:
                    qd_l = qd
                    qd_l[dec_slots] = q[:n_dec]
                od = self._decode_attend(
                    qd_l.reshape(hi, hkv, group, hd), kc[:hi, :, :dec_span], vc[:hi, :, :dec_span], dec_mask
                )
                if direct:
                    attn = od.view(n_dec, q_dim)
                else:
                    od = od.view(hi, hq, hd)
                    out[:n_dec] = od if compact else od[dec_slots]
            offset = d_pad
            for (slot, ids, start, _), mask in zip(prefill, pre_masks, strict=False):
                n = len(ids)
                end = start + n
                kc[slot, :, start:end] = k[offset : offset + n].transpose(0, 1)
                vc[slot, :, start:end] = v[offset : offset + n].transpose(0, 1)
                # [n, hq, d] -> [hkv, group * n, d]: query head h uses kv head h // group
                qp = (
                    q[offset : offset + n]
                    .view(n, hkv, group, hd)
                    .permute(1, 2, 0, 3)
                    .reshape(1, hkv, group * n, hd)
                )
                span = mask.shape[-1]
                op = self._attend(qp, kc[slot : slot + 1, :, :span], vc[slot : slot + 1, :, :span], mask)
                out[offset : offset + n] = op.view(hkv, group, n, hd).permute(2, 0, 1, 3).reshape(n, hq, hd)
                offset += n
            if not direct:
                attn = out.view(total, q_dim)
            x.add_(self._tiled(o_proj, attn, segments))
            gu = self._tiled(gate_up, self._norm(x, w_post), segments)
            x.add_(
                self._tiled(
                    down, F.silu(gu[:, : self.intermediate]).mul_(gu[:, self.intermediate :]), segments
                )
            )

        rows = _logit_rows(n_dec, d_pad, prefill)
        if not rows:
            return torch.empty(0, 0)
        if not self.unpadded_decode:
            rows += [rows[-1]] * (_round_up(len(rows), DECODE_TILE) - len(rows))
        h = x if rows == list(range(total)) else x[torch.tensor(rows, device=dev)]
        h = self._norm(h, self.final_norm)
        n_rows = n_dec + sum(1 for *_, wants in prefill if wants)
        return self._tiled(self.lm_head, h, [(0, len(rows), DECODE_TILE)])[:n_rows].float()


def native_path_reason(model: Any) -> str | None:
    """None when :class:`NativeLlamaRunner` can run ``model`` (on top of :func:`fast_path_reason`)."""
    config = model.config
    if model.lm_head.weight.device.type != "cpu":
        return "not on the CPU"
    if model.lm_head.weight.dtype != torch.bfloat16:
        return f"dtype {model.lm_head.weight.dtype} (the kernels compute in bfloat16)"
    from fleetchat.engines.transformers.quantization import Int8Linear

    layer = model.model.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj]
    linears += [layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, model.lm_head]
    if not all(type(m) in (nn.Linear, Int8Linear) and m.bias is None for m in linears):
        return "biased or unusual linear layers"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 32 or head_dim > 256:
        return f"head_dim {head_dim}"
    # int8 layers read 64 input features per step, bf16 layers 32; outputs come in 32s
    multiple = 64 if any(type(m) is Int8Linear for m in linears) else 32
    dims = (config.hidden_size, layer.mlp.gate_proj.out_features, layer.self_attn.k_proj.out_features)
    if any(d % multiple for d in dims):
        return f"layer sizes not multiples of {multiple}"
    return None


class NativeLlamaRunner(LlamaRunner):
    """:class:`LlamaRunner`'s model on the native kernels (``kernels.c``): AMX matmuls with fused
    epilogues, RMSNorm, and attention with RoPE and the cache write fused in. Four calls a layer.

    Every token of a step is one row, decode and prompt tokens alike: each linear layer takes all
    rows in one call (the kernel gives a row the same bits in any call, so there is no padding or
    tiling), and attention is per row over its slot's cached positions. A request's logits are
    therefore the same alone or inside any batch, and a prompt gives the same result in one chunk or
    many. The residual stream is kept in float32 and the logits come out in float32.
    """

    path = "native-llama"

    def __init__(self, model: Any, kernels: Any, *, max_running: int, context_length: int) -> None:
        self.kernels = kernels
        kernels.set_threads(torch.get_num_threads())
        self._init_common(model, max_running=max_running, context_length=context_length)
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight.detach().to(torch.bfloat16).contiguous(),
                    self._pack([attn.q_proj, attn.k_proj, attn.v_proj]),
                    self._pack([attn.o_proj]),
                    layer.post_attention_layernorm.weight.detach().to(torch.bfloat16).contiguous(),
                    # 16-row blocks alternate gate, up: the kernel's SiLU(gate) * up epilogue pairs them
                    self._pack([mlp.gate_proj, mlp.up_proj], interleave=True),
                    self._pack([mlp.down_proj]),
                )
            )
        self.vocab = model.lm_head.out_features
        self.lm_head = self._pack([model.lm_head], pad_to=32)
        self.final_norm = self.final_norm.detach().to(torch.bfloat16).contiguous()
        self.cos32, self.sin32 = self.cos.float().contiguous(), self.sin.float().contiguous()
        self.unpadded_decode = True

    def _pack(self, parts: list[nn.Module], *, interleave: bool = False, pad_to: int = 1) -> Any:
        """Linear layers over the same input as one packed weight: bf16, or int8 (``--load-8bit``
        layers keep their own quantization and scales)."""
        from fleetchat.engines.transformers.quantization import Int8Linear

        int8 = isinstance(parts[0], Int8Linear)
        weights = [p.qweight if int8 else p.weight.detach() for p in parts]
        scales = [p.scales.float() for p in parts] if int8 else []
        if interleave:  # [a0 b0 a1 b1 ...] in blocks of 16 rows
            k = weights[0].shape[1]
            weights = [torch.stack([w.view(-1, 16, k) for w in weights], 1).reshape(-1, k)]
            scales = [torch.stack([s.view(-1, 16) for s in scales], 1).reshape(-1)] if int8 else []
        weight = torch.cat(weights)
        pad = -weight.shape[0] % pad_to
        if pad:  # zero rows, sliced off the output
            weight = torch.cat((weight, weight.new_zeros(pad, weight.shape[1])))
            scales = [*scales, torch.ones(pad)] if int8 else []
        if int8:
            return self.kernels.pack_quantized(weight, torch.cat(scales))
        return self.kernels.pack(weight)

    @torch.inference_mode()
    def run(self, decode: list[DecodeItem], prefill: list[PrefillItem]) -> torch.Tensor:
        from fleetchat.engines.transformers.native import EPI_ADD, EPI_SILU_MUL, EPI_STORE_F32

        kern, dev = self.kernels, self.device
        n_dec = len(decode)
        tokens = [t for _, t, _ in decode]
        positions = [p for _, _, p in decode]
        slots = [s for s, _, _ in decode]
        for slot, ids, start, _ in prefill:
            tokens.extend(ids)
            positions.extend(range(start, start + len(ids)))
            slots.extend([slot] * len(ids))
        total = len(tokens)
        self.cache.ensure_capacity(max(positions) + 1)
        # the residual stream stays in float32 (closer to the float32 model than bf16 rounding per layer)
        x = self.embed(torch.tensor(tokens, device=dev)).float()
        heads = (self.hq, self.hkv, self.head_dim)
        new, bf16 = torch.empty, torch.bfloat16
        h = new(total, x.shape[1], dtype=bf16)
        qkv = new(total, (self.hq + 2 * self.hkv) * self.head_dim, dtype=bf16)
        attn = new(total, self.hq * self.head_dim, dtype=bf16)
        act = new(total, self.intermediate, dtype=bf16)
        slots_t = torch.tensor(slots, dtype=torch.long)
        positions_t = torch.tensor(positions, dtype=torch.long)
        for li, (w_in, qkv_w, o_w, w_post, gate_up_w, down_w) in enumerate(self.layers):
            kern.rmsnorm(x, w_in, self.eps, h)
            kern.linear(h, qkv_w, qkv)
            kern.attention(
                qkv, heads, slots_t, positions_t, self.cos32, self.sin32,
                self.cache.k[li], self.cache.v[li], self.scale, attn,
            )  # fmt: skip
            kern.linear(attn, o_w, x, EPI_ADD)
            kern.rmsnorm(x, w_post, self.eps, h)
            kern.linear(h, gate_up_w, act, EPI_SILU_MUL)
            kern.linear(act, down_w, x, EPI_ADD)

        rows = _logit_rows(n_dec, n_dec, prefill)
        if not rows:
            return torch.empty(0, 0)
        last = x if len(rows) == total else x[torch.tensor(rows)].contiguous()
        normed = new(last.shape, dtype=bf16)
        kern.rmsnorm(last, self.final_norm, self.eps, normed)
        logits = new(len(rows), self.lm_head.shape[0], dtype=torch.float32)
        kern.linear(normed, self.lm_head, logits, EPI_STORE_F32)
        return logits[:, : self.vocab]


class HFRunner:
    """Generic fallback: the model's own forward, one sequence at a time, a DynamicCache per slot."""

    path = "hf-generic"

    def __init__(self, model: Any, *, max_running: int, context_length: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.caches: list[Any] = []

    def allocate(self) -> int:
        from transformers import DynamicCache

        self.caches.append(DynamicCache(config=self.model.config))
        return len(self.caches) - 1

    def release(self, slot: int, length_of_last: int) -> int | None:
        last = len(self.caches) - 1
        self.caches[slot] = self.caches[last]
        self.caches.pop()
        return None if slot == last else last

    @torch.inference_mode()
    def run(self, decode: list[DecodeItem], prefill: list[PrefillItem]) -> torch.Tensor:
        rows: list[torch.Tensor] = []
        items = [(slot, [tok], pos, True) for slot, tok, pos in decode] + list(prefill)
        for slot, ids, start, wants in items:
            input_ids = torch.tensor([ids], device=self.device)
            position_ids = torch.arange(start, start + len(ids), device=self.device)[None]
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                past_key_values=self.caches[slot],
                use_cache=True,
            )
            if wants:
                rows.append(out.logits[0, -1].float())
        return torch.stack(rows) if rows else torch.empty(0, 0)


def make_runner(model: Any, *, max_running: int, context_length: int) -> LlamaRunner | HFRunner:
    reason = fast_path_reason(model)
    if reason is None:
        from fleetchat.engines.transformers.native import load_kernels

        kernels, why = load_kernels()
        why = why or native_path_reason(model)
        if kernels is not None and why is None:
            runner: LlamaRunner | HFRunner = NativeLlamaRunner(
                model, kernels, max_running=max_running, context_length=context_length
            )
        else:
            log.info("native kernels not used: %s", why)
            runner = LlamaRunner(model, max_running=max_running, context_length=context_length)
    else:
        log.info("using the generic Hugging Face forward (%s)", reason)
        runner = HFRunner(model, max_running=max_running, context_length=context_length)
    log.info("model runner: %s", runner.path)
    return runner
