"""PNG (and JPEG) encoding and decoding of uint8 ``[H, W, 3]`` pictures (Pillow), for every
part that writes or reads one: the wire format, the viewer, sample folders, run folders."""

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


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``) -> baseline JPEG bytes (lossy; ``quality`` 1-95)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def png_image(data: bytes, expected_format: str = "PNG") -> np.ndarray:
    """PNG bytes (or another ``expected_format`` Pillow reads, e.g. ``JPEG``) -> the picture
    as a uint8 array; bytes of any other format are a ValueError."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=[expected_format]) as image:
        return np.asarray(image)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a picture as a PNG file, atomically."""
    from runtime.manifest import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(image))
