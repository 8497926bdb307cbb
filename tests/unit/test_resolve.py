import pytest

from fleetchat.engines.resolve import default_model_name, is_embedding_model, resolve_model
from fleetchat.errors import ModelLoadError


def test_embedded_chat_model_is_found_inside_its_package():
    m = resolve_model("smollm2")
    assert m.source == "embedded" and m.kind == "chat"
    assert m.gguf_file and (m.directory / m.gguf_file).is_file()
    assert m.name == "smollm2-135m-instruct"


def test_embedded_embedding_model():
    m = resolve_model("all-minilm-l6-v2")
    assert m.kind == "embedding" and (m.directory / "config.json").is_file()
    assert is_embedding_model("all-minilm-l6-v2") and not is_embedding_model("smollm2")


def test_local_gguf_file_and_folder(tmp_path):
    f = tmp_path / "tiny-model.Q8_0.gguf"
    f.write_bytes(b"GGUF")
    m = resolve_model(str(f))
    assert m.gguf_file == f.name and m.directory == tmp_path and m.name == "tiny-model.Q8_0"
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert resolve_model(str(d)).gguf_file is None


def test_readable_default_names():
    assert default_model_name("/models/vicuna-7b-v1.5/") == "vicuna-7b-v1.5"
    assert default_model_name("org/Some-Model") == "Some-Model"
    assert default_model_name("smollm2") == "smollm2-135m-instruct"


def test_missing_local_path_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./no/such/model")


def test_hub_repo_without_network_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"cannot download org/absent-model: .*; pass a local path"):
        resolve_model("org/absent-model")
