"""Frozen settings objects turned into CLI flags and ``FLEETCHAT_*`` environment variables.

Each component declares one frozen dataclass whose fields are made with :func:`option` (help text,
flag spelling, choices). :func:`add_arguments` turns it into argparse flags and
:func:`from_args` back into the frozen object, so flags, env vars and defaults live in one place.
Precedence: command-line flag, then ``FLEETCHAT_<PREFIX><FIELD>`` in the environment, then the default,
where ``<PREFIX>`` is the class's ``env_prefix`` (e.g. ``WEB_`` so that ``FLEETCHAT_WEB_PORT`` moves only
the web UI). A bad value fails at start-up with a message naming the flag or variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()


def option(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    choices: tuple[Any, ...] | None = None,
    aliases: tuple[str, ...] = (),
    env: str | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """A settings field. ``flag`` defaults to ``--field-name``; ``aliases`` adds spellings; ``env``
    names the environment variable when it must be shared across components."""
    meta = {"help": help, "flag": flag, "choices": choices, "aliases": aliases, "env": env}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_name(field_name: str, cls: type | None = None) -> str:
    """``FLEETCHAT_<env_prefix><FIELD>``, or the field's own ``env=`` name."""
    if cls is not None:
        for f in dataclasses.fields(cls):
            if f.name == field_name and f.metadata.get("env"):
                return f.metadata["env"]
    prefix = getattr(cls, "env_prefix", "") if cls is not None else ""
    return "FLEETCHAT_" + prefix.upper() + field_name.upper()


def _base_type(tp: Any) -> Any:
    """For ``X | None`` return X; for tuple[str, ...] return tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin is tuple:
        return tuple
    return tp


def _parse(field: dataclasses.Field, tp: Any, raw: Any) -> Any:
    base = _base_type(tp)
    if raw is None:
        return None
    if base is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if base is tuple:
        if isinstance(raw, (list, tuple)):
            items = [str(x) for x in raw]
        else:
            items = [str(raw)]
        # accept both repeated flags and comma lists
        out: list[str] = []
        for item in items:
            out.extend(p.strip() for p in item.split(",") if p.strip())
        return tuple(out)
    if base in (int, float, str):
        return base(raw)
    return raw


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the settings dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in skip or "help" not in field.metadata:
            continue
        tp = hints[field.name]
        base = _base_type(tp)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata["help"]
        if default not in (None, (), "", False):
            help_text += f" (default: {default if not isinstance(default, tuple) else ','.join(map(str, default))})"
        help_text += f" [env {env_name(field.name, cls)}]"
        names = [_flag(field), *field.metadata.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif base is tuple:
            kwargs["action"] = "append"
            kwargs["metavar"] = field.name.upper().rstrip("S") or "VALUE"
        else:
            kwargs["metavar"] = field.name.upper()
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
                kwargs.pop("metavar")
        group.add_argument(*names, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace | None = None, **overrides: Any) -> T:
    """Build the frozen settings from parsed flags, then env vars, then defaults.

    Raises ``SystemExit`` with a message naming the flag when a value does not parse.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    ns = vars(args) if args is not None else {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        source, raw = None, _MISSING
        if field.name in ns:
            source, raw = _flag(field), ns[field.name]
        elif env_name(field.name, cls) in os.environ:
            source, raw = env_name(field.name, cls), os.environ[env_name(field.name, cls)]
        if raw is _MISSING:
            continue
        try:
            value = _parse(field, hints[field.name], raw)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"error: invalid value for {source}: {exc}") from None
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise SystemExit(f"error: {source} must be one of {', '.join(map(str, choices))}, got {value!r}")
        values[field.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
