"""What S2I writes to disk: the format/version stamp every saved artifact carries, and the
guard that never replaces a folder S2I did not write (or one holding a person's work)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.errors import S2IError


def check_format(data: Any, where: str | Path, kind: str, fmt: str, version: int,
                 remedy: str = "") -> dict[str, Any]:
    """``data`` (a loaded JSON object) is an S2I ``kind`` of format ``fmt``, version
    ``version``; otherwise one ``S2IError`` line naming ``where`` and what was expected."""
    hint = f"; {remedy}" if remedy else ""
    got = data.get("format") if isinstance(data, dict) else None
    if got != fmt:
        raise S2IError(f"{where} is not an S2I {kind} (format {got!r}, expected {fmt!r}){hint}")
    if data.get("version") != version:
        raise S2IError(f"{where} has {kind} version {data.get('version')!r}, this S2I reads "
                       f"version {version}{hint}")
    return data


def manifest_format(folder: str | Path) -> object:
    """The ``format`` field of ``folder/manifest.json``; None if missing or unreadable (what
    kind of S2I folder this is, before replacing it)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def check_replaceable(out: str | Path, what: str, fmt: str | None = None,
                      never: Mapping[str, str] | None = None, overwrite: bool = True) -> None:
    """May ``out`` be written (and an earlier one replaced as a whole)?

    Refused: something that is not a folder; a folder holding any of the ``never`` files
    (``name -> what it is``, e.g. ``labels.json``: labels a person gave); a non-empty
    folder whose ``manifest.json`` is not of format ``fmt`` (when given: something else
    lives there); any non-empty folder unless ``overwrite``. ``what`` names the output in
    the message ("S2I export")."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise S2IError(f"{out} exists and is not a folder; choose another --out")
    for name, holds in (never or {}).items():
        if (out / name).exists():
            raise S2IError(f"{out} holds {name} ({holds}); refusing to replace it: choose "
                           "another --out")
    if not any(out.iterdir()):
        return
    if fmt is not None and manifest_format(out) != fmt:
        raise S2IError(f"{out} is not empty and holds no {what} (no manifest.json of format "
                       f"{fmt!r}); it is left untouched, choose another --out")
    if not overwrite:
        raise S2IError(f"{out} already exists; pass --overwrite to replace it")
