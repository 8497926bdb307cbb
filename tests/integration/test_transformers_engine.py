"""The transformers engine on the real embedded model: batching correctness, aborts, sampling, errors.

The model is loaded once for the module. Streams are short (max_new_tokens <= 24) to keep it quick.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from fleetchat.engines.base import Engine, EngineSettings
from fleetchat.errors import ContextLengthExceededError, OverloadedError
from fleetchat.protocol.generation import ChatMessage, GenerateRequest, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["native", "torch"])
def engine(request):
    """The engine on each runner: the native kernels (where this CPU has them) and plain torch."""
    import os

    from fleetchat.engines.transformers import load_transformers_engine
    from fleetchat.engines.transformers.native import load_kernels

    if request.param == "native" and load_kernels()[0] is None:
        pytest.skip(f"native kernels unavailable: {load_kernels()[1]}")
    saved = os.environ.get("FLEETCHAT_NATIVE")
    os.environ["FLEETCHAT_NATIVE"] = "1" if request.param == "native" else "0"
    try:
        eng = load_transformers_engine(EngineSettings(model_path="smollm2", max_running=8, max_batched_tokens=64))
    finally:
        if saved is None:
            del os.environ["FLEETCHAT_NATIVE"]
        else:
            os.environ["FLEETCHAT_NATIVE"] = saved
    assert eng.runner_path == {"native": "native-llama", "torch": "fast-llama"}[request.param]
    yield eng
    asyncio.run(eng.close())


def chat(text: str, **params) -> GenerateRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_new_tokens", 16)
    return GenerateRequest(messages=[ChatMessage(role="user", content=text)], params=SamplingParams(**params))


async def collect(engine, request: GenerateRequest) -> tuple[str, list[int], list]:
    chunks = [c async for c in engine.generate(request)]
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids], chunks


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colours. Explain each one of them in a long sentence, please, with lots of detail.",
    "Hi",
]


def test_implements_the_engine_interface(engine) -> None:
    assert isinstance(engine, Engine)
    info = engine.info
    assert info.name == "smollm2-135m-instruct" and info.engine == "transformers" and info.kind == "chat"
    assert info.context_length == 8192 and info.max_running == 8 and info.conv_template
    assert engine.count_tokens("Hello world") == 2


async def test_answers_and_reports_counts(engine) -> None:
    text, ids, chunks = await collect(engine, chat("What is the capital of France?", max_new_tokens=24))
    assert "Paris" in text
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.completion_tokens == len(ids) and last.prompt_tokens > 10
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_greedy_output_is_the_same_alone_and_in_a_batch(engine) -> None:
    alone = [(await collect(engine, chat(p, max_new_tokens=20)))[1] for p in PROMPTS]

    async def delayed(i: int, prompt: str):
        await asyncio.sleep(0.05 * i)  # join a batch that is already decoding
        return (await collect(engine, chat(prompt, max_new_tokens=20)))[1]

    together = await asyncio.gather(*[delayed(i, p) for i, p in enumerate(PROMPTS)])
    assert together == alone


async def test_aborting_one_request_leaves_the_others_unchanged(engine) -> None:
    expected = [(await collect(engine, chat(p, max_new_tokens=20, ignore_eos=True)))[1] for p in PROMPTS[:2]]

    async def abandoned() -> int:
        seen = 0
        stream = engine.generate(chat(PROMPTS[2], max_new_tokens=200, ignore_eos=True))
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        return seen

    results = await asyncio.gather(
        *[collect(engine, chat(p, max_new_tokens=20, ignore_eos=True)) for p in PROMPTS[:2]], abandoned()
    )
    assert [r[1] for r in results[:2]] == expected
    for _ in range(50):  # the aborted request's slot is freed at the next step
        if engine.health().running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.health().running == 0 and engine.health().ok


async def test_abort_by_id_ends_the_stream(engine) -> None:
    request = chat("Count from one to one hundred.", max_new_tokens=300, ignore_eos=True)
    chunks = []
    async for chunk in engine.generate(request):
        chunks.append(chunk)
        if len(chunks) == 2:
            await engine.abort(request.request_id)
    assert chunks[-1].finish_reason == "abort" and len(chunks) < 50


async def test_long_prompts_grow_the_cache_and_slots_move_cleanly(engine) -> None:
    """Prompts longer than the cache's first capacity and finishing out of slot order."""
    long_ids = engine.tokenizer(
        "The quick brown fox jumps over the lazy dog. " * 60, add_special_tokens=False
    )["input_ids"][:600]

    def req(n: int) -> GenerateRequest:
        params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        return GenerateRequest(prompt_token_ids=long_ids, params=params)

    alone = (await collect(engine, req(12)))[1]
    results = await asyncio.gather(collect(engine, req(3)), collect(engine, req(12)), collect(engine, req(6)))
    assert [len(r[1]) for r in results] == [3, 12, 6]
    assert results[1][1] == alone  # unchanged although the cache grew and slots moved under it
    assert engine.health().ok


async def test_seeded_sampling_is_reproducible_inside_a_batch(engine) -> None:
    def req(seed: int) -> GenerateRequest:
        return chat("Tell me a story.", temperature=1.0, seed=seed, max_new_tokens=16, ignore_eos=True)

    first = (await collect(engine, req(1234)))[1]
    noise = [collect(engine, chat(p, temperature=1.0, max_new_tokens=16)) for p in PROMPTS]
    results = await asyncio.gather(collect(engine, req(1234)), collect(engine, req(99)), *noise)
    assert results[0][1] == first
    assert results[1][1] != first


async def test_stop_strings_are_not_emitted(engine) -> None:
    full, _, _ = await collect(engine, chat("What is the capital of France?", max_new_tokens=24))
    assert "Paris" in full
    text, _, chunks = await collect(
        engine, chat("What is the capital of France?", max_new_tokens=24, stop=("Paris",))
    )
    assert chunks[-1].finish_reason == "stop"
    assert "Paris" not in text and full.startswith(text)


async def test_length_finish_and_max_tokens(engine) -> None:
    _, ids, chunks = await collect(
        engine, chat("Tell me about the ocean.", max_new_tokens=5, ignore_eos=True)
    )
    assert len(ids) == 5 and chunks[-1].finish_reason == "length"


async def test_logprobs_shape(engine) -> None:
    _, ids, chunks = await collect(engine, chat("Say hello.", max_new_tokens=6, logprobs=3, ignore_eos=True))
    entries = [lp for c in chunks for lp in (c.logprobs or [])]
    assert [e.token_id for e in entries] == ids
    for e in entries:
        assert e.logprob <= 0 and len(e.top) == 3
        assert e.top[0].logprob == e.logprob  # greedy picks a most likely token (ties happen)
        assert e.token_id in [t.token_id for t in e.top]
        assert e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob


async def test_echo_sends_the_prompt_first(engine) -> None:
    request = GenerateRequest(
        prompt="The sky is", echo=True, params=SamplingParams(temperature=0, max_new_tokens=3)
    )
    _, _, chunks = await collect(engine, request)
    assert chunks[0].text == "The sky is" and chunks[0].token_ids == []
    assert chunks[-1].finish_reason is not None


async def test_context_length_is_checked_before_generating(engine) -> None:
    too_long = GenerateRequest(prompt_token_ids=[42] * 8190, params=SamplingParams(max_new_tokens=10))
    with pytest.raises(ContextLengthExceededError, match="8192.*8200"):
        await collect(engine, too_long)
    full = GenerateRequest(prompt_token_ids=[42] * 8192, params=SamplingParams())
    with pytest.raises(ContextLengthExceededError):
        await collect(engine, full)


async def test_overload_is_refused(engine) -> None:
    original = engine.settings
    engine.settings = dataclasses.replace(original, max_waiting=0)
    try:
        with pytest.raises(OverloadedError):
            await collect(engine, chat("Hi"))
    finally:
        engine.settings = original


@pytest.mark.parametrize("kind", ["torch", "native"])
def test_fast_forward_matches_the_hf_forward(engine, kind) -> None:
    """Our Llama forwards (prefill in chunks, then batched decode) against transformers' own logits."""
    from fleetchat.engines.transformers.native import load_kernels
    from fleetchat.engines.transformers.runner import LlamaRunner, NativeLlamaRunner

    model, tok = engine.loaded.model, engine.tokenizer
    if kind == "torch":
        runner = LlamaRunner(model, max_running=2, context_length=512)
    else:
        kernels, why = load_kernels()
        if kernels is None:
            pytest.skip(f"native kernels unavailable: {why}")
        runner = NativeLlamaRunner(model, kernels, max_running=2, context_length=512)
    a = tok("The capital of France is Paris. The capital of Germany is", add_special_tokens=False)[
        "input_ids"
    ]
    b = tok("Once upon a time there", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        ref_a = model(torch.tensor([a + [1234]])).logits[0].float()
        ref_b = model(torch.tensor([b + [567]])).logits[0].float()
    sa, sb = runner.allocate(), runner.allocate()
    runner.run([], [(sa, a[:4], 0, False)])  # chunked prefill
    out = runner.run([], [(sa, a[4:], 4, True), (sb, b, 0, True)])
    dec = runner.run([(sa, 1234, len(a)), (sb, 567, len(b))], [])
    for got, want in ((out[0], ref_a[-2]), (out[1], ref_b[-2]), (dec[0], ref_a[-1]), (dec[1], ref_b[-1])):
        scale = want.abs().max()
        assert (got - want).abs().max() <= 0.05 * scale
        assert int(got.argmax()) == int(want.argmax())


async def test_generic_hf_runner_agrees_with_the_fast_path(engine) -> None:
    from fleetchat.engines.transformers.runner import HFRunner

    runner = HFRunner(engine.loaded.model, max_running=1, context_length=512)
    prompt = engine.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    slot = runner.allocate()
    ids = [int(runner.run([], [(slot, prompt, 0, True)])[0].argmax())]
    for i in range(5):
        ids.append(int(runner.run([(slot, ids[-1], len(prompt) + i)], [])[0].argmax()))
    fast = GenerateRequest(
        prompt_token_ids=prompt, params=SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    )
    assert (await collect(engine, fast))[1] == ids


async def test_load_8bit_on_cpu() -> None:
    from fleetchat.engines.transformers import load_transformers_engine

    eng = load_transformers_engine(EngineSettings(model_path="smollm2", load_8bit=True, max_running=2))
    try:
        assert eng.info.quantization == "int8"
        from fleetchat.engines.transformers.native import load_kernels

        if load_kernels()[0] is not None:  # int8 weights on the AMX-INT8 kernel
            assert eng.runner_path == "native-llama"
        text, _, _ = await collect(eng, chat("What is the capital of France?", max_new_tokens=24))
        assert "Paris" in text
    finally:
        await eng.close()


async def test_ignore_eos_runs_to_max_tokens_past_the_end_of_turn(engine) -> None:
    _, ids, _ = await collect(engine, chat("Hi", max_new_tokens=40))
    assert len(ids) < 40  # the reply ends with the template's end-of-turn token
    _, ids, chunks = await collect(engine, chat("Hi", max_new_tokens=40, ignore_eos=True))
    assert len(ids) == 40 and chunks[-1].finish_reason == "length"
