"""Audio-in graphs: the log-mel front end inside the ONNX graph equals runtime/frontend.py on
real recordings and edge inputs; the exported encoder_audio / translator_audio give the host
path's embeddings and images (within 1 grey level at FP32, same masks); the runtime's
``--features graph|host``."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import soxr
import torch
from helpers_export import make_tiny_checkpoint, shared_export
from helpers_runtime import run_cli, write_tone_wav

from export.logmel import LogMel
from export.onnx_export import op_types, write_onnx
from export.parity import FEATURE_TOLERANCE
from export.translator import ExportConfig, export_translator
from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, log_mel_batch, pad_or_trim
from runtime.model.backends import open_translator
from runtime.model.manifest import STAMP_FINGERPRINT
from runtime.model.masks import draw_masks
from runtime.model.onnx_metadata import read_onnx_metadata
from runtime.serve.pipeline import Batch, Pipeline, Window
from runtime.wire.protocol import images_to_uint8, sanitise_audio

# Real recordings on any machine with this Python: CPython's own test sounds (a plucked
# string, recorded; 16/24/32-bit PCM at 11025 Hz, stereo).
AUDIO_DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata"
RECORDINGS = sorted(AUDIO_DATA.glob("pluck-pcm*.wav"))
# ops every target runs: ONNX Runtime CPU/CUDA, TensorRT, onnxruntime-web (WASM)
PORTABLE_OPS = {"Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Div",
                "Log", "MatMul", "Max", "Min", "Mul", "Pad", "Reshape", "Shape", "Slice",
                "Sub", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Gather"}


class _Features(torch.nn.Module):
    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.front = LogMel(cfg)
        self.input_names, self.output_names = ["audio"], ["features"]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.front(audio)


def recordings(cfg: FrontEndConfig) -> np.ndarray:
    """Windows of the real recordings at the front end's rate: each file's start and a
    window ending at its end (a 0.3-s recording is zero-padded, as pad_or_trim does)."""
    if not RECORDINGS:
        pytest.skip(f"no recordings in {AUDIO_DATA} (CPython's test sounds)")
    windows = []
    for path in RECORDINGS:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        mono = soxr.resample(audio.mean(axis=1), rate, cfg.sample_rate).astype(np.float32)
        windows += [pad_or_trim(mono, cfg), pad_or_trim(mono[::-1].copy(), cfg),
                    pad_or_trim(mono * 8, cfg)]        # loud: clips once sanitised
    return sanitise_audio(np.stack(windows))


def edge_inputs(cfg: FrontEndConfig) -> np.ndarray:
    """Silence, full-scale clipping, a lone click, DC, and NaN/inf audio after the runtime's
    sanitising (NaN -> 0, clipped to [-1, 1])."""
    n, rng = cfg.n_samples, np.random.default_rng(1)
    t = np.arange(n) / cfg.sample_rate
    broken = rng.standard_normal(n).astype(np.float32)
    broken[::7], broken[3::11], broken[5::13] = np.nan, np.inf, -np.inf
    click = np.zeros(n, np.float32)
    click[n // 2] = 1.0
    return sanitise_audio(np.stack([
        np.zeros(n), np.sign(np.sin(2 * np.pi * 440 * t)), 4 * np.sin(2 * np.pi * 97 * t),
        click, np.full(n, 0.5), 1e-6 * rng.standard_normal(n), broken]).astype(np.float32))


@pytest.fixture(scope="module", params=["default", "s2i-official"])
def front_graph(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[FrontEndConfig, ort.InferenceSession, Path]:
    """The front end alone, exported as the audio-in graphs carry it."""
    cfg = FrontEndConfig.preset(request.param)
    path = tmp_path_factory.mktemp("front") / "features.onnx"
    write_onnx(_Features(cfg), (0.1 * torch.randn(2, cfg.n_samples),), path,
               {"audio": "batch"})
    return cfg, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path


@pytest.mark.parametrize("inputs", [recordings, edge_inputs])
def test_in_graph_log_mel_equals_the_numpy_front_end(front_graph, inputs) -> None:
    cfg, session, _ = front_graph
    audio = inputs(cfg)
    (got,) = session.run(None, {"audio": audio})
    want = log_mel_batch(audio, cfg)[:, None]
    assert got.shape == want.shape == (len(audio), 1, cfg.n_mels, cfg.n_frames)
    error = np.abs(got - want).max()
    assert error <= FEATURE_TOLERANCE, f"max |graph - numpy| = {error:.2e}"
    assert want.std() > 0.05          # the inputs really span the range, not all floor


def test_in_graph_log_mel_uses_portable_ops_only(front_graph) -> None:
    _, _, path = front_graph
    ops = op_types(path)
    assert "Conv" in ops and not ops & {"DFT", "STFT", "MelWeightMatrix", "HammingWindow"}
    assert ops <= PORTABLE_OPS, sorted(ops - PORTABLE_OPS)


@pytest.fixture(scope="module")
def audio_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An input-sensitive tiny export with the fused graphs (so translator_audio too): the
    one test_backends.py reads."""
    return shared_export(tmp_path_factory, embedding_dim=64, fp16=True, fused=True,
                         input_sensitive=True)


def test_export_writes_the_audio_in_graphs(audio_export: Path) -> None:
    import json

    manifest = json.loads((audio_export / "manifest.json").read_text())
    cfg = FrontEndConfig.from_dict(manifest["front_end"])
    encoder, fused = manifest["models"]["encoder_audio"], manifest["models"]["translator_audio"]
    assert encoder["inputs"] == [{"name": "audio", "shape": ["batch", cfg.n_samples],
                                  "dtype": "float32"}]
    assert [o["name"] for o in encoder["outputs"]] == ["embedding"]
    assert [i["name"] for i in fused["inputs"]] == ["audio", *[f"mask{i}" for i in range(6)]]
    assert fused["inputs"][0]["shape"] == [1, cfg.n_samples]
    assert [o["name"] for o in fused["outputs"]] == ["images", "mean", "uncertainty"]
    assert fused["conv_rewrite"]["strided"] > 0              # the Conv rewrite still applies
    for entry in (encoder, fused):
        metadata = read_onnx_metadata(audio_export / entry["file"])
        assert metadata[STAMP_FINGERPRINT] == cfg.fingerprint()
    parity = manifest["parity"]
    assert parity["files"]["encoder_audio"]["ok"] and parity["files"]["translator_audio"]["ok"]
    assert parity["front_end"]["ok"] and parity["front_end"]["max_abs_error"] <= 1e-4


def test_audio_in_graphs_give_the_host_paths_images(audio_export: Path) -> None:
    graph = open_translator(audio_export, backend="onnxruntime-cpu")
    assert graph.features == "graph"
    cfg = FrontEndConfig.from_dict(graph.manifest["front_end"])
    audio = np.concatenate([recordings(cfg), edge_inputs(cfg)])
    features = log_mel_batch(audio, cfg)[:, None]
    z_graph, z_host = graph.encode_audio(audio), graph.encode(features)
    assert np.abs(z_graph - z_host).max() <= 1e-3 * np.abs(z_host).max()
    masks = draw_masks(graph.dropout, 4, np.random.default_rng(0))
    spread = []
    for i in range(len(audio)):
        got = graph.translate_window_audio(audio[i:i + 1], masks)
        want = graph.translate_window(features[i:i + 1], masks)
        diff = np.abs(images_to_uint8(got[0]).astype(int) - images_to_uint8(want[0]))
        assert diff.max() <= 1, f"window {i}: {diff.max()} grey levels apart"
        assert np.abs(got[2] - want[2]).max() <= 8e-3      # uncertainty, image units
        spread.append(want[0])
    # input-sensitive: different sounds give different images (the comparison means something)
    assert np.abs(spread[0] - spread[-1]).max() > 0.05


def test_pipeline_sends_audio_to_the_model_with_features_graph(audio_export: Path) -> None:
    graph = Pipeline(open_translator(audio_export, backend="onnxruntime-cpu"), samples=2)
    host = Pipeline(open_translator(audio_export, backend="onnxruntime-cpu",
                                    features="host"), samples=2)
    assert graph.info()["features"] == "graph" and host.info()["features"] == "host"
    cfg = graph.front_end
    audio = np.concatenate([recordings(cfg)[:3], edge_inputs(cfg)[-1:]])
    audio[-1, ::5] = np.nan                        # sanitised by the features stage
    windows = [Window(f"s{i}", a, 0.0) for i, a in enumerate(audio)]
    masks = graph.draw_masks(len(windows) * 2)
    batch = graph.features(Batch(list(windows)))
    assert batch.features is not None and batch.features.shape == (len(windows), cfg.n_samples)
    got, want = graph.process_batch(windows, masks), host.process_batch(windows, masks)
    for g, w in zip(got, want, strict=True):
        assert g.header["stream"] == w.header["stream"]
        assert np.abs(g.images.astype(int) - w.images).max() <= 1


def test_features_graph_is_refused_where_the_export_has_no_audio_in_graph(
        tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "gan.pt", width=0.125, embedding_dim=32)
    export = export_translator(ExportConfig(checkpoint, tmp_path / "export", tensorrt=False,
                                            audio_in=False))
    assert open_translator(export, backend="onnxruntime-cpu").features == "host"
    with pytest.raises(S2IError, match="--features graph.*no 'encoder_audio'"):
        open_translator(export, backend="onnxruntime-cpu", features="graph")
    with pytest.raises(S2IError, match="unknown features"):
        open_translator(export, backend="onnxruntime-cpu", features="gpu")
    wav = write_tone_wav(tmp_path / "tone.wav", 1.0)
    done = run_cli("s2i-stream", "--file", str(wav), "--export", str(export), "--features",
                   "graph", "--pub", "tcp://127.0.0.1:*")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --features graph:")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_throughput_benchmark_times_the_audio_in_step(audio_export: Path) -> None:
    from benchmarks.throughput import features_step, in_graph, measure_batch

    graph = open_translator(audio_export, backend="onnxruntime-cpu")
    cfg = FrontEndConfig.from_dict(graph.manifest["front_end"])
    windows = edge_inputs(cfg)
    assert in_graph(graph) and features_step(windows, cfg, True)[0].shape == windows.shape
    point = measure_batch(graph, windows, 3, cfg, 2, np.random.default_rng(0), reps=3,
                          time_cap_s=1.0)
    assert point["streams"] == 3 and point["reps"] == 3 and point["p99_ms"] > 0
