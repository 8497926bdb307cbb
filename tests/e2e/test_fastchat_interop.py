"""FastChat 0.2.36 interop, both directions, with real FastChat code in real processes.

* A FastChat ``fastchat.serve.model_worker`` registers with fleetchat's controller; the controller
  lists it, dispatches to it, proxies its stream, and ``fleetchat test-message`` talks to it.
* FastChat's own ``fastchat.serve.test_message`` uses fleetchat's controller and worker; and a
  fleetchat worker registers with FastChat's controller.

fschat is installed with ``pip install --no-deps --target`` into a cache folder (skipped only when
PyPI cannot be reached). Its controller, model_worker and test_message import with fleetchat's own
dependencies; none of fschat's other requirements (aiohttp, markdown2, nh3, shortuuid, tiktoken, peft,
protobuf) is needed for them. The model is the engine's SmolLM2 folder cache when present, else a
tiny random Llama built here (the protocol is the point, not the text).

One shim: fschat 0.2.36's ``get_context_length`` reads ``config.rope_scaling["factor"]``, which
transformers 5 configs no longer have for unscaled RoPE; the worker is started through a 6-line
wrapper that treats a factor-less rope_scaling as none. Nothing else of FastChat is changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from fleet_procs import Fleet, free_port, wait_until

from fleetchat.protocol.fastchat import parse_frames

pytestmark = pytest.mark.slow

FSCHAT = "fschat==0.2.36"
CACHE = Path(os.environ.get("FLEETCHAT_TEST_CACHE", Path.home() / ".cache" / "fleetchat" / "test-deps"))

SHIM = textwrap.dedent(
    """
    import runpy
    import fastchat.utils as u
    _orig = u.get_context_length
    def get_context_length(config):
        rs = getattr(config, "rope_scaling", None)
        if isinstance(rs, dict) and "factor" not in rs:
            config.rope_scaling = None
        return _orig(config)
    u.get_context_length = get_context_length
    runpy.run_module("fastchat.serve.model_worker", run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def fschat_path() -> Path:
    target = CACHE / "fschat-0.2.36"
    if not (target / "fastchat" / "serve" / "model_worker.py").is_file():
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), FSCHAT],
            capture_output=True, text=True, timeout=300,
        )
        if r.returncode != 0:
            if "Could not find" in r.stderr or "connection" in r.stderr.lower() or "resolve" in r.stderr.lower():
                pytest.skip(f"PyPI unreachable, cannot install {FSCHAT}: {r.stderr.strip().splitlines()[-1]}")
            raise AssertionError(f"pip install {FSCHAT} failed:\n{r.stderr}")
    return target


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> tuple[Path, str]:
    cached = sorted((Path.home() / ".cache" / "fleetchat" / "models").glob("smollm2*/model.safetensors"))
    if cached:
        return cached[0].parent, "smollm2-fc"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fleetchat.engines.resolve import resolve_model

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(str(resolve_model("all-minilm-l6-v2").directory))
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out, "tiny-llama-fc"


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def fastchat_env(fschat_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(fschat_path), "PATH": os.environ.get("PATH", "")}


def start_fastchat(fleet: Fleet, name: str, args: list[str], fschat_path: Path, cwd: Path):
    """Start a FastChat module (or the shimmed model_worker) as a process of the fleet."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLEETCHAT_")}, **fastchat_env(fschat_path)}
    log = open(fleet.log_dir / f"{name}.log", "w")  # noqa: SIM115
    popen = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    class P:  # quacks like fleet_procs.Proc for Fleet.close()
        def kill(self):
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)
            log.close()

    fleet.procs.append(P())
    return popen, fleet.log_dir / f"{name}.log"


def test_fastchat_model_worker_joins_a_fleetchat_controller(fleet, fschat_path, model_folder, tmp_path):
    folder, name = model_folder
    ctl = free_port()
    fleet.controller(ctl)
    wp = free_port()
    shim = tmp_path / "fastchat_worker.py"
    shim.write_text(SHIM)
    worker_url = f"http://127.0.0.1:{wp}"
    popen, log = start_fastchat(
        fleet, "fastchat-worker",
        [str(shim), "--model-path", str(folder), "--model-names", name, "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(wp), "--worker-address", worker_url,
         "--controller-address", f"http://127.0.0.1:{ctl}"],
        fschat_path, tmp_path,
    )

    def listed() -> bool:
        assert popen.poll() is None, log.read_text()
        return httpx.post(f"http://127.0.0.1:{ctl}/list_models").json()["models"] == [name]

    wait_until(listed, 240, interval=0.5, what="FastChat worker registered")
    base = f"http://127.0.0.1:{ctl}"
    assert httpx.post(base + "/get_worker_address", json={"model": name}).json() == {"address": worker_url}
    httpx.post(base + "/refresh_all_workers", timeout=30)
    [row] = httpx.get(base + "/workers").json()
    assert row["address"] == worker_url and row["reachable"] is True and row["models"] == [name]

    params = {"model": name, "prompt": "Hello, my name is", "temperature": 0, "max_new_tokens": 6, "echo": False}
    direct = httpx.post(worker_url + "/worker_generate_stream", json=params, timeout=120)
    items, rest = parse_frames(direct.content)
    assert rest == b"" and items and all(i["error_code"] == 0 for i in items)
    assert items[-1]["finish_reason"] in ("stop", "length") and items[-1]["usage"]["prompt_tokens"] > 0
    # through fleetchat's controller acting as a worker (FastChat's hierarchical mode)
    proxied = httpx.post(base + "/worker_generate_stream", json=params, timeout=120)
    p_items, _ = parse_frames(proxied.content)
    assert p_items[-1]["text"] == items[-1]["text"]  # greedy: same text

    # fleetchat's own test-message falls back to the FastChat protocol for a FastChat worker
    r = subprocess.run(
        [sys.executable, "-m", "fleetchat.cli.main", "test-message", "--controller-address", base,
         "--model-name", name, "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"worker_addr: {worker_url}" in r.stdout and "assistant:" in r.stdout


def test_fastchat_clients_and_controller_with_fleetchat_workers(fleet, fschat_path, tmp_path):
    # FastChat's test_message against fleetchat's controller + worker
    ctl = free_port()
    fleet.controller(ctl)
    wp = free_port()
    fleet.worker(wp, ctl, "--engine", "fake", "--model-path", "fake-model", "--heartbeat-interval", "0.5")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{ctl}/workers").json() != [], 60, what="registered")
    env = {**os.environ, **fastchat_env(fschat_path)}
    r = subprocess.run(
        [sys.executable, "-m", "fastchat.serve.test_message", "--controller-address", f"http://127.0.0.1:{ctl}",
         "--model-name", "fake-model", "--max-new-tokens", "5"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Models: ['fake-model']" in r.stdout and f"worker_addr: http://127.0.0.1:{wp}" in r.stdout
    reply = r.stdout.strip().splitlines()[-1]
    assert len(reply.split(":", 1)[1].split()) == 5  # five fake tokens came through the \0 framing

    # a fleetchat worker registers with FastChat's own controller and serves FastChat's client
    fc_port = free_port()
    fc_popen, fc_log = start_fastchat(
        fleet, "fastchat-controller",
        ["-m", "fastchat.serve.controller", "--host", "127.0.0.1", "--port", str(fc_port)], fschat_path, tmp_path,
    )
    fc = f"http://127.0.0.1:{fc_port}"

    def fc_up() -> bool:
        assert fc_popen.poll() is None, fc_log.read_text()
        try:
            return httpx.get(fc + "/test_connection", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(fc_up, 120, interval=0.3, what="FastChat controller up")
    wp2 = free_port()
    fleet.worker(wp2, fc_port, "--engine", "fake", "--model-path", "fake-model", "--model-names", "fake-on-fc")
    wait_until(lambda: httpx.post(fc + "/list_models").json()["models"] == ["fake-on-fc"], 60, what="listed by FastChat")
    r = subprocess.run(
        [sys.executable, "-m", "fastchat.serve.test_message", "--controller-address", fc,
         "--model-name", "fake-on-fc", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert f"worker_addr: http://127.0.0.1:{wp2}" in r.stdout
    assert len(r.stdout.strip().splitlines()[-1].split(":", 1)[1].split()) == 3


RENDER = textwrap.dedent(
    """
    import json, sys
    from fastchat.conversation import Conversation, SeparatorStyle
    c = json.loads(sys.stdin.read())
    # exactly what fschat 0.2.36's openai_api_server does with /worker_get_conv_template
    conv = Conversation(
        name=c["name"], system_template=c["system_template"], system_message=c["system_message"],
        roles=c["roles"], messages=list(c["messages"]), offset=c["offset"],
        sep_style=SeparatorStyle(c["sep_style"]), sep=c["sep"], sep2=c["sep2"],
        stop_str=c["stop_str"], stop_token_ids=c["stop_token_ids"],
    )
    conv.append_message(conv.roles[0], "What is the capital of France?")
    conv.append_message(conv.roles[1], None)
    print(json.dumps(conv.get_prompt()))
    """
)


def test_fastchat_renders_a_fleetchat_workers_template_like_the_worker(fleet, fschat_path, tmp_path):
    """FastChat's API server builds prompts from /worker_get_conv_template: its rendering must match
    the prompt the worker itself renders for the same chat."""
    pytest.importorskip("fleetchat.engines.transformers")
    wp = free_port()
    w = fleet.start("smollm2", ["worker", "--port", str(wp), "--no-register", "--model-path", "smollm2"])
    wait_until(lambda: w.popen.poll() is None and _up(f"http://127.0.0.1:{wp}/health"), 180, 0.3, "worker up")
    url = f"http://127.0.0.1:{wp}"
    conv = httpx.post(url + "/worker_get_conv_template", json={}).json()["conv"]
    env = {**os.environ, **fastchat_env(fschat_path)}
    r = subprocess.run([sys.executable, "-c", RENDER], input=json.dumps(conv), capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fastchat_prompt = json.loads(r.stdout)
    ours = httpx.post(url + "/v1/generate", json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "params": {"max_new_tokens": 1}, "echo": True}, timeout=60)
    first = json.loads(ours.text.splitlines()[0])
    our_prompt = first["text"]
    assert our_prompt.startswith(fastchat_prompt) or fastchat_prompt.strip() == our_prompt[: len(fastchat_prompt)].strip(), (
        f"FastChat renders {fastchat_prompt!r} but the worker renders {our_prompt!r}"
    )


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
