"""Export manifests: every front-end setting range-checked, the front end and dropout stamped
into each ONNX file and compared at load, model paths confined to the export folder, a
sha256 for every model file (one error line naming the file for each)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers_export import shared_export

from runtime.artifacts import sha256_file
from runtime.errors import S2IError
from runtime.model.backends import open_translator
from runtime.model.manifest import (
    STAMP_FINGERPRINT,
    STAMP_FRONT_END,
    export_stamp,
    load_export_manifest,
)
from runtime.model.onnx_metadata import read_onnx_metadata


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_export(tmp_path_factory, embedding_dim=16, fused=True)    # copied to edit


def edited(export: Path, to: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``export`` whose manifest ``change`` edited."""
    shutil.copytree(export, to)
    manifest = json.loads((to / "manifest.json").read_text())
    change(manifest)
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def refused(folder: Path, match: str, load: Callable[[Path], Any] = load_export_manifest
            ) -> str:
    with pytest.raises(S2IError, match=match) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def front_end(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["front_end"].update(values)


# --- every front-end field, range-checked --------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"sample_rate": 0}, r"sample_rate must be an integer in \[1000, 768000\], got 0"),
    ({"sample_rate": "abc"}, r"sample_rate must be an integer .* got 'abc'"),
    ({"sample_rate": 16000.5}, r"sample_rate must be an integer"),
    ({"hop_ms": 0}, r"hop_ms must be a number in \(0, .* got 0"),
    ({"n_fft": None}, r"n_fft must be an integer .* got None"),
    ({"n_fft": 256}, r"frame of 400 samples is longer than n_fft=256"),
    ({"n_mels": 0}, r"n_mels must be an integer in \[1, "),
    ({"n_mels": 300}, r"n_mels=300 exceeds the 257 frequency bins"),
    ({"fmax": 9000.0}, r"fmax must be a number in \(0, 8000\], got 9000.0"),
    ({"fmin": 8000.0}, r"fmin \(8000.0\) must be below fmax \(8000.0\)"),
    ({"db_min": 30.0}, r"db_max \(20.0\) must exceed db_min \(30.0\)"),
    ({"db_max": float("inf")}, r"db_max must be a number"),
    ({"window_seconds": -1}, r"window_seconds must be a number in \(0, "),
    ({"version": 2}, r"front end: version 2 is not supported; this S2I reads version 1"),
    ({"version": "1"}, r"version '1' is not supported"),
])
def test_front_end_out_of_range_is_one_line(export: Path, tmp_path: Path, values: dict,
                                            message: str) -> None:
    bad = edited(export, tmp_path / "bad", front_end(**values))
    assert refused(bad, message).startswith(f"{bad}/manifest.json: front end: ")


def test_front_end_that_is_no_object(export: Path, tmp_path: Path) -> None:
    bad = edited(export, tmp_path / "bad", lambda m: m.update(front_end=None))
    refused(bad, "front-end config should be an object of settings, got NoneType")


def test_bad_front_end_through_the_cli_is_one_line_no_traceback(export: Path,
                                                                tmp_path: Path) -> None:
    """The issue: sample_rate 0 or "abc", hop_ms 0, n_fft null gave tracebacks."""
    for i, values in enumerate(({"sample_rate": "abc"}, {"hop_ms": 0}, {"n_fft": None})):
        bad = edited(export, tmp_path / f"bad{i}", front_end(**values))
        result = subprocess.run([sys.executable, "-m", "runtime.apps.stream", "--export", str(bad),
                                 "--file", str(tmp_path / "any.wav")],
                                capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {bad}/manifest.json: front end: "), lines[0]


# --- edits that keep shapes: the stamp in the ONNX files ------------------------------

def test_every_onnx_file_carries_the_stamp(export: Path) -> None:
    manifest = load_export_manifest(export)
    from runtime.frontend import FrontEndConfig
    stamp = export_stamp(FrontEndConfig.from_dict(manifest["front_end"]), manifest["dropout"])
    onnx_files = [e["file"] for e in manifest["models"].values() if e["file"].endswith(".onnx")]
    assert len(onnx_files) == 5          # encoder, generator, translator and the audio-in two
    for file in onnx_files:
        metadata = read_onnx_metadata(export / file)
        assert {k: metadata[k] for k in stamp} == stamp
        assert metadata == {p.key: p.value for p in onnx.load(str(export / file)).metadata_props}
        assert metadata[STAMP_FINGERPRINT] == FrontEndConfig.from_dict(
            json.loads(metadata[STAMP_FRONT_END])).fingerprint()


@pytest.mark.parametrize("values, message", [
    ({"db_min": -70.0}, r"db_min -70.0 in manifest.json, -80.0 in encoder.onnx"),
    ({"fmax": 7000.0}, r"fmax 7000.0 in manifest.json, None in encoder.onnx"),
    ({"n_fft": 1024}, r"n_fft 1024 in manifest.json, 512 in encoder.onnx"),
])
def test_front_end_edit_that_keeps_shapes_is_refused_naming_both(
        export: Path, tmp_path: Path, values: dict, message: str) -> None:
    bad = edited(export, tmp_path / "bad", front_end(**values))
    text = refused(bad, r"front end differs from the one encoder.onnx was exported with \("
                   + message, load=lambda f: open_translator(f, "onnxruntime-cpu"))
    assert text.startswith(f"{bad}/manifest.json: ")


def test_dropout_p_is_checked(export: Path, tmp_path: Path) -> None:
    """The issue: p 1.0 was accepted (garbage images, exit 0)."""
    for i, p in enumerate((1.0, -0.1, "0.1", None, float("nan"))):
        bad = edited(export, tmp_path / f"p{i}", lambda m, p=p: m["dropout"][0].update(p=p))
        refused(bad, r"manifest.json: dropout mask0 p must be a number in \[0, 1\), got ")
    inside = edited(export, tmp_path / "inside", lambda m: m["dropout"][3].update(p=0.5))
    refused(inside, r"dropout differs from the one encoder.onnx was exported with \(mask3 p "
                    r"0.5 x \d+ in manifest.json, mask3 p 0.09 x \d+ in encoder.onnx\)")


def test_onnx_file_without_the_stamp_is_refused(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    model = onnx.load(str(copy / "generator.onnx"))
    del model.metadata_props[:]
    onnx.save_model(model, str(copy / "generator.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["generator"]["sha256"] = sha256_file(copy / "generator.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    refused(copy, r"generator.onnx carries no S2I stamp")


# --- model files: confined, hashed ----------------------------------------------------

def test_model_paths_are_confined_to_the_export_folder(export: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"          # a real model, right hash, wrong place
    shutil.copy(export / "encoder.onnx", outside)
    for i, file in enumerate(("../elsewhere.onnx", str(outside), "sub/../../elsewhere.onnx",
                              "..\\elsewhere.onnx", "C:/x.onnx")):
        bad = edited(export, tmp_path / f"path{i}",
                     lambda m, file=file: m["models"]["encoder"].update(file=file))
        refused(bad, r"manifest.json: model 'encoder' file .* is outside the export folder",
                load=lambda f: open_translator(f, "onnxruntime-cpu"))
    linked = edited(export, tmp_path / "linked",
                    lambda m: m["models"]["encoder"].update(file="link.onnx"))
    (linked / "link.onnx").symlink_to(outside)
    refused(linked, r"model 'encoder' file 'link.onnx' is outside the export folder")


def test_every_model_file_needs_a_valid_sha256(export: Path, tmp_path: Path) -> None:
    for i, value in enumerate((None, "", "abc", 5)):
        bad = edited(export, tmp_path / f"sha{i}",
                     lambda m, v=value: m["models"]["translator"].update(sha256=v))
        refused(bad, r"model 'translator' has no valid \"sha256\"")


@pytest.mark.parametrize("file", ["encoder.onnx", "generator.onnx", "translator.onnx"])
def test_flipped_byte_in_any_model_file_names_it(export: Path, tmp_path: Path,
                                                 file: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    data = bytearray((copy / file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / file).write_bytes(bytes(data))
    refused(copy, rf"{copy / file} does not match the sha256 in its manifest",
            load=lambda f: open_translator(f, "onnxruntime-cpu"))


def test_metadata_reader_refuses_what_is_no_onnx(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    for data in (b"\xff" * 20, b"\x0a\xff\xff\xff\x0f", b"\x72\x05ab"):
        junk.write_bytes(data)
        with pytest.raises(S2IError, match="junk.onnx is not a readable ONNX model"):
            read_onnx_metadata(junk)
