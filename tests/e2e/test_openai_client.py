"""The official ``openai`` client against a real ``fleetchat serve`` with the embedded models.

One serve per module (controller, the SmolLM2 chat worker, the MiniLM embedding worker, the API with
an API key) on free ports. The last test stops it with SIGTERM and checks that no child survives.
"""

from __future__ import annotations

import signal
import time

import httpx
import openai
import pytest
from serve_process import ServeProcess, alive, children_of, start_serve

pytestmark = pytest.mark.slow

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def serve() -> ServeProcess:
    sp = start_serve(["--api-keys", KEY], n_workers=2)
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def client(serve: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=serve.api_url, api_key=KEY, max_retries=0, timeout=120)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_serve_printed_its_urls(serve: ServeProcess) -> None:
    assert serve.api_url in serve.output
    assert serve.controller_url in serve.output
    assert all(url in serve.output for url in serve.worker_urls)


def test_list_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == [EMBED, CHAT]
    assert client.models.retrieve(CHAT).id == CHAT


def test_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=ask("What is the capital of France?"),
                                       max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.model == CHAT
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=CHAT, messages=ask("Tell me about cats."), max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=ask("Write a poem."), max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_n_choices_and_seed(client: openai.OpenAI) -> None:
    kw = {"model": CHAT, "messages": ask("Name an animal."), "max_tokens": 8, "temperature": 1.0, "seed": 42}
    r1 = client.chat.completions.create(n=2, **kw)
    assert [c.index for c in r1.choices] == [0, 1]
    assert 2 <= r1.usage.completion_tokens <= 16  # both choices counted
    r2 = client.chat.completions.create(n=2, **kw)
    # the same seed gives the same samples; choice i uses seed + i
    assert [c.message.content for c in r1.choices] == [c.message.content for c in r2.choices]


def test_stop(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=ask("Count from 1 to 10, separated by commas."),
                                       max_tokens=40, temperature=0, stop=[","])
    assert "," not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=ask("Hi"), max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    first = content[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 2
    assert first.top_logprobs[0].logprob >= first.top_logprobs[1].logprob
    assert first.token == first.top_logprobs[0].token  # greedy: the chosen token is the most likely


def test_completion_echo_and_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model=CHAT, prompt="The sky is", max_tokens=5, echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text.startswith("The sky is") and len(choice.text) > len("The sky is")
    assert len(choice.logprobs.tokens) == r.usage.completion_tokens == 5
    assert choice.logprobs.text_offset[0] == len("The sky is")


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()


def test_embeddings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=EMBED, input=["a cat sits on the mat", "a kitten on a rug", "tax law"])
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and len(vecs[0]) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    assert r.usage.prompt_tokens > 0
    floats = client.embeddings.create(model=EMBED, input="hello", encoding_format="float")
    assert len(floats.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": ask("hi"), "temperature": 3}, "temperature"),
        ({"messages": ask("hi"), "top_p": 1.5}, "top_p"),
        ({"messages": ask("hi"), "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_input_is_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT, **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"


def test_malformed_json_and_missing_messages_are_400(serve: ServeProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = httpx.post(serve.api_url + "/chat/completions", content=b'{"model": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(serve.api_url + "/chat/completions", json={"model": CHAT}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT, messages=ask("hello " * 9000), max_tokens=4)
    assert info.value.code == "context_length_exceeded"


def test_context_length_exceeded_when_streaming_is_still_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT, messages=ask("hello " * 9000), max_tokens=4, stream=True)


def test_unknown_model_is_404_listing_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=ask("hi"))
    assert CHAT in info.value.message and info.value.code == "model_not_found"


def test_bad_api_key_is_401(serve: ServeProcess) -> None:
    bad = openai.OpenAI(base_url=serve.api_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401


def test_client_disconnect_frees_the_worker(client: openai.OpenAI, serve: ServeProcess) -> None:
    worker = serve.worker_urls[0]  # the chat worker (first --model-path)

    def queue() -> int:
        return httpx.post(worker + "/worker_get_status").json()["queue_length"]

    stream = client.chat.completions.create(model=CHAT, messages=ask("Write a very long story."),
                                            max_tokens=400, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert queue() >= 1
    stream.close()
    deadline = time.monotonic() + 10
    while queue() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue() == 0


def test_health_and_metrics(serve: ServeProcess) -> None:
    base = serve.api_url.removesuffix("/v1")
    assert httpx.get(base + "/health").json()["status"] == "ok"
    text = httpx.get(base + "/metrics").text
    assert f'fleetchat_api_requests_total{{endpoint="chat_completions",model="{CHAT}",status="200"}}' in text
    assert f'fleetchat_api_completion_tokens_total{{model="{CHAT}"}}' in text
    assert "fleetchat_worker_queue_length{" in text


def test_sigterm_stops_every_child(serve: ServeProcess) -> None:
    """Last in the module: serve stops cleanly and leaves no process behind."""
    kids = children_of(serve.proc.pid)
    assert len(kids) == 4  # controller, two workers, api
    assert serve.stop(signal.SIGTERM) == 0
    assert "stopped" in serve.output
    leftover = [pid for pid in kids if alive(pid)]
    assert leftover == []
