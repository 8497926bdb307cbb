"""Model runners: turn one scheduled step into next-token logits.

A step is a flat list of tokens: one per decoding sequence plus a prompt chunk per prefilling
sequence. ``run(decode, prefill)`` returns float32 logits, one row per decoding sequence and one per
prefill chunk that reaches the end of its prompt, in that order.

Two implementations:

* :class:`LlamaRunner` — our own forward for Llama-shaped models (Llama, Mistral without sliding
  window, Qwen2: RMSNorm, RoPE, GQA, SwiGLU), reading the Hugging Face modules' weights. All tokens
  of a step go through each linear layer together (q/k/v and gate/up fused into one matmul each),
  keys/values are written into the preallocated :class:`SlotKVCache`, and decode attention is two
  batched matmuls over the compact slots with a length mask (``scaled_dot_product_attention`` is
  very slow on this CPU for one query against a short cache). Prompt chunks use SDPA.
* :class:`HFRunner` — any other architecture (or a model sharded over GPUs): the generic Hugging
  Face forward, one sequence at a time with its own ``DynamicCache``. Correct, not fast.

``make_runner`` picks one and says which in ``runner.path`` (logged and shown in ModelInfo's dtype).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fleetchat.engines.transformers.kv_cache import SlotKVCache

log = logging.getLogger("fleetchat.engine")

DecodeItem = tuple[int, int, int]  # (slot, token id, position)
PrefillItem = tuple[int, list[int], int, bool]  # (slot, token ids, start position, wants logits)

_FAST_TYPES = ("llama", "mistral", "qwen2")


class _FusedLinear(nn.Module):
    """Several dense linears over the same input computed as one matmul."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.weight = torch.cat([p.weight for p in parts]).contiguous()
        biases = [getattr(p, "bias", None) for p in parts]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat([b if b is not None else torch.zeros(p.weight.shape[0]) for b, p in zip(biases, parts)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _fuse(parts: list[nn.Module]) -> nn.Module:
    from fleetchat.engines.transformers.quantization import Int8Linear

    if all(isinstance(p, Int8Linear) for p in parts):
        return Int8Linear.cat(parts)
    if all(isinstance(p, nn.Linear) for p in parts):
        return _FusedLinear(parts)
    raise TypeError("cannot fuse mixed linear kinds")


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
        self.lm_head = model.lm_head
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    _fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                    attn.o_proj,
                    layer.post_attention_layernorm.weight,
                    _fuse([mlp.gate_proj, mlp.up_proj]),
                    mlp.down_proj,
                )
            )
        self.intermediate = model.model.layers[0].mlp.gate_proj.out_features
        # cos/sin tables for every position, computed by the model's own rotary module (any rope type)
        positions = torch.arange(context_length, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = model.model.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.cache = SlotKVCache(
            layers=len(self.layers),
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
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def run(self, decode: list[DecodeItem], prefill: list[PrefillItem]) -> torch.Tensor:
        dev = self.device
        n_dec = len(decode)
        tokens = [t for _, t, _ in decode]
        positions = [p for _, _, p in decode]
        for _, ids, start, _ in prefill:
            tokens.extend(ids)
            positions.extend(range(start, start + len(ids)))
        needed = max(positions) + 1
        self.cache.ensure_capacity(needed)
        ids_t = torch.tensor(tokens, device=dev)
        pos_t = torch.tensor(positions, device=dev)
        cos, sin = self.cos[pos_t][:, None, :], self.sin[pos_t][:, None, :]
        x = self.embed(ids_t)
        total = x.shape[0]

        if n_dec:
            hi = self.cache.used
            dec_slots = torch.tensor([s for s, _, _ in decode], device=dev)
            dec_pos = pos_t[:n_dec]
            compact = n_dec == hi and all(s == i for i, (s, _, _) in enumerate(decode))
            lengths = torch.ones(hi, dtype=torch.long, device=dev)
            lengths[dec_slots] = dec_pos + 1
            span = int(max(p for _, _, p in decode)) + 1
            mask = torch.zeros(hi, 1, 1, span, dtype=self.dtype, device=dev)
            mask.masked_fill_(torch.arange(span, device=dev)[None, None, None, :] >= lengths[:, None, None, None], float("-inf"))

        kv_dim = self.hkv * self.head_dim
        q_dim = self.hq * self.head_dim
        for li, (w_in, qkv_proj, o_proj, w_post, gate_up, down) in enumerate(self.layers):
            kc, vc = self.cache.k[li], self.cache.v[li]
            h = self._norm(x, w_in)
            qkv = qkv_proj(h)
            q = qkv[:, :q_dim].view(total, self.hq, self.head_dim)
            k = qkv[:, q_dim : q_dim + kv_dim].view(total, self.hkv, self.head_dim)
            v = qkv[:, q_dim + kv_dim :].view(total, self.hkv, self.head_dim)
            q = self._rope(q, cos, sin)
            k = self._rope(k, cos, sin)
            out = torch.empty(total, self.hq, self.head_dim, dtype=x.dtype, device=dev)
            if n_dec:
                kc[dec_slots, :, dec_pos] = k[:n_dec]
                vc[dec_slots, :, dec_pos] = v[:n_dec]
                if compact:
                    qd = q[:n_dec]
                else:
                    qd = torch.zeros(hi, self.hq, self.head_dim, dtype=x.dtype, device=dev)
                    qd[dec_slots] = q[:n_dec]
                qd = qd.view(hi, self.hkv, self.group, self.head_dim)
                scores = torch.matmul(qd, kc[:hi, :, :span].transpose(-1, -2)) * self.scale + mask
                probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)
                od = torch.matmul(probs, vc[:hi, :, :span]).view(hi, self.hq, self.head_dim)
                out[:n_dec] = od if compact else od[dec_slots]
            offset = n_dec
            for slot, ids, start, _ in prefill:
                n = len(ids)
                end = start + n
                kc[slot, :, start:end] = k[offset : offset + n].transpose(0, 1)
                vc[slot, :, start:end] = v[offset : offset + n].transpose(0, 1)
                qp = q[offset : offset + n].transpose(0, 1)[None]
                kp, vp = kc[slot, :, :end][None], vc[slot, :, :end][None]
                if start == 0:
                    op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=self.scale, enable_gqa=True)
                else:
                    allowed = torch.arange(end, device=dev)[None, :] <= torch.arange(start, end, device=dev)[:, None]
                    op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=allowed, scale=self.scale, enable_gqa=True)
                out[offset : offset + n] = op[0].transpose(0, 1)
                offset += n
            x = x + o_proj(out.view(total, q_dim))
            h = self._norm(x, w_post)
            gu = gate_up(h)
            x = x + down(F.silu(gu[:, : self.intermediate]) * gu[:, self.intermediate :])

        rows = list(range(n_dec))
        offset = n_dec
        for _, ids, _, wants in prefill:
            offset += len(ids)
            if wants:
                rows.append(offset - 1)
        if not rows:
            return torch.empty(0, 0)
        x = x[torch.tensor(rows, device=dev)] if len(rows) != total else x
        return self.lm_head(self._norm(x, self.final_norm)).float()


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
                input_ids=input_ids, position_ids=position_ids, past_key_values=self.caches[slot], use_cache=True
            )
            if wants:
                rows.append(out.logits[0, -1].float())
        return torch.stack(rows) if rows else torch.empty(0, 0)


def make_runner(model: Any, *, max_running: int, context_length: int) -> LlamaRunner | HFRunner:
    reason = fast_path_reason(model)
    if reason is None:
        runner: LlamaRunner | HFRunner = LlamaRunner(model, max_running=max_running, context_length=context_length)
    else:
        log.info("using the generic Hugging Face forward (%s)", reason)
        runner = HFRunner(model, max_running=max_running, context_length=context_length)
    log.info("model runner: %s", runner.path)
    return runner
