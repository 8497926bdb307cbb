"""The web UI's API client and chat-history helpers: readable errors, what is sent to a model."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from fleetchat.errors import ModelNotFoundError, WorkerError
from fleetchat.webui.chat import pick_model
from fleetchat.webui.client import ChatClient, GenParams, explain, make_openai_client
from fleetchat.webui.history import drop_last_reply, error_message, normalize, to_openai


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


async def test_unreachable_api_is_one_clear_error():
    url = dead_url()
    client = ChatClient(make_openai_client(url, "", timeout=5))
    with pytest.raises(WorkerError, match="cannot reach the API at " + url):
        await client.list_models()
    with pytest.raises(WorkerError, match="cannot reach the API"):
        async for _ in client.stream_chat("m", [{"role": "user", "content": "hi"}], GenParams()):
            pass
    await client.close()


def test_status_errors_keep_their_class_and_message():
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    inner = {"message": "model 'nope' is not served", "type": "invalid_request_error", "param": "model",
             "code": "model_not_found"}
    for body in (inner, {"error": inner}):  # the openai client hands over either shape
        exc = openai.NotFoundError("x", response=httpx.Response(404, request=request), body=body)
        err = explain(exc, "http://x/v1")
        assert isinstance(err, ModelNotFoundError)
        assert str(err) == "API error 404: model 'nope' is not served"
    mid_stream = openai.APIError("boom", request, body={"message": "engine crashed", "code": "engine_error"})
    assert str(explain(mid_stream, "http://x/v1")) == "the model failed: engine crashed"


def test_history_round_trip_and_error_lines_not_sent():
    gradio_shape = [
        {"role": "user", "metadata": None, "content": [{"type": "text", "text": "hi"}], "options": None},
        {"role": "assistant", "content": "hello"},
    ]
    history = normalize(gradio_shape) + [{"role": "user", "content": "again"}, error_message("down")]
    assert history[0] == {"role": "user", "content": "hi"}
    assert to_openai(history, "be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert to_openai(history, "  ")[0] == {"role": "user", "content": "hi"}
    assert drop_last_reply(history) == history[:3]


def test_pick_model_keeps_choice_while_served():
    assert pick_model(["a", "b"], "b") == "b"
    assert pick_model(["a", "c"], "b") == "a"
    assert pick_model(["a", "c"], None, 1) == "c"
    assert pick_model([], "b") is None
