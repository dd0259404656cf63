"""Export: ONNX graphs, FP16, parity with PyTorch, masks, manifest, failures leave nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers_export import make_tiny_checkpoint

from export.__main__ import main as export_main
from export.folding import fold_batchnorm
from export.onnx_export import FORBIDDEN_OPS, op_types
from export.parity import relative_error, rms_relative_error
from export.tensorrt_build import why_no_tensorrt
from export.translator import ExportConfig, export_translator
from runtime.artifacts import sha256_file
from runtime.config import config_from_dict
from runtime.errors import S2IError, run_cli
from runtime.model.manifest import load_export_manifest
from runtime.model.masks import draw_masks, ones_masks
from trainer.calibrate import synthetic_spectrograms
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.models import DROPOUT_P, AudioEncoder, DenseGenerator


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_models(checkpoint: Path) -> tuple[AudioEncoder, DenseGenerator]:
    state = load_checkpoint(checkpoint, stage="gan")
    encoder = AudioEncoder(state["embedding_dim"], state["width"])
    generator = DenseGenerator(state["embedding_dim"], state["width"])
    encoder.load_state_dict(state["models"]["encoder"])
    generator.load_state_dict(state["models"]["generator"])
    return encoder.eval(), generator.eval()


def feeds_for(dropout: list[dict], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {spec["input"]: m for spec, m in zip(dropout, masks, strict=True)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny run exported through the CLI with --fp16 (and the fused translator graph)."""
    run = tmp_path_factory.mktemp("run")
    checkpoint = make_tiny_checkpoint(run / "checkpoints" / "gan_last.pt", width=0.125,
                                      embedding_dim=64, seed=3, input_sensitive=True)
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(lambda: export_main([str(run), "--fp16", "--batch-sizes", "1", "4",
                                            "16"]))
    assert code == 0
    return run / "export", checkpoint, out.getvalue()


def test_cli_prints_files_parity_and_one_line_about_tensorrt(exported) -> None:
    export_dir, _, printed = exported
    for name in ("encoder.onnx", "generator.onnx", "encoder.fp16.onnx", "generator.fp16.onnx",
                 "translator.onnx", "manifest.json"):
        assert (export_dir / name).is_file(), name
    assert "parity encoder " in printed and "parity generator_fp16" in printed
    if why_no_tensorrt() is not None:
        lines = [line for line in printed.splitlines() if "TensorRT" in line]
        assert len(lines) == 1 and lines[0].startswith("no TensorRT engine built: ")
    assert not list(export_dir.parent.glob(".export*"))   # no leftover temp folders


def test_graphs_pass_checker_and_hold_no_dropout_or_batchnorm(exported) -> None:
    export_dir, _, _ = exported
    for path in export_dir.glob("*.onnx"):
        onnx.checker.check_model(str(path), full_check=True)
        ops = op_types(path)
        assert not ops & FORBIDDEN_OPS, (path.name, ops & FORBIDDEN_OPS)
        assert "BatchNormalization" not in ops and "Dropout" not in ops


def test_io_names_shapes_and_dtypes(exported) -> None:
    export_dir, _, _ = exported
    manifest = load_export_manifest(export_dir)
    d = manifest["embedding_dim"]
    for suffix in ("", "_fp16"):
        enc = manifest["models"]["encoder" + suffix]
        gen = manifest["models"]["generator" + suffix]
        assert enc["inputs"] == [{"name": "spectrogram", "shape": ["batch", 1, 128, 100],
                                  "dtype": "float32"}]
        assert enc["outputs"] == [{"name": "embedding", "shape": ["batch", d],
                                   "dtype": "float32"}]
        assert [i["name"] for i in gen["inputs"]] == ["embedding"] + [f"mask{i}"
                                                                      for i in range(6)]
        for spec, inp in zip(manifest["dropout"], gen["inputs"][1:], strict=True):
            assert inp["shape"] == ["batch", spec["channels"]] and inp["dtype"] == "float32"
        assert gen["outputs"] == [{"name": "image", "shape": ["batch", 3, 96, 96],
                                   "dtype": "float32"}]
    # what ONNX Runtime sees agrees with the manifest
    sess = session(export_dir / "generator.fp16.onnx")
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 7
    assert sess.get_outputs()[0].type == "tensor(float)"


def test_manifest_contents(exported) -> None:
    export_dir, checkpoint, _ = exported
    manifest = json.loads((export_dir / "manifest.json").read_text())
    state = load_checkpoint(checkpoint)
    assert manifest["format"] == "s2i-export" and manifest["version"] == 2
    assert manifest["front_end"] == state["front_end"]
    assert manifest["embedding_dim"] == 64 and manifest["width"] == 0.125
    assert manifest["classes"] == state["classes"]
    assert manifest["opset"] >= 17
    assert [s["p"] for s in manifest["dropout"]] == list(DROPOUT_P)
    generator = DenseGenerator(64, 0.125)
    assert [s["channels"] for s in manifest["dropout"]] == generator.mask_channels
    assert manifest["checkpoint"]["sha256"] == sha256_file(checkpoint)
    assert manifest["checkpoint"]["stage"] == "gan" and manifest["checkpoint"]["epoch"] == 0
    for entry in manifest["models"].values():
        assert entry["sha256"] == sha256_file(export_dir / entry["file"])
        assert entry["precision"] in ("fp32", "fp16")
    assert manifest["models"]["generator_fp16"]["precision"] == "fp16"
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "python"}
    parity = manifest["parity"]
    assert parity["passed"] and parity["all_ones_deterministic"] and parity["informative"]
    assert parity["files"]["generator"]["relative_error"] <= 1e-3
    assert parity["files"]["generator"]["metric"] == "max"
    assert parity["files"]["generator_fp16"]["rms_relative_error"] <= 1e-1
    # the weights make the check able to fail: images move with the input and the masks
    assert min(parity["sensitivity"].values()) > 0.1
    assert manifest["batch_sizes"] == [1, 4, 16]
    assert manifest["models"]["encoder"]["exporter"] == "torch.export"
    assert manifest["tensorrt"]["built"] or manifest["tensorrt"]["reason"]
    config = config_from_dict(ExportConfig, manifest["config"])     # the resolved flags
    assert config.fp16 and config.batch_sizes == (1, 4, 16) and not config.int8
    assert Path(config.out) == export_dir


def test_parity_fp32_and_fp16_with_dynamic_batch(exported) -> None:
    export_dir, checkpoint, _ = exported
    manifest = load_export_manifest(export_dir)
    encoder, generator = torch_models(checkpoint)
    rng = np.random.default_rng(11)
    for batch in (1, 5):
        spec = synthetic_spectrograms(batch, torch.Generator().manual_seed(batch)).numpy()
        masks = draw_masks(manifest["dropout"], batch, rng)
        with torch.no_grad():
            z_ref = encoder(torch.from_numpy(spec))
            img_ref = generator(z_ref, [torch.from_numpy(m) for m in masks]).numpy()
        for suffix, error, limit in (("", relative_error, 1e-3),
                                     (".fp16", rms_relative_error, 1e-1)):
            (z,) = session(export_dir / f"encoder{suffix}.onnx").run(None, {"spectrogram": spec})
            (img,) = session(export_dir / f"generator{suffix}.onnx").run(
                None, {"embedding": z_ref.numpy(), **feeds_for(manifest["dropout"], masks)})
            assert z.shape == (batch, 64) and img.shape == (batch, 3, 96, 96)
            assert error(z, z_ref.numpy()) <= limit
            assert error(img, img_ref) <= limit, suffix
            assert np.abs(img).max() <= 1.0 + 1e-6     # tanh, FP16 rounding
        if batch > 1:   # the rows differ by far more than the tolerance: parity can fail
            assert relative_error(img_ref[1:], np.repeat(img_ref[:1], batch - 1, 0)) > 0.1


def test_masks_all_ones_deterministic_drawn_masks_vary(exported) -> None:
    export_dir, _, _ = exported
    manifest = load_export_manifest(export_dir)
    dropout = manifest["dropout"]
    gen = session(export_dir / "generator.onnx")
    z = np.random.default_rng(0).uniform(-1, 1, (3, 64)).astype(np.float32)
    ones = feeds_for(dropout, ones_masks(dropout, 3))
    first = gen.run(None, {"embedding": z, **ones})[0]
    assert np.array_equal(first, gen.run(None, {"embedding": z, **ones})[0])
    rng = np.random.default_rng(5)
    a = gen.run(None, {"embedding": z, **feeds_for(dropout, draw_masks(dropout, 3, rng))})[0]
    b = gen.run(None, {"embedding": z, **feeds_for(dropout, draw_masks(dropout, 3, rng))})[0]
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - first).max() > 1e-3
    # dropped fraction per layer matches p; kept channels are scaled by 1/(1-p)
    big = draw_masks(dropout, 4000, np.random.default_rng(1))
    for spec, mask in zip(dropout, big, strict=True):
        p, dropped = spec["p"], float((mask == 0).mean())
        sigma = np.sqrt(p * (1 - p) / mask.size)
        assert abs(dropped - p) < 5 * sigma, (spec, dropped)
        assert np.allclose(mask[mask > 0], 1 / (1 - p))


def test_fused_translator_graph_gives_samples_mean_and_uncertainty(exported) -> None:
    export_dir, checkpoint, _ = exported
    manifest = load_export_manifest(export_dir)
    entry = manifest["models"]["translator"]
    assert [o["name"] for o in entry["outputs"]] == ["images", "mean", "uncertainty"]
    encoder, generator = torch_models(checkpoint)
    spec = synthetic_spectrograms(1, torch.Generator().manual_seed(2)).numpy()
    masks = draw_masks(manifest["dropout"], 6, np.random.default_rng(3))
    images, mean, spread = session(export_dir / "translator.onnx").run(
        None, {"spectrogram": spec, **feeds_for(manifest["dropout"], masks)})
    with torch.no_grad():
        z = encoder(torch.from_numpy(spec)).expand(6, -1)
        ref = generator(z, [torch.from_numpy(m) for m in masks]).numpy()
    assert images.shape == (6, 3, 96, 96) and mean.shape == spread.shape == (1, 3, 96, 96)
    scale = np.abs(ref).max()
    assert relative_error(images, ref) <= 1e-3
    assert relative_error(mean, ref.mean(0, keepdims=True), scale) <= 1e-3
    assert relative_error(spread, ref.std(0, keepdims=True), scale) <= 1e-3
    assert spread.max() > 0.05 * scale     # the MC samples really differ


def test_tampered_file_is_refused(exported, tmp_path: Path) -> None:
    export_dir, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    with open(copy / "generator.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(S2IError, match="does not match the sha256"):
        load_export_manifest(copy)


def test_batchnorm_folding_matches_eval_mode() -> None:
    torch.manual_seed(0)
    generator = DenseGenerator(64, 0.125)
    for m in generator.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    generator.eval()
    folded = fold_batchnorm(generator)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    z = torch.randn(2, 64)
    masks = generator.draw_masks(2)
    with torch.no_grad():
        assert torch.allclose(folded(z, masks), generator(z, masks), atol=1e-5)


def test_torchscript_exporter_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the torch.export route fails, the (deprecated) TorchScript exporter takes over."""
    import export.onnx_export as onnx_export
    from export.graphs import GeneratorGraph

    def broken(*args, **kwargs):
        raise RuntimeError("torch.export failed")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    generator = DenseGenerator(64, 0.125).eval()
    graph = GeneratorGraph(fold_batchnorm(generator))
    path = tmp_path / "generator.onnx"
    dynamic = {name: "batch" for name in graph.input_names}
    example = (torch.zeros(2, 64), *generator.ones_masks(2))
    assert onnx_export.write_onnx(graph, example, path, dynamic) == "torchscript"
    io = onnx_export.describe_io(path)
    assert io["inputs"][1]["shape"] == ["batch", generator.mask_channels[0]]
    assert io["outputs"][0]["shape"][0] == "batch"
    z = np.random.default_rng(0).uniform(-1, 1, (3, 64)).astype(np.float32)
    masks = [np.ones((3, c), np.float32) for c in generator.mask_channels]
    (image,) = session(path).run(None, {"embedding": z, **dict(zip(graph.input_names[1:],
                                                                   masks, strict=True))})
    with torch.no_grad():
        ref = generator(torch.from_numpy(z), [torch.from_numpy(m) for m in masks]).numpy()
    assert np.abs(image - ref).max() <= 1e-4


def test_full_size_translator_parity(tmp_path: Path) -> None:
    """The paper's sizes (width 1.0, D=512, ~54 M parameters): FP32 and FP16 parity."""
    checkpoint = make_tiny_checkpoint(tmp_path / "full.pt", width=1.0, embedding_dim=512,
                                      input_sensitive=True)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "full", fp16=True, fused=False,
                                         tensorrt=False))
    manifest = load_export_manifest(out)
    parity = manifest["parity"]
    assert parity["passed"] and parity["informative"]
    errors, rms = parity["relative_error"], {k: r["rms_relative_error"]
                                              for k, r in parity["files"].items()}
    assert errors["encoder"] <= 1e-3 and errors["generator"] <= 1e-3
    assert rms["encoder_fp16"] <= 1e-1 and rms["generator_fp16"] <= 1e-1
    assert manifest["dropout"][0]["channels"] == 512 and manifest["embedding_dim"] == 512
    for path in out.glob("*.onnx"):
        assert not op_types(path) & FORBIDDEN_OPS


# --- failures: clear one-line errors, nothing half-written ------------------------------

def test_broken_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "gan_last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(S2IError, match="no S2I sha256 seal") as info:
        export_translator(ExportConfig(bad, tmp_path / "out", tensorrt=False))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_mismatched_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    state = torch.load(checkpoint, weights_only=True)
    state["width"] = 0.25          # weights are for width 0.125
    save_checkpoint(tmp_path / "wrong.pt", {k: v for k, v in state.items()
                                            if k not in ("format", "version")})
    with pytest.raises(S2IError, match="does not match the networks") as info:
        export_translator(ExportConfig(tmp_path / "wrong.pt", tmp_path / "out", tensorrt=False))
    assert "\n" not in str(info.value)
    state["stage"] = "audio"
    save_checkpoint(tmp_path / "audio.pt", {k: v for k, v in state.items()
                                            if k not in ("format", "version")})
    with pytest.raises(S2IError, match="expected 'gan'"):
        export_translator(ExportConfig(tmp_path / "audio.pt", tmp_path / "out", tensorrt=False))
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_clear_error(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(S2IError, match="cannot create output folder"):
        export_translator(ExportConfig(checkpoint, blocker / "export", tensorrt=False))
    with pytest.raises(S2IError, match="not a folder"):
        export_translator(ExportConfig(checkpoint, blocker, tensorrt=False))
    (tmp_path / "someone_elses").mkdir()
    (tmp_path / "someone_elses" / "notes.txt").write_text("keep me")
    with pytest.raises(S2IError, match="holds no S2I export"):
        export_translator(ExportConfig(checkpoint, tmp_path / "someone_elses", tensorrt=False))
    assert (tmp_path / "someone_elses" / "notes.txt").read_text() == "keep me"
    code = run_cli(lambda: export_main([str(tmp_path / "missing_run")]))
    assert code == 2


def test_interrupted_or_failed_export_leaves_previous_export_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    out = tmp_path / "export"
    # (here and in the TensorRT tests below: no audio-in graphs, a third of each export's
    # time and nothing these tests look at)
    # interrupted before anything existed: nothing at all is left
    import export.translator as translator

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(translator, "check_parity", interrupt)
        with pytest.raises(KeyboardInterrupt):
            export_translator(ExportConfig(checkpoint, out, fused=False, tensorrt=False,
                                           audio_in=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    # a finished export, then a re-export whose parity check fails: the old one survives
    export_translator(ExportConfig(checkpoint, out, fused=False, tensorrt=False,
                                   audio_in=False))
    before = {p.name: sha256_file(p) for p in out.iterdir()}

    def failing(*args, **kwargs):
        return {"files": {"generator": {"relative_error": 1.0, "rms_relative_error": 0.9,
                                        "metric": "max", "limit": 1e-3, "ok": False}},
                "passed": False}

    with monkeypatch.context() as patch:
        patch.setattr(translator, "check_parity", failing)
        with pytest.raises(S2IError, match="does not reproduce PyTorch"):
            export_translator(ExportConfig(checkpoint, out, fused=False, tensorrt=False,
                                           audio_in=False))
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "export"]


def test_tensorrt_reason_or_engines(tmp_path: Path) -> None:
    reason = why_no_tensorrt()
    if reason is not None:
        assert "\n" not in reason and len(reason) < 200
        pytest.skip(f"TensorRT engines not testable here: {reason}")
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fp16=True, fused=False,
                                         timing_cache=tmp_path / "timing.cache"))
    manifest = load_export_manifest(out)
    assert manifest["tensorrt"]["built"] and manifest["tensorrt"]["gpu"]
    assert {"encoder_trt", "generator_trt", "encoder_fp16_trt"} <= set(manifest["models"])
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert manifest["parity"]["tensorrt"]["passed"]


def test_out_folder_of_another_kind_is_left_untouched(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    for manifest in ('{"format": "s2i-store", "version": 1}', "not json {", "[1, 2]"):
        store = tmp_path / "store"
        store.mkdir(exist_ok=True)
        (store / "manifest.json").write_text(manifest)
        (store / "train.bin").write_bytes(b"precious")
        with pytest.raises(S2IError, match="holds no S2I export") as info:
            export_translator(ExportConfig(checkpoint, store, tensorrt=False))
        assert "\n" not in str(info.value) and "left untouched" in str(info.value)
        assert (store / "train.bin").read_bytes() == b"precious"
        assert (store / "manifest.json").read_text() == manifest
    code = run_cli(lambda: export_main([str(checkpoint), "--out", str(store), "--no-tensorrt"]))
    assert code == 2 and (store / "train.bin").is_file()


def test_batch_sizes_must_include_one(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    with pytest.raises(S2IError, match="must include 1"):
        export_translator(ExportConfig(checkpoint, tmp_path / "out", batch_sizes=(4, 8),
                                       tensorrt=False))
    assert not (tmp_path / "out").exists()


def test_opset_below_what_the_exporter_writes_is_refused(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    out = tmp_path / "out"
    with pytest.raises(S2IError, match=r"--opset 9 not supported .*it wrote opset \d+") as info:
        export_translator(ExportConfig(checkpoint, out, opset=9, fused=False, tensorrt=False))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]   # nothing written


def test_manifest_opset_is_the_one_in_the_files(exported) -> None:
    export_dir, _, _ = exported
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for entry in manifest["models"].values():
        if entry["backend"] == "onnx":
            model = onnx.load(str(export_dir / entry["file"]), load_external_data=False)
            written = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
            assert written == [manifest["opset"]], entry["file"]


def test_tensorrt_failure_or_failed_parity_keeps_onnx_and_drops_engines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU: stand-ins for the engine build and its parity check."""
    import export.translator as translator

    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)

    def fake_build(folder: Path, models: dict, sizes: list[int], cache: Path | None):
        (folder / "encoder.plan").write_bytes(b"engine")
        entry = {"file": "encoder.plan", "sha256": sha256_file(folder / "encoder.plan"),
                 "precision": "fp32", "backend": "tensorrt"}
        return {"encoder_trt": entry}, {"built": True, "tensorrt": "fake"}

    def bad_parity(*args, **kwargs) -> dict:
        return {"files": {"encoder_trt": {"relative_error": 0.5, "rms_relative_error": 0.4,
                                          "metric": "rms", "limit": 2e-2, "ok": False}},
                "passed": False}

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory\nsecond line")

    cases = [({"build_engines": fake_build, "check_engine_parity": bad_parity},
              "encoder_trt: parity with PyTorch failed: relative error max 5.0e-01"),
             ({"build_engines": crash}, "RuntimeError: CUDA error: out of memory"),
             ({"build_engines": fake_build, "check_engine_parity": crash},
              "RuntimeError: CUDA error: out of memory")]
    for patches, reason in cases:
        out = tmp_path / "export"
        with monkeypatch.context() as patch:
            for name, value in patches.items():
                patch.setattr(translator, name, value)
            export_translator(ExportConfig(checkpoint, out, fused=False, tensorrt=True,
                                           audio_in=False))
        manifest = load_export_manifest(out)
        assert manifest["tensorrt"]["built"] is False
        assert reason in manifest["tensorrt"]["reason"]
        assert "\n" not in manifest["tensorrt"]["reason"]
        assert not list(out.glob("*.plan"))
        assert not any(e["backend"] == "tensorrt" for e in manifest["models"].values())
        assert (out / "encoder.onnx").is_file() and (out / "generator.onnx").is_file()


def test_engines_are_kept_or_dropped_one_by_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing FP16 generator engine drops itself and its FP16 encoder partner; the FP32
    engines stay, each with its verdict in the manifest (stand-ins: no GPU here)."""
    import export.translator as translator

    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=64)
    keys = ("encoder_trt", "generator_trt", "encoder_fp16_trt", "generator_fp16_trt")

    def fake_build(folder: Path, models: dict, sizes: list[int], cache: Path | None):
        entries = {}
        for key in keys:
            name = key.replace("_trt", "").replace("_fp16", ".fp16") + ".plan"
            (folder / name).write_bytes(key.encode())
            entries[key] = {"file": name, "sha256": sha256_file(folder / name),
                            "precision": "fp16" if "fp16" in key else "fp32",
                            "backend": "tensorrt"}
        return entries, {"built": True, "tensorrt": "fake", "engines": {}}

    def parity(encoder, generator, folder, engines, dropout) -> dict:
        rows = {key: {"relative_error": 1e-4, "rms_relative_error": 1e-5, "metric": "rms",
                      "limit": 2e-2, "ok": True} for key in engines}
        rows["generator_fp16_trt"] = {"relative_error": None, "rms_relative_error": None,
                                      "metric": "rms", "limit": 1e-1, "ok": False,
                                      "error": "RuntimeError: out of memory"}
        return {"files": rows, "passed": False}

    monkeypatch.setattr(translator, "build_engines", fake_build)
    monkeypatch.setattr(translator, "check_engine_parity", parity)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         tensorrt=True, audio_in=False))
    manifest = load_export_manifest(out)
    trt = manifest["tensorrt"]
    assert trt["built"] is True
    assert {k for k in keys if k in manifest["models"]} == {"encoder_trt", "generator_trt"}
    assert sorted(p.name for p in out.glob("*.plan")) == ["encoder.plan", "generator.plan"]
    verdicts = trt["engines"]
    assert verdicts["encoder_trt"]["kept"] and verdicts["generator_trt"]["kept"]
    assert "out of memory" in verdicts["generator_fp16_trt"]["reason"]
    assert not verdicts["encoder_fp16_trt"]["kept"]
    assert "dropped with generator_fp16_trt" in verdicts["encoder_fp16_trt"]["reason"]


def test_the_torchscript_fallback_declares_the_sizes_the_runtime_sees(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch.export fails, the TorchScript exporter writes the graphs; it left the audio
    encoder's embedding size symbolic, so the manifest announced [batch, batch] and the
    runtime refused the export ("the manifest's outputs ... are not the graph's")."""
    import export.onnx_export as onnx_export
    from runtime.model.backends import open_translator

    def fail(*args, **kwargs):
        raise RuntimeError("torch.export failed (simulated)")

    monkeypatch.setattr(onnx_export, "_export_dynamo", fail)
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", 0.125, 16, 0)
    out = export_translator(ExportConfig(checkpoint, tmp_path / "export", fused=False,
                                         tensorrt=False))
    entry = load_export_manifest(out)["models"]["encoder_audio"]
    assert entry["exporter"] == "torchscript"
    assert entry["outputs"][0]["shape"] == ["batch", 16]
    open_translator(out, features="graph").close()      # refused before the fix
