"""``fleetchat chat`` end to end: the real CLI in a subprocess on the real embedded SmolLM2 model.

Each test is one process (one model load); stdin is a pipe, so each line is one user turn and each
reply is printed followed by a blank line. Greedy decoding (the scripted default, or --temperature 0)
keeps the 135M model's answers reproducible.

The follow-up that needs the previous turn is "Repeat your previous answer.": with the history the
model repeats "The capital of France is Paris."; after ``!!reset`` the same question has nothing to
refer to and no Paris appears (checked below, so the follow-up proves the history is used).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

QUESTION = "What is the capital of France?"
FOLLOW_UP = "Repeat your previous answer."


def run_chat(lines: list[str], *flags: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetchat.cli.main", "chat", *flags],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replies_of(stdout: str) -> list[str]:
    """The replies exactly, from ``--debug``'s JSON ``outputs`` lines (a reply may hold blank lines)."""
    return [json.loads(line.split(": ", 1)[1]) for line in stdout.splitlines() if line.startswith("[debug] outputs: ")]


def prompts_of(stdout: str) -> list[str]:
    return [json.loads(line.split(": ", 1)[1]) for line in stdout.splitlines() if line.startswith("[debug] prompt: ")]


@pytest.mark.slow
def test_scripted_chat_uses_history_and_commands(tmp_path) -> None:
    saved = tmp_path / "conv.json"
    proc = run_chat(
        [
            QUESTION,
            FOLLOW_UP,
            f"!!save {saved}",
            "!!reset",
            FOLLOW_UP,
            f"!!load {saved}",
            FOLLOW_UP,
        ],
        # no --temperature: scripted chats decode greedily by default (the README's command)
        "--model-path", "smollm2", "--max-new-tokens", "24", "--debug",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    replies, prompts = replies_of(proc.stdout), prompts_of(proc.stdout)
    assert len(replies) == 4 and len(prompts) == 4, proc.stdout
    first, follow_up, after_reset, _ = replies
    assert proc.stdout.startswith(first + "\n\n[debug]")  # each reply, then a blank line
    assert "Paris" in first
    assert "Paris" in follow_up  # answered from the previous turn ...
    assert "Paris" not in after_reset  # ... the same words without the history have nothing to repeat
    assert QUESTION in prompts[1] and first in prompts[1]
    assert QUESTION not in prompts[2]  # !!reset cleared the history
    # !!load brought the saved conversation back exactly: the saved turns, then the new question
    assert prompts[3].startswith(prompts[1] + follow_up) and prompts[3].count(FOLLOW_UP) == 2
    # status lines go to stderr, never into the transcript
    assert "conversation reset" in proc.stderr and "loaded 4 messages" in proc.stderr
    assert "loading" not in proc.stdout and "conversation reset" not in proc.stdout

    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][0]["content"] == QUESTION and data["messages"][1]["content"] == first
    assert data["messages"][3]["content"] == follow_up


@pytest.mark.slow
def test_debug_line_with_8bit_weights() -> None:
    proc = run_chat(
        [QUESTION],
        "--model-path", "smollm2", "--load-8bit", "--temperature", "0", "--max-new-tokens", "24", "--debug",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Paris" in replies_of(out)[0]
    speed = re.search(r"\[debug\] speed: ([0-9.]+) tokens/s \((\d+) tokens in ([0-9.]+) s", out)
    assert speed is not None, out
    assert float(speed.group(1)) > 0 and int(speed.group(2)) > 0
    assert "quantization int8" in out
    assert "dtype " in out and "conv_template: tokenizer-chat-template" in out
    prompt_line = next(line for line in out.splitlines() if line.startswith("[debug] prompt:"))
    assert QUESTION in prompt_line and "<|im_start|>assistant" in prompt_line


def test_wrong_model_path_is_one_line() -> None:
    proc = run_chat(["hello"], "--model-path", "/no/such/model-dir", timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "does not exist" in lines[0] and "Traceback" not in proc.stderr
