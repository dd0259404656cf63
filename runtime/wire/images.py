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


class ImageShapeError(ValueError):
    """A picture whose size or channel count is not the one expected (``found``: its shape)."""

    def __init__(self, found: list[int]) -> None:
        super().__init__(f"image is {found}")
        self.found = found


def png_image(data: bytes, shape: list[int] | None = None,
              expected_format: str = "PNG") -> np.ndarray:
    """PNG bytes (or another ``expected_format`` Pillow reads, e.g. ``JPEG``) -> the picture
    as a uint8 array; bytes of any other format are a ValueError. With ``shape`` (``[H, W]``
    or ``[H, W, C]``, as the array would be), another shape is an ``ImageShapeError`` raised
    from the file's header, before its pixels are decoded (so memory stays bounded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=[expected_format]) as image:
        if shape is not None:
            bands = len(image.getbands())
            found = [image.height, image.width] + ([bands] if bands > 1 else [])
            if found != list(shape):
                raise ImageShapeError(found)
        return np.asarray(image)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a picture as a PNG file, atomically."""
    from runtime.artifacts import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(image))
