"""How ``fleetchat serve`` pairs --model-path with names and re-spells engine flags for workers."""

from __future__ import annotations

import argparse

import pytest

from fleetchat.cli import serve


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level", default="INFO")
    serve.configure(parser)
    return parser.parse_args(argv)


def test_default_models_are_the_embedded_chat_and_embedding_models() -> None:
    specs = serve.model_specs([], [])
    assert [(s.path, s.names, s.embedding) for s in specs] == [
        ("smollm2", (), False), ("all-minilm-l6-v2", (), True)]


def test_names_by_equals_or_by_position() -> None:
    specs = serve.model_specs(["smollm2=a", "smollm2=b,c"], [])
    assert [(s.path, s.names) for s in specs] == [("smollm2", ("a",)), ("smollm2", ("b", "c"))]
    specs = serve.model_specs(["smollm2", "smollm2"], ["x", "y"])
    assert [s.names for s in specs] == [("x",), ("y",)]
    specs = serve.model_specs(["smollm2", "smollm2=z"], ["x"])
    assert [s.names for s in specs] == [("x",), ("z",)]


@pytest.mark.parametrize(("paths", "names"), [([], ["x"]), (["a"], ["x", "y"]), (["a=b"], ["c"])])
def test_inconsistent_names_fail_clearly(paths: list[str], names: list[str]) -> None:
    with pytest.raises(SystemExit):
        serve.model_specs(paths, names)


def test_engine_flags_pass_through_to_workers() -> None:
    args = parse(["--engine", "fake", "--dtype", "float32", "--load-8bit", "--max-running", "8"])
    chat = serve._engine_flags(args, embedding=False)
    assert chat == ["--engine", "fake", "--dtype", "float32", "--load-8bit", "--max-running", "8"]
    assert "--engine" not in serve._engine_flags(args, embedding=True)
    assert serve._engine_flags(parse([]), embedding=False) == []
