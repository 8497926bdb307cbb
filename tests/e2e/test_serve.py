"""``fleetchat serve`` as a process: two names for one model, Ctrl-C, and a child that dies at start."""

from __future__ import annotations

import signal

import openai
import pytest
from serve_process import alive, children_of, start_serve

pytestmark = pytest.mark.slow


def test_same_model_twice_under_two_names_then_ctrl_c() -> None:
    sp = start_serve(["--engine", "fake", "--model-path", "smollm2=chat-a", "--model-path", "smollm2=chat-b"],
                     n_workers=2, timeout=180)
    try:
        client = openai.OpenAI(base_url=sp.api_url, api_key="none", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["chat-a", "chat-b"]
        for name in ("chat-a", "chat-b"):
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert r.model == name and r.usage.completion_tokens == 3
        kids = children_of(sp.proc.pid)
        assert len(kids) == 4
    finally:
        code = sp.stop(signal.SIGINT)
    assert code == 0
    assert [pid for pid in kids if alive(pid)] == []


def test_a_child_that_dies_at_start_is_named_with_its_log() -> None:
    sp = start_serve(["--model-path", "/nonexistent/model-dir"], n_workers=1, wait=False)
    code = sp.proc.wait(timeout=120)
    sp.stop()
    assert code == 1
    assert "worker /nonexistent/model-dir exited with code 1" in sp.output
    assert "does not exist" in sp.output  # the worker's own last log line is shown
