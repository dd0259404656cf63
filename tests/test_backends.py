"""runtime.model.backends: open an export on ONNX Runtime, check inputs, refuse bad exports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_export import make_tiny_checkpoint, shared_export
from helpers_runtime import tiny_export

from export.parity import relative_error, rms_relative_error
from export.translator import ExportConfig, export_translator
from runtime.errors import S2IError
from runtime.model.backends import list_backends, open_translator, tensorrt_unavailable_reason
from runtime.model.masks import draw_masks, ones_masks
from trainer.calibrate import synthetic_spectrograms
from trainer.checkpoint import load_checkpoint
from trainer.models import AudioEncoder, DenseGenerator

D = 64


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_export(tmp_path_factory, embedding_dim=D, fp16=True, fused=True,
                         input_sensitive=True)


def reference(export_dir: Path, spec: np.ndarray, masks: list[np.ndarray],
              with_embedding: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    state = load_checkpoint(export_dir.parent / f"{export_dir.name}.ckpt.pt", stage="gan")
    encoder, generator = AudioEncoder(D, state["width"]), DenseGenerator(D, state["width"])
    encoder.load_state_dict(state["models"]["encoder"])
    generator.load_state_dict(state["models"]["generator"])
    with torch.no_grad():
        z = encoder.eval()(torch.from_numpy(spec))
        image = generator.eval()(z, [torch.from_numpy(m) for m in masks]).numpy()
    return (z.numpy(), image) if with_embedding else image


@pytest.mark.parametrize("precision,error,limit", [("fp32", relative_error, 1e-3),
                                                   ("fp16", rms_relative_error, 1e-1)])
def test_onnxruntime_cpu_translates_like_pytorch(export_dir: Path, precision: str, error,
                                                 limit: float) -> None:
    translator = open_translator(export_dir, "onnxruntime-cpu", precision, threads=2)
    assert translator.backend == "onnxruntime-cpu" and translator.precision == precision
    assert [s["input"] for s in translator.dropout] == [f"mask{i}" for i in range(6)]
    assert translator.manifest["embedding_dim"] == D
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        spec = synthetic_spectrograms(batch, torch.Generator().manual_seed(batch)).numpy()
        masks = draw_masks(translator.dropout, batch, rng)
        z = translator.encode(spec)
        assert z.shape == (batch, D) and z.dtype == np.float32
        # each stage on the reference's input: the test network amplifies an FP16 error
        # of the embedding tenfold (docs/EXPORT.md), so the chain is not the fair test
        z_want, want = reference(export_dir, spec, masks, with_embedding=True)
        assert error(z, z_want) <= limit
        images = translator.generate(z_want, masks)
        assert images.shape == (batch, 3, 96, 96) and images.dtype == np.float32
        assert error(images, want) <= limit
        chained = translator.generate(z, masks)
        assert np.array_equal(translator.translate(spec, masks), chained)
    # the outputs move with the input and with the masks by far more than the tolerance
    assert relative_error(images[1:], np.repeat(images[:1], 2, axis=0)) > 0.1
    ones = translator.generate(z, ones_masks(translator.dropout, batch))
    assert relative_error(images, ones) > 0.1


def test_ones_masks_deterministic_drawn_masks_differ(export_dir: Path) -> None:
    translator = open_translator(export_dir, "onnxruntime-cpu")
    z = translator.encode(np.zeros((2, 1, 128, 100), np.float32))
    ones = ones_masks(translator.dropout, 2)
    assert np.array_equal(translator.generate(z, ones), translator.generate(z, ones))
    rng = np.random.default_rng(4)
    a = translator.generate(z, draw_masks(translator.dropout, 2, rng))
    b = translator.generate(z, draw_masks(translator.dropout, 2, rng))
    assert relative_error(a, b) > 0.1


def test_auto_picks_best_available(export_dir: Path) -> None:
    translator = open_translator(export_dir)
    available = [row["name"] for row in list_backends() if row["available"]]
    assert translator.backend in available
    if available == ["onnxruntime-cpu"]:
        assert translator.backend == "onnxruntime-cpu"
    rows = list_backends()
    assert [r["name"] for r in rows] == ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
    assert all(r["available"] or ("\n" not in r["reason"] and r["reason"]) for r in rows)


def test_bad_inputs_are_one_line_errors(export_dir: Path) -> None:
    translator = open_translator(export_dir, "onnxruntime-cpu")
    masks = ones_masks(translator.dropout, 2)
    z = np.zeros((2, D), np.float32)
    bad_calls = [
        (lambda: translator.encode(np.zeros((2, 128, 100), np.float32)), "spectrogram"),
        (lambda: translator.encode(np.zeros((2, 1, 128, 99), np.float32)), "spectrogram"),
        (lambda: translator.encode(np.zeros((2, 1, 128, 100), np.int16)), "dtype"),
        (lambda: translator.encode([[0.0]]), "numpy array"),
        (lambda: translator.generate(np.zeros((2, D + 4), np.float32), masks), "embedding"),
        (lambda: translator.generate(z, masks[:5]), "6 masks expected"),
        (lambda: translator.generate(z, ones_masks(translator.dropout, 3)), "mask0"),
    ]
    for call, match in bad_calls:
        with pytest.raises(S2IError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    # other float dtypes are converted, not refused
    assert translator.encode(np.zeros((1, 1, 128, 100), np.float64)).shape == (1, D)


def test_missing_tampered_and_unavailable(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(S2IError, match="export folder not found"):
        open_translator(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    data = bytearray((copy / "encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(S2IError, match="sha256"):
        open_translator(copy, "onnxruntime-cpu")
    with pytest.raises(S2IError, match="unknown backend"):
        open_translator(export_dir, "cuda")
    with pytest.raises(S2IError, match="unknown precision"):
        open_translator(export_dir, "onnxruntime-cpu", "int4")
    with pytest.raises(S2IError, match="re-export with --int8"):
        open_translator(export_dir, "onnxruntime-cpu", "int8")
    for row in list_backends():
        if not row["available"]:
            with pytest.raises(S2IError, match="not available") as info:
                open_translator(export_dir, row["name"])
            assert "\n" not in str(info.value)


def test_translate_window_fused_and_unfused_agree(export_dir: Path, tmp_path_factory) -> None:
    fused = open_translator(export_dir, "onnxruntime-cpu")
    plain_export = tiny_export(tmp_path_factory)     # the same weights (seed 0), not fused
    plain = open_translator(plain_export, "onnxruntime-cpu")
    assert fused._fused is not None and plain._fused is None
    spec = synthetic_spectrograms(1, torch.Generator().manual_seed(7)).numpy()
    masks = draw_masks(fused.dropout, 5, np.random.default_rng(8))
    images, mean, spread = fused.translate_window(spec, masks)
    images2, mean2, spread2 = plain.translate_window(spec, masks)
    assert images.shape == (5, 3, 96, 96) and mean.shape == spread.shape == (1, 3, 96, 96)
    scale = np.abs(images2).max()
    assert relative_error(images, images2) <= 1e-3
    assert relative_error(mean, mean2, scale) <= 1e-3
    assert relative_error(spread, spread2, scale) <= 1e-3 and spread.max() > 0.05 * scale
    with pytest.raises(S2IError, match="one window"):
        fused.translate_window(np.repeat(spec, 2, axis=0), masks)
    # an export without FP16 graphs says how to get them
    with pytest.raises(S2IError, match="re-export with --fp16"):
        open_translator(plain_export, "onnxruntime-cpu", "fp16")


def test_runtime_backends_do_not_import_torch() -> None:
    code = ("import sys, runtime.model.backends, runtime.model.masks; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tensorrt_backend(tmp_path: Path) -> None:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT backend not testable here: {reason}")
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", embedding_dim=D, input_sensitive=True)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         batch_sizes=(1, 4, 8),
                                         timing_cache=tmp_path / "timing.cache"))
    translator = open_translator(out, "tensorrt")
    spec = synthetic_spectrograms(10, torch.Generator().manual_seed(0)).numpy()
    masks = draw_masks(translator.dropout, 10, np.random.default_rng(1))
    images = translator.translate(spec, masks)   # 10 > profile max 8: run in chunks
    cpu = open_translator(out, "onnxruntime-cpu").translate(spec, masks)
    assert rms_relative_error(images, cpu) <= 1e-1    # TF32 kernels, errors amplified
    # rows 8, 9 (the second chunk) belong to their own inputs, not to rows 0, 1
    assert rms_relative_error(images[8:], cpu[:2]) > 0.3


def test_manifest_that_does_not_match_the_models_fails_at_load(export_dir: Path,
                                                               tmp_path: Path) -> None:
    import json

    def tampered(name: str, change) -> Path:
        copy = tmp_path / name
        shutil.copytree(export_dir, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        change(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy

    def more_channels(m: dict) -> None:
        m["dropout"][2]["channels"] += 2

    def other_dim(m: dict) -> None:
        m["embedding_dim"] = D - 1

    def no_file(m: dict) -> None:
        del m["models"]["generator"]["file"]

    def no_channels(m: dict) -> None:
        del m["dropout"][0]["channels"]

    def unknown_mask(m: dict) -> None:
        m["dropout"][5]["input"] = "mask9"

    # the manifest's dropout is checked against the stamp in the ONNX files (runtime.model.manifest)
    cases = [(more_channels, r"dropout differs from the one \w+\.onnx was exported with "
                             r"\(mask2 p [\d.]+ x \d+ in manifest\.json, mask2 p [\d.]+ x \d+ in"),
             (other_dim, rf"input embedding has {D} channels, the manifest says {D - 1}"),
             (no_file, r"model 'generator' has no \"file\""),
             (no_channels, r"dropout mask0 channels must be a positive integer, got None"),
             (unknown_mask, r"dropout differs .*\(mask9 p .* in manifest\.json, mask5 p ")]
    for change, message in cases:
        with pytest.raises(S2IError, match=message) as info:
            open_translator(tampered(change.__name__, change), "onnxruntime-cpu")
        assert "\n" not in str(info.value)


def test_atomic_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path: Path,
                                                                 monkeypatch) -> None:
    import os

    from runtime import artifacts as manifest_module

    final = tmp_path / "export"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst) -> None:
        if Path(src).name.endswith(".partial"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(manifest_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"), manifest_module.atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (final / "keep.txt").read_text() == "old" and not (final / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]   # no .old or .partial
