"""PNG encoding and decoding of uint8 ``[H, W, 3]`` pictures (Pillow), for every part that
writes or reads one: the wire format, the viewer, sample folders, run folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``) -> PNG bytes; ``compress_level`` 1 is fastest."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def png_image(data: bytes, shape: list[int] | None = None) -> np.ndarray:
    """PNG bytes -> the picture as a uint8 array; with ``shape`` (``[H, W, ...]``), a PNG of
    another size is a ``ValueError`` before its pixels are decoded (memory stays bounded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if shape is not None and [image.height, image.width] != list(shape[:2]):
            raise ValueError(f"PNG is {image.height}x{image.width}, expected "
                             f"{shape[0]}x{shape[1] if len(shape) > 1 else '?'}")
        return np.asarray(image)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a picture as a PNG file, atomically."""
    from runtime.manifest import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(image))
