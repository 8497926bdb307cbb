"""Batched next-token choice honouring each sequence's own sampling parameters.

One call per step over the logits of every sequence that needs a token. Penalties are applied per
row (only rows that ask for them), then greedy rows take the argmax together and sampled rows get
temperature, top-k and top-p as tensor operations over the whole group. The final draw is per row
with the sequence's own ``torch.Generator``, so a seeded request picks the same tokens whatever else
is in the batch. Logprobs are the log-softmax of the (penalised) logits before temperature, as
OpenAI reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fleetchat.engines.transformers.sequence import Sequence


@dataclass
class TokenChoice:
    token_id: int
    logprob: float | None = None
    top_ids: list[int] | None = None
    top_logprobs: list[float] | None = None


def _apply_penalties(row: torch.Tensor, seq: Sequence) -> None:
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(
            sorted(set(seq.prompt_ids) | set(seq.output_ids)), dtype=torch.long, device=row.device
        )
        if seen.numel():
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.output_ids:
        ids = torch.tensor(seq.output_ids, dtype=torch.long, device=row.device)
        counts = torch.bincount(ids, minlength=row.shape[0])[: row.shape[0]].to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


def _filter_top_k_top_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero out tokens outside each row's top-k / nucleus. ``top_k`` 0 means off; ``top_p`` 1 off."""
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    vocab = probs.shape[-1]
    ranks = torch.arange(vocab, device=probs.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
    drop = ranks >= k[:, None]
    # keep the smallest prefix whose mass reaches top_p (the token crossing the line is kept)
    cumulative = sorted_probs.cumsum(dim=-1)
    drop |= (cumulative - sorted_probs) >= top_p[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[TokenChoice]:
    """Pick one token for each row of ``logits`` (float32, ``[len(seqs), vocab]``)."""
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            _apply_penalties(logits[i], seq)

    choices: list[TokenChoice | None] = [None] * len(seqs)
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if greedy:
        picked = (
            logits[greedy].argmax(dim=-1).tolist()
            if len(greedy) < len(seqs)
            else logits.argmax(dim=-1).tolist()
        )
        for i, tok in zip(greedy, picked, strict=False):
            choices[i] = TokenChoice(tok)
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        group = logits.index_select(0, rows)
        temps = torch.tensor([seqs[i].params.temperature for i in sampled], device=logits.device)
        probs = torch.softmax(group / temps[:, None], dim=-1)
        top_k = torch.tensor([max(seqs[i].params.top_k, 0) for i in sampled], device=logits.device)
        top_p = torch.tensor([seqs[i].params.top_p for i in sampled], device=logits.device)
        if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
            probs = _filter_top_k_top_p(probs, top_k, top_p)
        for j, i in enumerate(sampled):
            tok = torch.multinomial(probs[j], 1, generator=seqs[i].generator)
            choices[i] = TokenChoice(int(tok))

    wants = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    if wants:
        rows = torch.tensor(wants, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, rows), dim=-1)
        for j, i in enumerate(wants):
            choice = choices[i]
            assert choice is not None
            k = seqs[i].params.logprobs or 0
            choice.logprob = float(logprobs[j, choice.token_id])
            if k:
                values, ids = logprobs[j].topk(k)
                choice.top_ids, choice.top_logprobs = ids.tolist(), values.tolist()
            else:
                choice.top_ids, choice.top_logprobs = [], []
    return [c for c in choices if c is not None]
