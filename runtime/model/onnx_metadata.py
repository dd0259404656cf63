"""Read an ONNX file's ``metadata_props`` (string key -> string value) without the ``onnx``
package (the runtime depends on numpy and ONNX Runtime only) and without reading the graph.

An ONNX file is one protobuf ``ModelProto``: a sequence of (field number, wire type, value)
records. ``metadata_props`` is field 14, each a ``StringStringEntryProto`` (key = field 1,
value = field 2). The graph (field 7, nearly all of the file) is skipped by its length, so
this costs a few small reads whatever the model's size.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from runtime.errors import S2IError

_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``{key: value}`` of the file's metadata_props; ``S2IError`` if it is no ONNX model."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _scan(f, os.fstat(f.fileno()).st_size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise S2IError(f"{path} is not a readable ONNX model ({exc})") from exc
    except OSError as exc:
        raise S2IError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _scan(f: BinaryIO, size: int) -> dict[str, str]:
    metadata: dict[str, str] = {}
    while f.tell() < size:
        field, wire = _key(f)
        if wire == _LENGTH:
            length = _varint(f)
            if f.tell() + length > size:
                raise ValueError("a record runs past the end of the file")
            if field == _METADATA_PROPS:
                entry = _scan_entry(io.BytesIO(f.read(length)), length)
                metadata[entry.get(1, "")] = entry.get(2, "")
            else:
                f.seek(length, os.SEEK_CUR)
        else:
            _skip(f, wire)
    if f.tell() != size:
        raise ValueError("a record runs past the end of the file")
    return metadata


def _scan_entry(f: BinaryIO, size: int) -> dict[int, str]:
    fields: dict[int, str] = {}
    while f.tell() < size:
        field, wire = _key(f)
        if wire == _LENGTH:
            length = _varint(f)
            data = f.read(length)
            if len(data) != length:
                raise ValueError("a metadata entry is cut short")
            fields[field] = data.decode("utf-8")
        else:
            _skip(f, wire)
    return fields


def _key(f: BinaryIO) -> tuple[int, int]:
    key = _varint(f)
    if key >> 3 == 0:
        raise ValueError("field number 0")
    return key >> 3, key & 7


def _skip(f: BinaryIO, wire: int) -> None:
    if wire == _VARINT:
        _varint(f)
    elif wire in (_FIXED64, _FIXED32):
        f.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
    else:
        raise ValueError(f"unexpected protobuf wire type {wire}")


def _varint(f: BinaryIO) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a record")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("a varint longer than 10 bytes")
