"""Atomic writes, file hashes and the export manifest that the runtime trusts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.errors import S2IError

EXPORT_FORMAT = "s2i-export"
EXPORT_VERSION = 1


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


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise S2IError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise S2IError(f"{what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise S2IError(f"{what} {path} should hold a JSON object")
    return data


def manifest_format(folder: str | Path) -> object:
    """The ``format`` field of ``folder/manifest.json``; None if missing or unreadable (what
    kind of S2I folder this is, before replacing it)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def load_export_manifest(export_dir: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read ``EXPORT/manifest.json``, check its format and version and the files' hashes."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise S2IError(f"export folder not found: {export_dir} (run `python -m export RUN` first)")
    manifest = read_json(export_dir / "manifest.json", "export manifest")
    if manifest.get("format") != EXPORT_FORMAT:
        raise S2IError(f"{export_dir}/manifest.json is not an S2I export (format "
                       f"{manifest.get('format')!r}, expected {EXPORT_FORMAT!r})")
    if manifest.get("version") != EXPORT_VERSION:
        raise S2IError(f"{export_dir} has export version {manifest.get('version')}, this runtime "
                       f"reads version {EXPORT_VERSION}; re-export the checkpoint")
    for key in ("front_end", "embedding_dim", "dropout", "models"):
        if key not in manifest:
            raise S2IError(f"{export_dir}/manifest.json lacks '{key}'; re-export the checkpoint")
    models = manifest["models"]
    if not isinstance(models, dict):
        raise S2IError(f"{export_dir}/manifest.json 'models' should be an object; re-export")
    for name, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise S2IError(f"{export_dir}/manifest.json: model {name!r} has no \"file\"; "
                           "re-export the checkpoint")
    if verify_hashes:
        for name, entry in models.items():
            path = export_dir / entry["file"]
            if not path.is_file():
                raise S2IError(f"export file for {name} missing: {path}")
            if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
                raise S2IError(f"{path} does not match the sha256 in its manifest "
                               "(file changed after export); re-export the checkpoint")
    return manifest
