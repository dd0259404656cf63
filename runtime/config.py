"""Typed dataclass configs with command-line overrides (``--batch-size 32``), saved as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import S2IError
from runtime.manifest import atomic_write_json

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``tuple[int, ...]`` -> ``tuple``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per dataclass field; help shows the default."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        tp = _base_type(hints[field.name])
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        help_text = field.metadata.get("help", "") + f" (default: {default})"
        if tp is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif tp in (tuple, list):
            inner = typing.get_args(hints[field.name])
            parser.add_argument(flag, dest=field.name, nargs="+", default=None,
                                type=inner[0] if inner else str, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, default=None,
                                type=tp if tp in (int, float, str) else str, help=help_text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **base: Any) -> T:
    """Defaults, then ``base`` values, then whatever was given on the command line."""
    values = dict(base)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = tuple(given) if isinstance(given, list) else given
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise S2IError(f"invalid {cls.__name__}: {exc}") from exc


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise S2IError(f"{cls.__name__} has no settings {unknown}")
    hints = typing.get_type_hints(cls)
    fixed = {k: tuple(v) if isinstance(v, list) and _base_type(hints[k]) is tuple else v
             for k, v in data.items()}
    return cls(**fixed)


def save_config(config: Any, path: str | Path) -> None:
    atomic_write_json(path, dataclasses.asdict(config))
