"""A preallocated per-slot key/value cache, kept compact so decode attention needs no gather.

Layout: ``k`` and ``v`` are ``[layers, slots, kv_heads, capacity, head_dim]``. A running sequence
owns one slot; its token at position ``p`` lives at ``[:, slot, :, p]``. Writing a step's keys is
one indexed store per layer (no ``torch.cat`` of growing tensors).

Two choices keep decode attention a pair of plain batched matmuls over ``k[layer, :n, :, :L]``:

* **Compaction.** Occupied slots are always ``0 .. n-1``: when a slot is freed, the sequence in the
  highest slot moves into the hole (a copy of its cached positions; rare and small next to a step).
* **Growth by doubling.** ``capacity`` starts small and doubles (up to the context length) when a
  sequence needs more, so memory follows the longest live sequence rather than the model's context
  (32 slots x 8192 positions of SmolLM2 would be 6 GB in bf16).
"""

from __future__ import annotations

import torch

_MIN_CAPACITY = 64


class SlotKVCache:
    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int = _MIN_CAPACITY,
    ) -> None:
        self.layers, self.slots, self.kv_heads, self.head_dim = layers, slots, kv_heads, head_dim
        self.max_len = max_len
        self.dtype, self.device = dtype, device
        self.capacity = min(max_len, capacity)
        shape = (layers, slots, kv_heads, self.capacity, head_dim)
        with torch.inference_mode():  # the cache is only ever touched in inference mode
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.used = 0  # occupied slots are 0 .. used-1

    @property
    def free_slots(self) -> int:
        return self.slots - self.used

    def allocate(self) -> int:
        """Take the next slot (always ``used``, so slots stay compact)."""
        if self.used >= self.slots:
            raise RuntimeError("no free KV cache slot")
        self.used += 1
        return self.used - 1

    @torch.inference_mode()
    def release(self, slot: int, length_of_last: int) -> int | None:
        """Free ``slot``. If it was not the last one, the last slot's first ``length_of_last`` positions
        move into it; return the slot that moved (the caller renumbers its sequence), else None."""
        last = self.used - 1
        self.used -= 1
        if slot == last:
            return None
        if length_of_last > 0:
            self.k[:, slot, :, :length_of_last].copy_(self.k[:, last, :, :length_of_last])
            self.v[:, slot, :, :length_of_last].copy_(self.v[:, last, :, :length_of_last])
        return last

    @torch.inference_mode()
    def ensure_capacity(self, length: int) -> None:
        """Grow (doubling, bounded by ``max_len``) so positions ``< length`` fit."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise RuntimeError(f"sequence of {length} tokens exceeds the cache's {self.max_len}")
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.max_len)
        shape = (self.layers, self.slots, self.kv_heads, capacity, self.head_dim)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.zeros(shape, dtype=self.dtype, device=self.device)
            new[:, :, :, : self.capacity].copy_(old)
            setattr(self, name, new)
            del old
        self.capacity = capacity

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
