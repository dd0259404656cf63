"""INT8 export (export/int8.py, export/quality.py) and the runtime's int8 precision:
calibration on real store windows, gates recorded, a failed gate keeps FP32 only."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_export import make_tiny_checkpoint

from export.__main__ import main as export_main
from export.int8 import AUTO_CALIBRATIONS, Int8Options
from export.translator import ExportConfig, export_translator
from runtime.errors import S2IError, run_cli
from runtime.frontend import FrontEndConfig, log_mel_batch
from runtime.model.backends import open_translator
from runtime.model.masks import draw_masks
from trainer.data.demo_data import build_demo_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An input-sensitive tiny checkpoint and a small synthesised demo store."""
    folder = tmp_path_factory.mktemp("int8")
    store = build_demo_store(folder / "store", 4, 2, 2, seed=0, progress=False)
    return make_tiny_checkpoint(folder / "ck.pt", input_sensitive=True), store


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_int8_export_records_calibration_and_gates_and_runs(tiny, tmp_path: Path) -> None:
    checkpoint, store = tiny
    options = Int8Options(store=str(store), windows=8, gate_windows=6, mc_samples=2,
                          min_psnr_db=0.0, max_drop_points=100.0)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         tensorrt=False, int8=True, int8_options=options))
    manifest = _manifest(out)
    record = manifest["int8"]
    assert record["kept"] is True
    assert record["calibration"]["windows"] == 8 and record["calibration"]["split"] == "train"
    assert record["calibration"]["store"] == str(store.resolve())
    # "auto" tried every candidate on other train windows and kept the closest to FP32
    calibration = record["calibration"]
    figures = calibration["selection"]["psnr_vs_fp32"]
    assert sorted(figures) == sorted(AUTO_CALIBRATIONS)   # (the manifest sorts its keys)
    assert calibration["method"] == max(figures, key=lambda n: figures[n]["psnr_db_pooled"])
    assert record["quantizer"]["calibration"] == calibration["method"]
    assert not set(calibration["selection"]["positions"]) & set(calibration["positions"])
    assert sorted(p.name for p in out.glob("*.int8*.onnx")) == [
        "encoder.int8.onnx", "encoder_audio.int8.onnx", "generator.int8.onnx"]
    assert "node_tanh" in record["quantizer"]["fp32_output_layer"]["generator"]
    gates = record["gates"]
    assert gates["passed"] and gates["images"]["windows"] == 6
    assert gates["images"]["psnr_db_mean"] > 0 and gates["images"]["max_error_grey_levels"] >= 0
    scores = gates["demo_scores"]
    assert scores["sounds"] == 10 and 0 <= scores["int8"]["coherence"] <= 1
    assert "coherence_drop_points" in scores and "informativity_drop_points" in scores
    for graph in ("encoder", "generator"):
        entry = manifest["models"][f"{graph}_int8"]
        assert entry["precision"] == "int8" and (out / entry["file"]).is_file()
    # the runtime runs it on the CPU, and its images still depend on the sound
    translator = open_translator(out, precision="int8")
    assert translator.backend == "onnxruntime-cpu" and translator.precision == "int8"
    rng = np.random.default_rng(0)
    spectrograms = rng.uniform(-1, 1, (2, 1, 128, 100)).astype(np.float32)
    masks = [np.repeat(m[:1], 2, axis=0) for m in draw_masks(translator.dropout, 1, rng)]
    images = translator.translate(spectrograms, masks)
    assert images.shape == (2, 3, 96, 96) and np.isfinite(images).all()
    assert np.abs(images[0] - images[1]).mean() * 127.5 > 1
    with pytest.raises(S2IError, match="onnxruntime-cpu only"):
        open_translator(out, backend="tensorrt", precision="int8")
    # the audio-in INT8 encoder: FP32 front end + the INT8 encoder, = the host path
    assert record["audio_in"]["kept"] and manifest["models"]["encoder_audio_int8"]
    assert translator.features == "graph"
    audio = np.clip(rng.standard_normal((3, 16000)) * [[0.3], [0.05], [0.005]], -1, 1
                    ).astype(np.float32)        # as the runtime sanitises it
    z_graph = translator.encode_audio(audio)
    z_host = translator.encode(log_mel_batch(audio, FrontEndConfig())[:, None])
    assert np.abs(z_graph - z_host).max() <= 2e-2 * np.abs(z_host).max()
    assert np.abs(z_graph[0] - z_graph[2]).max() > 1e-2 * np.abs(z_host).max()


def test_missed_gate_keeps_fp32_and_says_why(tiny, tmp_path: Path) -> None:
    checkpoint, store = tiny
    options = Int8Options(store=str(store), windows=4, gate_windows=4, mc_samples=1,
                          min_psnr_db=200.0, calibration="percentile:99.9")
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         tensorrt=False, int8=True, int8_options=options))
    manifest = _manifest(out)
    assert manifest["int8"]["kept"] is False
    assert manifest["int8"]["calibration"]["method"] == "percentile:99.9"
    assert "selection" not in manifest["int8"]["calibration"]     # one method: no choice
    assert "PSNR" in manifest["int8"]["reason"]
    assert not any("int8" in key for key in manifest["models"])
    assert not list(out.glob("*.int8.onnx"))
    with pytest.raises(S2IError, match="re-export with --int8"):
        open_translator(out, precision="int8")
    assert open_translator(out, precision="fp32").precision == "fp32"


def test_cli_refuses_bf16_and_missing_store_in_one_line(tiny, tmp_path: Path) -> None:
    checkpoint, _ = tiny
    for args, expected in (([str(checkpoint), "--bf16"], "no bfloat16 convolution"),
                           ([str(checkpoint), "--int8", "--calibration-store",
                             str(tmp_path / "nowhere")], "calibration store"),
                           ([str(checkpoint), "--int8", "--int8-calibration", "percentile:100"],
                            "auto, minmax or percentile:P")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run_cli(lambda a=args: export_main([*a, "--out", str(tmp_path / "x"),
                                                       "--no-tensorrt", "--no-fused"]))
        assert code == 2
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and expected in lines[0]
    with pytest.raises(S2IError, match="bf16 is not offered"):
        open_translator(tmp_path, precision="bf16")


def test_auto_calibration_on_a_store_too_small_for_separate_selection_windows(
        tiny, tmp_path: Path) -> None:
    checkpoint, store = tiny        # 20 train windows: all of them calibrate
    options = Int8Options(store=str(store), windows=64, selection_windows=8, gates=False)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         tensorrt=False, int8=True, int8_options=options))
    calibration = _manifest(out)["int8"]["calibration"]
    assert calibration["windows"] == 20
    assert calibration["selection"]["same_as_calibration"] is True
    assert set(calibration["selection"]["positions"]) <= set(calibration["positions"])
    assert calibration["method"] in AUTO_CALIBRATIONS
