"""The export manifest that the runtime trusts.

``load_export_manifest`` is the one door to an existing export (runtime backends, the
streaming CLIs, ``python -m export --verify``, benchmarks): it checks the manifest's form and
ranges (front end, dropout p, model paths confined to the export folder), the sha256 of
every model file it lists and the S2I stamp (front end and dropout) that export writes into
each ONNX file's ``metadata_props``. Any mismatch is one ``S2IError`` line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from runtime.artifacts import check_format, parse_json, read_json, sha256_file
from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig
from runtime.model.onnx_metadata import read_onnx_metadata

EXPORT_FORMAT = "s2i-export"
EXPORT_VERSION = 2   # 2: a sha256 for every model file, the S2I stamp in every ONNX file
# keys of the stamp in each ONNX file's metadata_props (written by export, checked here)
STAMP_FRONT_END = "s2i.front_end"                # canonical JSON of the front-end settings
STAMP_FINGERPRINT = "s2i.front_end_fingerprint"  # FrontEndConfig.fingerprint()
STAMP_DROPOUT = "s2i.dropout"                    # canonical JSON of the manifest's dropout
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9._/-]{1,255}")   # what export writes: encoder.fp16.onnx
MAX_IMAGE_SIDE = 4096     # the generator's images are 96 x 96; a manifest claiming more lies
MAX_DIM = 2**31 - 1       # a tensor dimension ONNX Runtime and TensorRT can hold


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def export_stamp(front_end: FrontEndConfig, dropout: list[dict[str, Any]]) -> dict[str, str]:
    """What export writes into every ONNX file's metadata_props (``check_stamp`` reads it)."""
    return {STAMP_FRONT_END: canonical_json(front_end.to_dict()),
            STAMP_FINGERPRINT: front_end.fingerprint(),
            STAMP_DROPOUT: canonical_json(_dropout_form(dropout))}


def load_export_manifest(export_dir: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and check ``EXPORT/manifest.json`` (format, version, ranges, model paths); with
    ``verify_hashes`` also every model file's sha256 and every ONNX file's stamp."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise S2IError(f"export folder not found: {export_dir} (run `python -m export RUN` first)")
    where = f"{export_dir}/manifest.json"
    manifest = check_format(read_json(export_dir / "manifest.json", "export manifest"), where,
                            "export", EXPORT_FORMAT, EXPORT_VERSION, "re-export the checkpoint")
    for key in ("front_end", "embedding_dim", "dropout", "models"):
        if key not in manifest:
            raise S2IError(f"{where} lacks '{key}'; re-export the checkpoint")
    try:
        front_end = FrontEndConfig.from_dict(manifest["front_end"])
    except S2IError as exc:
        raise S2IError(f"{where}: {exc}") from exc
    check_dropout(manifest["dropout"], where)
    models = manifest["models"]
    if not isinstance(models, dict) or not models:
        raise S2IError(f"{where}: 'models' should be an object of model files; re-export")
    for name, entry in models.items():
        _check_entry(export_dir, where, name, entry)
    if verify_hashes:
        for name, entry in models.items():
            path = export_dir / entry["file"]
            if not path.is_file():
                raise S2IError(f"export file for {name} missing: {path}")
            if sha256_file(path) != entry["sha256"]:
                raise S2IError(f"{path} does not match the sha256 in its manifest "
                               "(file changed after export); re-export the checkpoint")
            if path.suffix == ".onnx":
                check_stamp(path, front_end, manifest["dropout"], where)
    return manifest


def check_dropout(dropout: Any, where: str) -> None:
    """``[{"input": name, "p": 0 <= p < 1, "channels": >= 1}, ...]``."""
    if not isinstance(dropout, list):
        raise S2IError(f"{where}: dropout should be a list of {{input, p, channels}}; re-export")
    for i, spec in enumerate(dropout):
        if not isinstance(spec, dict) or not isinstance(spec.get("input"), str):
            raise S2IError(f"{where}: dropout entry {i} should be an object with an \"input\" "
                           f"name, got {spec!r}; re-export")
        p, channels = spec.get("p"), spec.get("channels")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) \
                or not 0 <= p < 1:
            raise S2IError(f"{where}: dropout {spec['input']} p must be a number in [0, 1), got "
                           f"{p!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise S2IError(f"{where}: dropout {spec['input']} channels must be a positive "
                           f"integer, got {channels!r}")


def _check_entry(export_dir: Path, where: str, name: str, entry: Any) -> None:
    """A model entry names a file inside the export folder and its sha256."""
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file:
        raise S2IError(f"{where}: model {name!r} has no \"file\"; re-export the checkpoint")
    parts = file.replace("\\", "/").split("/")
    inside = not file.startswith(("/", "\\")) and ":" not in parts[0] and ".." not in parts
    if inside:
        root = export_dir.resolve()
        inside = (export_dir / file).resolve().is_relative_to(root)
    if not inside:
        raise S2IError(f"{where}: model {name!r} file {file!r} is outside the export folder; "
                       "expected a path inside it (no '..', not absolute)")
    if not _FILE_NAME.fullmatch(file):
        raise S2IError(f"{where}: model {name!r} file {file[:80]!r} is not a file name export "
                       "writes (1-255 of A-Z a-z 0-9 . _ - /); re-export the checkpoint")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        raise S2IError(f"{where}: model {name!r} has no valid \"sha256\" (64 hex digits); "
                       "re-export the checkpoint")
    for side in ("inputs", "outputs"):
        _check_io(where, name, side, entry.get(side, []))
    outputs = entry.get("outputs") or []
    if name.startswith("generator") and outputs:     # the image shape a hello announces
        shape = outputs[0]["shape"]
        if len(shape) != 4 or shape[1] != 3 or not all(
                isinstance(n, int) and 1 <= n <= MAX_IMAGE_SIDE for n in shape[2:]):
            raise S2IError(f"{where}: model {name!r} output shape {shape} is no batch of RGB "
                           f"images [batch, 3, H, W] with 1 <= H, W <= {MAX_IMAGE_SIDE}; "
                           "re-export the checkpoint")


def _check_io(where: str, name: str, side: str, specs: Any) -> None:
    """A model entry's ``inputs``/``outputs``: ``[{"name", "shape", "dtype"}]``, each dimension
    a size (0..2**31-1) or a dynamic name (what ``export.onnx_export.describe_io`` writes;
    the runtime compares it with the graph when it opens the file)."""
    if not isinstance(specs, list) or len(specs) > 64:
        raise S2IError(f"{where}: model {name!r} {side} should be a list of tensors; re-export")
    for spec in specs:
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                or not isinstance(shape, list) or len(shape) > 8 or not all(
                    isinstance(n, str) and len(n) <= 64
                    or type(n) is int and 0 <= n <= MAX_DIM for n in shape):
            raise S2IError(f"{where}: model {name!r} {side} entry {str(spec)[:80]} should be "
                           "{\"name\", \"shape\": [sizes 0..2**31-1 or names], \"dtype\"}; "
                           "re-export")


def check_stamp(path: Path, front_end: FrontEndConfig, dropout: list[dict[str, Any]],
                where: str) -> None:
    """The front end and dropout the ONNX file was exported with (its metadata_props) are
    the manifest's: an edit that keeps shapes (db_min, fmax, n_fft, p) is refused."""
    metadata = read_onnx_metadata(path)
    if STAMP_FRONT_END not in metadata or STAMP_DROPOUT not in metadata:
        raise S2IError(f"{path} carries no S2I stamp (metadata_props {STAMP_FRONT_END}, "
                       f"{STAMP_DROPOUT}); re-export the checkpoint")
    try:
        stamped = FrontEndConfig.from_dict(parse_json(metadata[STAMP_FRONT_END], "front end"))
        stamped_dropout = parse_json(metadata[STAMP_DROPOUT], "dropout")
        if not isinstance(stamped_dropout, list) \
                or not all(isinstance(spec, dict) for spec in stamped_dropout):
            raise ValueError("its dropout is not a list of objects")
    except (ValueError, S2IError) as exc:
        raise S2IError(f"{path}: its S2I stamp is unreadable ({exc}); re-export") from exc
    if metadata.get(STAMP_FINGERPRINT) != front_end.fingerprint() or stamped != front_end:
        mine, theirs = dataclasses.asdict(front_end), dataclasses.asdict(stamped)
        diff = "; ".join(f"{key} {mine[key]!r} in manifest.json, {theirs.get(key)!r} in "
                         f"{path.name}" for key in mine if mine[key] != theirs.get(key))
        raise S2IError(f"{where}: front end differs from the one {path.name} was exported "
                       f"with ({diff or 'fingerprint ' + str(metadata.get(STAMP_FINGERPRINT))}"
                       "); the model would get features it was not trained on: restore the "
                       "manifest or re-export")
    mine = _dropout_form(dropout)
    if stamped_dropout != mine:
        def show(spec: dict[str, Any]) -> str:
            return f"{spec.get('input')} p {spec.get('p')!r} x {spec.get('channels')!r}"
        diff = "; ".join(f"{show(a)} in manifest.json, {show(b)} in {path.name}"
                         for a, b in zip(mine, stamped_dropout, strict=False) if a != b)
        raise S2IError(f"{where}: dropout differs from the one {path.name} was exported with "
                       f"({diff or f'{len(mine)} layers vs {len(stamped_dropout)}'}); restore "
                       "the manifest or re-export")


def _dropout_form(dropout: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"input": str(s["input"]), "p": float(s["p"]), "channels": int(s["channels"])}
            for s in dropout]
