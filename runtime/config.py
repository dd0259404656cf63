"""One config style for every command: a typed dataclass -> command-line flags -> saved JSON.

A command's settings are one dataclass. :func:`config_parser` turns its fields into flags
(``batch_size`` -> ``--batch-size``; ``bool`` -> ``--x/--no-x``; ``list``/``tuple`` -> several
values, or one comma-separated value with ``sep: ","``; a positional field with a default is
optional; a field's ``metadata`` may add ``help``, ``choices``, ``metavar``, ``nargs``,
``required``, ``positional``, ``flag`` (another flag name), ``switch`` (a ``bool`` as one flag
that flips its default: ``--x``, or ``--no-x`` when the default is True), or ``cli: False`` to
keep it off the command line; ``(default: ...)`` is added to a help text unless it already
speaks of its default, the default is None, or the field is a switch); a default that depends
on the machine is a ``default_factory`` (called when the parser is built); a field whose type
is itself a config dataclass is a group: its fields become flags of their own (flat names, no
prefix) under a titled section of ``--help`` (metadata ``title``), so that commands share
option groups (the model, publishing, batching) as types; :func:`parse_config` builds the
config from defaults and the flags given
(:func:`dataclass_from_args` also takes a base: a preset, a saved config for ``--resume``;
:func:`parse_config`'s ``presets`` name a ``bool`` field whose flag turns a preset on, e.g.
``--quick``);
:func:`save_config` writes it as JSON next to what the command made, and
:func:`config_from_dict` reads it back.

Presets are data: a dict of field overrides, passed as ``base`` under the flags (the training
stages take theirs from ``trainer.presets`` via their ``preset`` field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.artifacts import atomic_write_json
from runtime.errors import S2IError

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``tuple[int, ...]`` -> ``tuple``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _inner_type(tp: Any) -> Any:
    """The element type of ``list[int] | None`` / ``tuple[float, ...]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    inner = typing.get_args(tp)
    return inner[0] if inner else str


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def add_dataclass_args(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """One ``--field-name`` option (or positional argument) per dataclass field; a dataclass
    field adds its own fields as a titled argument group."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[field.name])
        if _is_group(tp):
            title = field.metadata.get("title", field.name.replace("_", " "))
            add_dataclass_args(parser.add_argument_group(title, field.metadata.get("help")), tp)
            continue
        default = _default(field)
        required = default is dataclasses.MISSING or bool(field.metadata.get("required"))
        help_text = field.metadata.get("help", "")
        if default not in (dataclasses.MISSING, None) and not required \
                and not field.metadata.get("switch") and "default" not in help_text:
            shown = default
            if tp in (tuple, list) and default:     # as it is typed: 1 8 64, or 4,8,16
                shown = field.metadata.get("sep", " ").join(map(str, default))
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text.strip()}
        for key in ("choices", "metavar"):
            if key in field.metadata:
                kwargs[key] = field.metadata[key]
        if tp in (tuple, list) and "sep" in field.metadata:
            kwargs["type"] = _split(_inner_type(hints[field.name]), field.metadata["sep"])
        elif tp in (tuple, list):
            kwargs.update(nargs=field.metadata.get("nargs", "+"),
                          type=_inner_type(hints[field.name]))
        elif tp is bool and field.metadata.get("switch"):
            kwargs.update(action="store_const", const=not default)
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp if tp in (int, float, str, Path) else str
        if field.metadata.get("positional"):
            if not required:
                kwargs.update(nargs="*" if kwargs.get("nargs") == "+" else "?", default=None)
            parser.add_argument(field.name, **kwargs)
            continue
        flag = field.metadata.get("flag") or "--" + ("no-" if field.metadata.get("switch")
                                                      and default else "") \
            + field.name.replace("_", "-")
        parser.add_argument(flag, dest=field.name, default=None, required=required, **kwargs)


def _split(item: Callable[[str], Any], sep: str) -> Callable[[str], list[Any]]:
    """``"4,8,16"`` -> ``[4, 8, 16]`` (argparse names the type in its error line)."""
    def split(text: str) -> list[Any]:
        return [item(part) for part in text.split(sep)]

    split.__name__ = f"{sep!r}-separated {getattr(item, '__name__', 'value')} list"
    return split


def switch(help_text: str) -> Any:
    """A ``bool`` field that is a plain ``--x`` switch (False unless given; no ``--no-x``)."""
    return dataclasses.field(default=False, metadata={"switch": True, "help": help_text})


def config_parser(cls: type, prog: str, description: str | None = None
                  ) -> argparse.ArgumentParser:
    """The command-line parser of a config dataclass."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, cls)
    return parser


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **base: Any) -> T:
    """Defaults, then ``base`` values (a preset, a saved config), then the flags given."""
    values = dict(base)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init or field.metadata.get("cli") is False:
            continue                    # not on the command line: defaults and base only
        tp = _base_type(hints[field.name])
        if _is_group(tp):
            inner = values.get(field.name, {})
            inner = config_json(inner) if dataclasses.is_dataclass(inner) else dict(inner)
            values[field.name] = dataclass_from_args(tp, args, **inner)
            continue
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return make_config(cls, values)


def parse_config(cls: type[T], argv: Sequence[str], prog: str,
                 description: str | None = None,
                 presets: Mapping[str, Mapping[str, Any]] | None = None) -> T:
    """The config of a command line (``config_parser`` + ``dataclass_from_args``); each
    ``presets[name]`` (field overrides) is the base when the ``bool`` field ``name`` is
    given, under the other flags."""
    args = config_parser(cls, prog, description).parse_args(argv)
    base: dict[str, Any] = {}
    for name, overrides in (presets or {}).items():
        if getattr(args, name, None):
            base.update(overrides)
    return dataclass_from_args(cls, args, **base)


def make_config(cls: type[T], values: dict[str, Any]) -> T:
    """``cls(**values)`` with JSON/CLI lists turned into tuples where the field is a tuple;
    an invalid value is one ``S2IError`` line."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise S2IError(f"{cls.__name__} has no settings {unknown}")
    hints = typing.get_type_hints(cls)
    fixed = {}
    for k, v in values.items():
        tp = _base_type(hints[k])
        if _is_group(tp) and isinstance(v, dict):
            v = make_config(tp, v)
        elif isinstance(v, list) and tp is tuple:
            v = tuple(v)
        fixed[k] = v
    try:
        return cls(**fixed)
    except (TypeError, ValueError) as exc:
        raise S2IError(f"invalid {cls.__name__}: {exc}") from exc


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """A saved config (JSON) back as its dataclass."""
    return make_config(cls, dict(data))


def config_json(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as JSON (atomically)."""
    atomic_write_json(path, config_json(config))
