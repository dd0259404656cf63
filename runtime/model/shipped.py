"""The demo translator shipped inside the package (``runtime/model/demo_export``): what the
streaming commands and ``s2i-web`` use when no export is given and ``runs/demo/export``
(the quickstart's own training) does not exist. How it was trained and exported:
docs/WEB.md, "The shipped model"."""

from __future__ import annotations

from pathlib import Path

TRAINED_EXPORT = "runs/demo/export"      # where `python -m export` writes the demo's export
SHIPPED_EXPORT = Path(__file__).parent / "demo_export"
SHIPPED_PRECISION = "fp16"               # it holds FP16 graphs only (half the bytes)


def default_export() -> str:
    """``runs/demo/export`` when it exists (relative to the working folder), else the
    shipped demo export (when installed with it), else ``runs/demo/export`` (whose absence
    the manifest check then reports)."""
    if Path(TRAINED_EXPORT).is_dir() or not (SHIPPED_EXPORT / "manifest.json").is_file():
        return TRAINED_EXPORT
    return str(SHIPPED_EXPORT)


def default_precision(export: str | Path) -> str:
    """The precision the runtime uses when none is asked for: ``fp32``, or the shipped
    model's own for the shipped export."""
    shipped = Path(export).resolve() == SHIPPED_EXPORT.resolve()
    return SHIPPED_PRECISION if shipped else "fp32"
