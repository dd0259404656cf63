"""``python -m export --verify EXPORT_DIR``: re-run parity of every file of an export against
the checkpoint its manifest names, one line per file; False when any file does not match."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.parity import check_engine_parity, check_parity, describe
from runtime.artifacts import sha256_file
from runtime.errors import S2IError, first_line
from runtime.frontend import FrontEndConfig
from runtime.model.backends import open_translator
from runtime.model.gpu_env import tensorrt_unavailable_reason
from runtime.model.manifest import load_export_manifest
from runtime.model.precision import PRECISIONS, model_key


def verify_export(export_dir: Path, checkpoint: Path | None = None,
                  log: Callable[[str], None] = print) -> bool:
    """Check every model file of ``export_dir`` against ``checkpoint`` (default: the one
    the manifest names, whose sha256 must match). ONNX files run on ONNX Runtime CPU;
    TensorRT engines where TensorRT and a GPU exist (else one ``skipped`` line each).
    First the runtime's own checks: the export is opened on ONNX Runtime CPU in every
    precision it has (``runtime.model.backends.open_translator``), so what verify passes the
    runtime loads. ONNX Runtime errors are one ``S2IError`` line."""
    from export.translator import load_networks

    manifest = load_export_manifest(export_dir)
    for precision in PRECISIONS:
        if model_key("encoder", precision) in manifest["models"]:
            open_translator(export_dir, "onnxruntime-cpu", precision, threads=2)
    _, encoder, generator = load_networks(_source_checkpoint(export_dir, manifest, checkpoint))
    models: dict[str, dict[str, Any]] = manifest["models"]
    onnx_files = {key: export_dir / e["file"] for key, e in models.items()
                  if e.get("backend") == "onnx"}
    engines = {key: e for key, e in models.items() if e.get("backend") == "tensorrt"}
    rows: dict[str, dict[str, Any]] = {}
    try:
        parity = check_parity(encoder, generator, onnx_files, manifest["dropout"],
                              front_end=FrontEndConfig.from_dict(manifest["front_end"]))
        rows.update(parity["files"])
        if engines:
            reason = tensorrt_unavailable_reason()
            if reason:
                rows.update({key: {"skipped": reason} for key in engines})
            else:
                rows.update(check_engine_parity(encoder, generator, export_dir, engines,
                                                manifest["dropout"])["files"])
    except S2IError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime/TensorRT raise their own types
        raise S2IError(f"{export_dir}: running its models failed: "
                       f"{first_line(exc, with_type=True)}") from exc
    for key, row in rows.items():
        log(_line(models[key]["file"], key, row))
    sens = parity["sensitivity"]
    log(f"sensitivity of the checkpoint: images change by {sens['input']:.2e} with the input "
        f"and {sens['masks']:.2e} with the masks (relative)"
        + ("" if parity["informative"] else
           " - too little for parity to see wiring errors"))
    if not parity["all_ones_deterministic"]:
        log("MISMATCH: all-ones masks do not give repeatable generator outputs")
    front = parity.get("front_end") or {"ok": True}
    if not front["ok"]:
        log(f"MISMATCH: the audio-in graphs' front end differs from runtime/frontend.py by "
            f"{front['max_abs_error']:.1e} (limit {front['limit']:.0e})")
    failed = [key for key, row in rows.items() if not row.get("skipped") and not row["ok"]]
    log(f"{export_dir}: " + (f"{len(failed)} file(s) do NOT match: {', '.join(failed)}"
                             if failed or not parity["all_ones_deterministic"] else
                             f"{len(rows) - _skipped(rows)} file(s) match"
                             + (f", {_skipped(rows)} skipped" if _skipped(rows) else "")))
    return not failed and parity["all_ones_deterministic"] and front["ok"]


def _source_checkpoint(export_dir: Path, manifest: dict[str, Any],
                       checkpoint: Path | None) -> Path:
    """``checkpoint``, or the one the manifest names; one line when it is absent or not the
    one the export was made from (its sha256)."""
    recorded = manifest.get("checkpoint") or {}
    checkpoint = checkpoint or Path(str(recorded.get("path") or ""))
    if not checkpoint.is_file():
        raise S2IError(f"checkpoint {checkpoint} named by {export_dir}/manifest.json is not "
                       "here; pass it with --checkpoint")
    if recorded.get("sha256") and sha256_file(checkpoint) != recorded["sha256"]:
        raise S2IError(f"checkpoint {checkpoint} is not the one {export_dir} was exported from "
                       "(sha256 differs from the manifest's)")
    return checkpoint


def _skipped(rows: dict[str, dict[str, Any]]) -> int:
    return sum(1 for row in rows.values() if row.get("skipped"))


def _line(file: str, key: str, row: dict[str, Any]) -> str:
    if row.get("skipped"):
        return f"{file:<24} {key:<20} skipped: {row['skipped']}"
    return f"{file:<24} {key:<20} {describe(row)} {'ok' if row['ok'] else 'MISMATCH'}"
