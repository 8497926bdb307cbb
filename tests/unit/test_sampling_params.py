"""SamplingParams validation and the batched sampler's per-row behaviour."""

from __future__ import annotations

import pytest
import torch

from fleetchat.engines.transformers.sampler import sample
from fleetchat.engines.transformers.sequence import Sequence
from fleetchat.errors import InvalidParameterError
from fleetchat.protocol.generation import SamplingParams


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"max_new_tokens": 0}, "max_tokens"),
        ({"logprobs": 21}, "top_logprobs"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_values_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert info.value.status == 400


def test_greedy_detection() -> None:
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=0.8, top_k=1).greedy
    assert not SamplingParams(temperature=0.8).greedy


def seq(params: SamplingParams, *, seed: int | None = None, prompt=(1, 2), output=()) -> Sequence:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return Sequence(
        request_id="r",
        prompt_ids=list(prompt),
        params=params,
        max_new_tokens=10,
        stop_token_ids=frozenset(),
        emit=lambda item: None,
        loop=None,
        generator=gen,
        output_ids=list(output),
    )


def logits_row(values: dict[int, float], vocab: int = 16) -> torch.Tensor:
    row = torch.full((vocab,), -10.0)
    for i, v in values.items():
        row[i] = v
    return row


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.stack([logits_row({3: 5.0, 4: 4.0}), logits_row({9: 1.0})])
    picks = sample(logits, [seq(SamplingParams(temperature=0)), seq(SamplingParams(temperature=0))])
    assert [c.token_id for c in picks] == [3, 9]


def test_seeded_rows_are_reproducible_whatever_the_batch() -> None:
    params = SamplingParams(temperature=1.0)
    flat = torch.zeros(1, 1000)
    alone = [sample(flat.clone(), [seq(params, seed=42)])[0].token_id]
    batch = sample(torch.zeros(3, 1000), [seq(params, seed=7), seq(params, seed=42), seq(params, seed=9)])
    assert batch[1].token_id == alone[0]
    other = sample(flat.clone(), [seq(params, seed=43)])[0].token_id
    again = sample(flat.clone(), [seq(params, seed=42)])[0].token_id
    assert again == alone[0]
    assert other != alone[0]  # a different seed draws differently (deterministic for these seeds)


def test_top_k_and_top_p_restrict_the_choice() -> None:
    row = logits_row({1: 3.0, 2: 2.9, 3: 2.8, 4: 0.0})
    top_k = [sample(row[None].clone(), [seq(SamplingParams(top_k=2), seed=s)])[0].token_id for s in range(40)]
    assert set(top_k) <= {1, 2} and len(set(top_k)) == 2
    probs = torch.softmax(row, -1)
    assert probs[1] < 0.5  # so top_p=0.5 must keep token 1 and exactly one more
    top_p = [
        sample(row[None].clone(), [seq(SamplingParams(top_p=0.5), seed=s)])[0].token_id for s in range(40)
    ]
    assert set(top_p) == {1, 2}


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=3)])
def test_draws_follow_the_distribution(params: SamplingParams) -> None:
    """Frequencies over many seeded draws match softmax(logits) (renormalised over the top 3 for top_k)."""
    row = logits_row({0: 1.0, 1: 0.5, 2: 0.0, 3: -0.5})
    row[4:] = -30.0
    want = torch.softmax(row[:4], -1)
    if params.top_k == 3:
        want = torch.cat((want[:3] / want[:3].sum(), torch.zeros(1)))
    s = seq(params, seed=1)
    draws = torch.tensor([sample(row[None].clone(), [s])[0].token_id for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4)[:4].float() / len(draws)
    assert torch.allclose(freq, want, atol=0.03), (freq, want)


def test_top_p_on_a_flat_distribution_looks_past_the_candidates() -> None:
    """A nucleus wider than the sampler's first candidates (1024) is drawn from the whole vocabulary."""
    row = -torch.arange(5000, dtype=torch.float32) * 1e-4  # nearly flat: half the mass is ~2,400 tokens
    probs = torch.softmax(row, -1)
    nucleus = int((probs.cumsum(0) < 0.5).sum()) + 1
    s = seq(SamplingParams(temperature=1.0, top_p=0.5), seed=3)
    draws = [sample(row[None].clone(), [s])[0].token_id for _ in range(300)]
    assert max(draws) < nucleus and max(draws) > 1100


def test_repetition_and_frequency_penalties_change_the_pick() -> None:
    row = logits_row({5: 2.0, 6: 1.9})
    plain = sample(row[None].clone(), [seq(SamplingParams(temperature=0), prompt=(5,))])[0].token_id
    rep = sample(
        row[None].clone(), [seq(SamplingParams(temperature=0, repetition_penalty=1.5), prompt=(5,))]
    )[0]
    freq = sample(
        row[None].clone(), [seq(SamplingParams(temperature=0, frequency_penalty=0.5), output=(5,))]
    )[0]
    assert plain == 5 and rep.token_id == 6 and freq.token_id == 6


def test_logprobs_report_the_choice_and_alternatives() -> None:
    row = logits_row({1: 2.0, 2: 1.0, 3: 0.5})
    (choice,) = sample(row[None].clone(), [seq(SamplingParams(temperature=0, logprobs=2))])
    expected = torch.log_softmax(row, -1)
    assert choice.token_id == 1
    assert choice.logprob == pytest.approx(float(expected[1]))
    assert choice.top_ids == [1, 2]
    assert choice.top_logprobs == pytest.approx([float(expected[1]), float(expected[2])])
