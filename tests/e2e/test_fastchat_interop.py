"""FastChat 0.2.36 interop, both directions, with real FastChat code in real processes.

* A FastChat ``fastchat.serve.model_worker`` registers with fleetchat's controller; the controller
  lists it, dispatches to it, proxies its stream, and ``fleetchat test-message`` talks to it.
* The same FastChat worker is served through a real ``fleetchat api``: the official ``openai`` client
  lists it, chats (streamed and not), completes and embeds (the API speaks FastChat's worker protocol
  to it: its conversation template, ``/worker_generate_stream`` frames, ``/worker_get_embeddings``).
* FastChat's own ``fastchat.serve.test_message`` uses fleetchat's controller and worker; and a
  fleetchat worker registers with FastChat's controller.
* Every fschat 0.2.36 conversation template renders through fleetchat's renderers exactly as
  FastChat's ``Conversation.get_prompt``, or is refused by name.

fschat is installed with ``pip install --no-deps --target`` into a cache folder (skipped only when
PyPI cannot be reached). Its controller, model_worker and test_message import with fleetchat's own
dependencies; none of fschat's other requirements (aiohttp, markdown2, nh3, shortuuid, tiktoken, peft,
protobuf) is needed for them. The model is the engine's SmolLM2 folder (made once by the engine's
loader when missing), else a tiny random Llama built here (the protocol is the point, not the text).

Two shims for transformers 5, in the worker's start-up wrapper only: fschat 0.2.36's
``get_context_length`` reads ``config.rope_scaling["factor"]``, which transformers 5 configs no longer
have for unscaled RoPE (a factor-less rope_scaling is treated as none), and its embeddings call
``tokenizer.batch_encode_plus``, which transformers 5 removed (aliased to ``tokenizer(...)``). Nothing
else of FastChat is changed.
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
from fleet_procs import Fleet, free_port, wait_http, wait_until

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
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase as _T
    if not hasattr(_T, "batch_encode_plus"):
        _T.batch_encode_plus = lambda self, texts, **kw: self(texts, **kw)
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


def smollm2_folder() -> Path | None:
    """The engine's dense SmolLM2 folder, made by the engine's loader (in a child process) when missing."""
    cached = sorted((Path.home() / ".cache" / "fleetchat" / "models").glob("smollm2*/model.safetensors"))
    if cached:
        return cached[0].parent
    r = subprocess.run(
        [sys.executable, "-c", "from fleetchat.engines.base import EngineSettings; "
         "from fleetchat.engines.transformers.loader import load_model; "
         "print(load_model(EngineSettings(model_path='smollm2')).folder)"],
        capture_output=True, text=True, timeout=600,
    )
    folder = Path(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else None
    return folder if folder is not None and (folder / "config.json").is_file() else None


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> tuple[Path, str]:
    folder = smollm2_folder()
    if folder is not None:
        return folder, "smollm2-fc"
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


def start_fastchat_worker(fleet: Fleet, fschat_path: Path, model: tuple[Path, str], controller_port: int,
                          tmp_path: Path) -> str:
    """FastChat's model_worker (through the shim) registered with the controller; returns its URL once listed."""
    folder, name = model
    wp = free_port()
    shim = tmp_path / "fastchat_worker.py"
    shim.write_text(SHIM)
    worker_url = f"http://127.0.0.1:{wp}"
    popen, log = start_fastchat(
        fleet, "fastchat-worker",
        [str(shim), "--model-path", str(folder), "--model-names", name, "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(wp), "--worker-address", worker_url,
         "--controller-address", f"http://127.0.0.1:{controller_port}"],
        fschat_path, tmp_path,
    )

    def listed() -> bool:
        assert popen.poll() is None, log.read_text()
        return httpx.post(f"http://127.0.0.1:{controller_port}/list_models").json()["models"] == [name]

    wait_until(listed, 240, interval=0.5, what="FastChat worker registered")
    return worker_url


def test_fastchat_model_worker_joins_a_fleetchat_controller(fleet, fschat_path, model_folder, tmp_path):
    _, name = model_folder
    ctl = free_port()
    fleet.controller(ctl)
    worker_url = start_fastchat_worker(fleet, fschat_path, model_folder, ctl, tmp_path)
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


def test_openai_client_through_fleetchat_api_to_a_fastchat_worker(fleet, fschat_path, model_folder, tmp_path):
    """fleetchat's API serves a FastChat worker: it renders the worker's own conversation template
    (fschat's default ``one_shot`` for this folder) and streams FastChat's frames as OpenAI deltas."""
    import openai

    _, name = model_folder
    ctl = free_port()
    fleet.controller(ctl)
    start_fastchat_worker(fleet, fschat_path, model_folder, ctl, tmp_path)
    ap = free_port()
    api = fleet.start("api", ["api", "--port", str(ap), "--controller-address", f"http://127.0.0.1:{ctl}"])
    wait_http(f"http://127.0.0.1:{ap}/health", api)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ap}/v1", api_key="EMPTY", max_retries=0, timeout=120)
    real_model = name == "smollm2-fc"  # the tiny random fallback model says nothing sensible

    assert [m.id for m in client.models.list()] == [name]

    ask = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=name, messages=ask, temperature=0, max_tokens=16)
    answer = r.choices[0].message.content
    assert answer.strip() and "\ufffd" not in answer and "###" not in answer  # one_shot's stop string
    assert not real_model or "Paris" in answer, answer
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 100  # one_shot's worked example is in the prompt
    assert 0 < r.usage.completion_tokens <= 16

    chunks = list(client.chat.completions.create(model=name, messages=ask, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer  # greedy: the same text, streamed as deltas
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens

    c = client.completions.create(model=name, prompt="The capital of France is", temperature=0, max_tokens=6)
    assert c.choices[0].text.strip() and c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0
    assert not real_model or "Paris" in c.choices[0].text, c.choices[0].text

    e = client.embeddings.create(model=name, input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) > 10 and e.data[0].embedding != e.data[1].embedding

    # a prompt longer than the worker's context is refused before generating, as FastChat's API does
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=name, prompt="hello " * 10000, max_tokens=4)
    assert info.value.code == "context_length_exceeded"


FASTCHAT_TEMPLATES = textwrap.dedent(
    """
    import dataclasses, json
    from fastchat.conversation import conv_templates
    CHATS = [
        [["user", "What is the capital of France?"]],
        [["system", "Be brief."], ["user", "A"], ["assistant", "B"], ["user", "C"]],
    ]
    out = []
    for name, template in conv_templates.items():
        d = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)}
        if d["sep_style"] is None:  # e.g. API-only templates: nothing to render
            continue
        d["sep_style"] = int(d["sep_style"])
        for chat in CHATS:
            conv = template.copy()
            for role, text in chat:
                if role == "system":
                    conv.set_system_message(text)
                else:
                    conv.append_message(conv.roles[0 if role == "user" else 1], text)
            conv.append_message(conv.roles[1], None)
            out.append({"conv": d, "chat": chat, "prompt": conv.get_prompt(), "style": conv.sep_style.name})
    print(json.dumps(out))
    """
)


def test_every_fschat_template_renders_like_fastchat(fschat_path, tmp_path):
    """What fleetchat's API does with a FastChat worker's /worker_get_conv_template, for each of fschat
    0.2.36's templates: render exactly as FastChat's get_prompt, or refuse the style by name."""
    from fleetchat.conversation.template import template_from_fastchat_dict
    from fleetchat.errors import InvalidParameterError
    from fleetchat.protocol.generation import ChatMessage

    env = {**os.environ, **fastchat_env(fschat_path)}
    r = subprocess.run([sys.executable, "-c", FASTCHAT_TEMPLATES], capture_output=True, text=True, env=env,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rendered, refused = set(), set()
    for item in json.loads(r.stdout):
        wire = json.loads(json.dumps(item["conv"]))
        try:
            template = template_from_fastchat_dict(wire)
        except InvalidParameterError as exc:
            assert item["style"] in exc.message
            refused.add(item["style"])
            continue
        chat = [ChatMessage(role=role, content=text) for role, text in item["chat"]]
        assert template.render(chat) == item["prompt"], item["conv"]["name"]
        rendered.add(item["conv"]["name"])
    assert len(rendered) >= 60 and {"one_shot", "vicuna_v1.1", "llama-2", "chatglm2", "zephyr"} <= rendered
    assert refused <= {"CHATINTERN", "DOLLY", "RWKV", "PHOENIX", "ROBIN", "FALCON_CHAT", "CHATGLM3",
                       "DEEPSEEK_CHAT", "METAMATH", "YUAN2"}
