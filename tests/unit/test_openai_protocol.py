"""OpenAI wire types: validation to 400s naming the param, conversion to GenerateRequests, SSE framing."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from fleetchat.api.metrics import Metrics
from fleetchat.errors import InvalidParameterError, OverloadedError
from fleetchat.protocol import openai as oa
from fleetchat.protocol.sse import SSE_DONE, iter_sse_data, sse_error, sse_event


def chat(**kw: object) -> oa.ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    return oa.parse_request(oa.ChatCompletionRequest, body)


def param_of(fn, *a, **kw) -> str | None:  # noqa: ANN001
    with pytest.raises(InvalidParameterError) as info:
        fn(*a, **kw)
    assert info.value.status == 400
    return info.value.param


def test_defaults_and_sampling() -> None:
    req = chat(temperature=0.3, top_p=0.9, stop=["x", "y"], max_tokens=5, seed=11, top_k=4)
    p = req.sampling(0)
    assert (p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.stop, p.seed) == (0.3, 0.9, 4, 5, ("x", "y"), 11)
    assert req.sampling(2).seed == 13  # n choices: seed + choice index
    assert chat().sampling().max_new_tokens is None  # chat: up to the context length
    assert chat(stop="z").sampling().stop == ("z",)
    assert chat().sampling().logprobs is None
    assert chat(logprobs=True).sampling().logprobs == 0
    assert chat(logprobs=True, top_logprobs=3).sampling().logprobs == 3
    assert chat(max_tokens=9, max_completion_tokens=4).sampling().max_new_tokens == 4


def test_messages_roles_and_content_parts() -> None:
    req = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ])
    msgs = req.chat_messages()
    assert [(m.role, m.content) for m in msgs] == [("system", "be brief"), ("user", "ab"), ("assistant", "")]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": "hello"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": "two"}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "maybe"}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
         "top_logprobs"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
         "response_format"),
    ],
)
def test_request_validation_names_the_param(body: dict, param: str) -> None:
    assert param_of(oa.parse_request, oa.ChatCompletionRequest, body) == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_sampling_ranges(fields: dict, param: str) -> None:
    assert param_of(chat(**fields).sampling) == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "wizard", "content": "x"}, "messages[0].role"),
        ({"role": "tool", "content": "x", "tool_call_id": "1"}, "messages[0].role"),
        ({"role": "user", "content": None}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages[0].content"),
    ],
)
def test_bad_messages(message: dict, param: str) -> None:
    assert param_of(chat(messages=[message]).chat_messages) == param


def test_pydantic_type_errors_name_the_nested_param() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}, {"content": "y"}]}
    assert param_of(oa.parse_request, oa.ChatCompletionRequest, body) == "messages[1].role"
    assert param_of(oa.parse_request, oa.ChatCompletionRequest, ["not", "an", "object"]) is None


def test_completion_prompts_and_defaults() -> None:
    req = oa.parse_request(oa.CompletionRequest, {"model": "m", "prompt": "p"})
    assert req.prompts() == ["p"] and req.sampling().max_new_tokens == 16
    assert oa.parse_request(oa.CompletionRequest, {"model": "m", "prompt": [1, 2, 3]}).prompts() == [[1, 2, 3]]
    assert oa.parse_request(oa.CompletionRequest, {"model": "m", "prompt": [[1], [2]]}).prompts() == [[1], [2]]
    assert oa.parse_request(oa.CompletionRequest, {"model": "m", "prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert oa.parse_request(oa.CompletionRequest, {"model": "m", "prompt": "p", "logprobs": 2}).sampling().logprobs == 2
    for bad, param in [({"prompt": []}, "prompt"), ({"prompt": "p", "suffix": "s"}, "suffix"),
                       ({"prompt": "p", "best_of": 3}, "best_of"), ({"prompt": "p", "logprobs": 30}, "logprobs"),
                       ({}, "prompt")]:
        assert param_of(oa.parse_request, oa.CompletionRequest, {"model": "m", **bad}) == param


def test_embedding_request() -> None:
    req = oa.parse_request(oa.EmbeddingRequest, {"model": "e", "input": "one"})
    assert req.texts() == ["one"]
    assert oa.parse_request(oa.EmbeddingRequest, {"model": "e", "input": ["a", "b"]}).texts() == ["a", "b"]
    assert param_of(oa.parse_request(oa.EmbeddingRequest, {"model": "e", "input": [1, 2]}).texts) == "input"
    assert param_of(oa.parse_request(oa.EmbeddingRequest, {"model": "e", "input": [""]}).texts) == "input"
    assert param_of(oa.parse_request, oa.EmbeddingRequest,
                    {"model": "e", "input": "x", "encoding_format": "hex"}) == "encoding_format"


def test_logprob_shapes() -> None:
    items = [{"token": "é", "token_id": 5, "logprob": -0.1, "top": [{"token": "a", "token_id": 1, "logprob": -2.0}]},
             {"token": "b", "token_id": 6, "logprob": -0.2, "top": []}]
    chat_lp = oa.chat_logprobs(items)
    assert chat_lp["content"][0] == {"token": "é", "logprob": -0.1, "bytes": [195, 169],
                                     "top_logprobs": [{"token": "a", "logprob": -2.0, "bytes": [97]}]}
    comp = oa.completion_logprobs(items, 3)
    assert comp == {"tokens": ["é", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -2.0}, {}],
                    "text_offset": [3, 4]}


def test_response_builders() -> None:
    r = oa.chat_response("id", 1, "m", [oa.chat_choice(0, "hi", "abort", None)], 3, 2)
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert r["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in oa.chat_chunk("id", 1, "m", [])
    assert oa.chat_chunk("id", 1, "m", [], None, True)["usage"] is None
    assert [m["id"] for m in oa.model_list(["b", "a"], 0)["data"]] == ["a", "b"]


def test_sse_framing_round_trip() -> None:
    import asyncio

    events = sse_event({"a": "é"}) + sse_error(OverloadedError("busy")) + SSE_DONE
    assert events.startswith(b'data: {"a":"\xc3\xa9"}\n\n')

    async def read(parts: list[bytes]) -> list[str]:
        async def gen():  # noqa: ANN202
            for p in parts:
                yield p
        return [d async for d in iter_sse_data(gen())]

    # split at every byte and with CRLF line ends: the same three payloads
    split = [events[i : i + 1] for i in range(len(events))]
    for parts in (split, [events.replace(b"\n", b"\r\n")]):
        got = asyncio.run(read(parts))
        assert orjson.loads(got[0]) == {"a": "é"}
        assert orjson.loads(got[1])["error"]["code"] == "overloaded"
        assert got[2] == "[DONE]"


def test_metrics_text_format() -> None:
    m = Metrics()
    m.started("chat_completions")
    m.first_token("chat_completions", 0.02)
    m.finished("chat_completions", "m", 200, 0.3)
    m.tokens("m", 5, 7)
    text = m.render([{"address": "http://w:1", "models": ["m"], "queue_length": 3}])
    assert 'fleetchat_api_requests_total{endpoint="chat_completions",model="m",status="200"} 1' in text
    assert 'fleetchat_api_completion_tokens_total{model="m"} 7' in text
    assert 'fleetchat_api_request_latency_seconds_bucket{endpoint="chat_completions",le="0.5"} 1' in text
    assert 'fleetchat_api_request_latency_seconds_bucket{endpoint="chat_completions",le="0.25"} 0' in text
    assert 'fleetchat_api_time_to_first_token_seconds_count{endpoint="chat_completions"} 1' in text
    assert 'fleetchat_api_requests_in_flight{endpoint="chat_completions"} 0' in text
    assert 'fleetchat_worker_queue_length{worker="http://w:1",models="m"} 3' in text


def test_base64_embedding_encoding_is_little_endian_float32() -> None:
    from fleetchat.api.app import _encode_base64

    raw = base64.b64decode(_encode_base64([1.0, -2.5]))
    assert struct.unpack("<2f", raw) == (1.0, -2.5)
