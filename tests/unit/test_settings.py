import argparse
from dataclasses import dataclass

import pytest

from fleetchat.settings import add_arguments, from_args, option


@dataclass(frozen=True)
class DemoSettings:
    host: str = option("127.0.0.1", help="address to bind")
    port: int = option(21001, help="port")
    api_keys: tuple[str, ...] = option((), help="keys")
    debug: bool = option(False, help="debug")
    ratio: float | None = option(None, help="a ratio")
    mode: str = option("a", help="mode", choices=("a", "b"))


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, DemoSettings)
    return p.parse_args(argv)


def test_defaults_when_nothing_given(monkeypatch):
    monkeypatch.delenv("FLEETCHAT_PORT", raising=False)
    s = from_args(DemoSettings, parse([]))
    assert s == DemoSettings()


def test_flags_override_env_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("FLEETCHAT_PORT", "3000")
    monkeypatch.setenv("FLEETCHAT_DEBUG", "true")
    assert from_args(DemoSettings, parse([])).port == 3000
    assert from_args(DemoSettings, parse([])).debug is True
    assert from_args(DemoSettings, parse(["--port", "4000"])).port == 4000


def test_tuples_accept_comma_lists_and_repeats():
    s = from_args(DemoSettings, parse(["--api-keys", "k1,k2", "--api-keys", "k3"]))
    assert s.api_keys == ("k1", "k2", "k3")


def test_optional_float_and_choices():
    s = from_args(DemoSettings, parse(["--ratio", "0.5", "--mode", "b"]))
    assert s.ratio == 0.5 and s.mode == "b"
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FLEETCHAT_PORT", "not-a-number")
    with pytest.raises(SystemExit) as exc:
        from_args(DemoSettings, parse([]))
    assert "FLEETCHAT_PORT" in str(exc.value)


def test_settings_are_frozen():
    s = from_args(DemoSettings, parse([]))
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
