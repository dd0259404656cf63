"""What S2I writes to disk: the one safe reader of its JSON files, the format/version stamp
every saved artifact carries, and the guard that never replaces a folder S2I did not write
(or one holding a person's work).

Every JSON file S2I reads (export, store and classifier manifests, labels, samples indexes,
run configs and metrics, the stamps inside ONNX files) goes through :func:`load_json` /
:func:`parse_json`: whatever the bytes (too large, not UTF-8, not JSON, a 5,000-digit number,
nesting 100,000 levels deep, a NUL or a lone surrogate in a string), the only error is one
``S2IError`` line naming the file. :func:`check_tree` bounds a loaded value's depth and size
without recursion, and is also run over every checkpoint's unpickled contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runtime.errors import S2IError

MAX_JSON_BYTES = 64 << 20   # the largest S2I JSON file (a store's ids.json) is a few MB
MAX_DEPTH = 32              # S2I's own files nest at most 6 levels
MAX_ITEMS = 10_000_000      # values (dict keys included) in one loaded file
MAX_INT_DIGITS = 30         # every count S2I writes fits in 20 digits (2**64)


class _NumberTooLong(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:   # + 1: the sign
        raise _NumberTooLong(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def parse_json(text: str | bytes, where: str | Path) -> Any:
    """``text`` as JSON, checked with :func:`check_tree`; anything else is one ``S2IError``
    line naming ``where``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_int=_parse_int)
    except UnicodeDecodeError as exc:
        raise S2IError(f"{where} is not valid JSON: not UTF-8 text (byte {exc.start})") from exc
    except _NumberTooLong as exc:
        raise S2IError(f"{where} is not valid S2I JSON: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise S2IError(f"{where} is not valid JSON: {exc}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # digit limit, deep nesting
        raise S2IError(f"{where} is not valid S2I JSON: "
                       f"{'nested too deeply' if isinstance(exc, RecursionError) else exc}"
                       ) from exc
    check_tree(value, where)
    return value


def load_json(path: str | Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path`` (``what``: "export manifest", "labels file"...): a missing,
    unreadable, oversized or malformed file is one ``S2IError`` line naming it."""
    path = Path(path)
    try:
        if not path.is_file():
            raise S2IError(f"{what} not found: {path}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except (OSError, ValueError) as exc:   # ValueError: a NUL in the path
        raise S2IError(f"cannot read {what} {path}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from exc
    if len(data) > max_bytes:
        raise S2IError(f"{what} {path} is larger than {max_bytes >> 20} MiB; not an S2I file")
    return parse_json(data, f"{what} {path}")


def read_json(path: str | Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """:func:`load_json` of a file that must hold a JSON object."""
    data = load_json(path, what, max_bytes)
    if not isinstance(data, dict):
        raise S2IError(f"{what} {path} should hold a JSON object")
    return data


def check_tree(value: Any, where: str | Path, max_depth: int = MAX_DEPTH,
               max_items: int = MAX_ITEMS) -> None:
    """``value`` (dicts, lists and tuples of anything) nests at most ``max_depth`` levels,
    holds at most ``max_items`` values, and its strings hold no NUL and no lone surrogate
    (they could not be a file name or be written back). Iterative: a deep or self-sharing
    value costs ``max_items`` steps at most, never a RecursionError."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if isinstance(item, str):
            if "\0" in item or not item.isascii() and not _encodable(item):
                raise S2IError(f"{where} holds a string with a NUL or an invalid character "
                               f"({item[:40]!r}); not an S2I file")
        elif isinstance(item, (dict, list, tuple)):
            if depth > max_depth:
                raise S2IError(f"{where} nests more than {max_depth} levels deep; not an S2I "
                               "file")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            if seen + len(stack) + len(children) > max_items:
                raise S2IError(f"{where} holds more than {max_items} values; not an S2I file")
            stack.extend((child, depth + 1) for child in children)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        manifest = load_json(Path(folder) / "manifest.json", "manifest")
    except S2IError:
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


# --- writing: atomic files and folders, hashes -------------------------------------------

def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; look like an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(final_path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``final_path``; move it into place on success.

    On any exception the temporary directory is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    parent = final_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise S2IError(f"cannot create output folder {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise S2IError(f"output folder {parent} is not writable")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".partial", dir=parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like a mkdir
    try:
        yield tmp
        if final_path.exists():
            if not replace:
                raise S2IError(f"{final_path} already exists")
            old = parent / f".{final_path.name}.old-{os.getpid()}"
            os.replace(final_path, old)
            try:
                os.replace(tmp, final_path)
            except BaseException:
                os.replace(old, final_path)     # put the previous result back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
