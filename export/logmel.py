"""The front end (``runtime/frontend.py``) as a torch module, for audio-in ONNX graphs.

``LogMel(cfg)`` maps mono audio at the model rate ``[B, n_samples]`` to the encoder's input
``[B, 1, n_mels, n_frames]``, with the same arithmetic as ``runtime.frontend.log_mel_batch``:

1. ``Clip`` to [-1, 1] (what the runtime's ``sanitise_audio`` does before the front end;
   NaN must still be removed by the caller), reflect padding by ``cfg.pad`` / ``cfg.pad_after``
   samples (ONNX ``Pad``, mode reflect).
2. Framing, periodic Hamming window and the DFT in ONE ``Conv`` (1-D, stride = hop): its
   ``2 * (n_fft//2 + 1)`` output channels are the window times the cosine and sine bases of
   ``rfft(frame, n_fft)`` (a frame shorter than ``n_fft`` is zero-padded: those taps are
   zero, so the kernel is just the frame long). ONNX Runtime's CUDA provider has no DFT/STFT
   kernel, and TensorRT and onnxruntime-web run every op used here: Clip, Pad, Conv, Mul,
   Add, Slice, MatMul, Max, Log, Reshape/Unsqueeze.
3. Power ``re^2 + im^2``, one ``MatMul`` by the mel weights with their rows already flipped
   (row 0 = the highest band), ``10*log10(max(mel, amin))`` as ``Log`` times a constant, the
   fixed dB range clipped and scaled to [-1, 1].

The bases are computed in float64 and stored as float32; the module always runs in FP32
(``AudioEncoderGraph.to_half`` keeps it so): FP16 cannot hold the power range (1e-10..1e6).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.frontend import FrontEndConfig, mel_filterbank


def dft_kernel(cfg: FrontEndConfig) -> np.ndarray:
    """``[2*bins, 1, win]``: channels ``0..bins-1`` the real part of ``rfft(frame*window,
    n_fft)``, ``bins..2*bins-1`` its imaginary part (float64 arithmetic, float32 result)."""
    bins = cfg.n_fft // 2 + 1
    n = np.arange(cfg.win_length)
    window = 0.54 - 0.46 * np.cos(2 * np.pi * n / cfg.win_length)   # frontend.hamming
    angle = 2 * np.pi * np.outer(np.arange(bins), n) / cfg.n_fft      # [bins, win]
    basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window  # [2*bins, win]
    return basis[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """``audio [B, n_samples] -> features [B, 1, n_mels, n_frames]`` in [-1, 1]."""

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bins = cfg.n_fft // 2 + 1
        self.register_buffer("kernel", torch.from_numpy(dft_kernel(cfg)))
        self.register_buffer("mel", torch.from_numpy(np.ascontiguousarray(
            mel_filterbank(cfg)[::-1])))                                   # [mels, bins]
        self.db_per_log = 10.0 / math.log(10.0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = audio.float().clamp(-1.0, 1.0).unsqueeze(1)                     # [B, 1, n]
        x = nn.functional.pad(x, (cfg.pad, cfg.pad_after), mode="reflect")
        spectrum = nn.functional.conv1d(x, self.kernel, stride=cfg.hop_length)  # [B, 2F, T]
        real, imag = spectrum[:, :self.bins], spectrum[:, self.bins:]
        power = real * real + imag * imag                                    # [B, F, T]
        mel = torch.matmul(self.mel, power)                                  # [B, mels, T]
        db = torch.log(torch.clamp(mel, min=cfg.amin)) * self.db_per_log
        scaled = (torch.clamp(db, cfg.db_min, cfg.db_max) - cfg.db_min) \
            * (2.0 / (cfg.db_max - cfg.db_min)) - 1.0
        return scaled.unsqueeze(1)


class FrontEndGraph(nn.Module):
    """The front end alone as a graph: ``audio [B, n_samples] -> spectrogram [B,1,M,T]``
    (``prepend_front_end`` joins it to a graph another tool wrote, e.g. the INT8 encoder)."""

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.front = LogMel(cfg)
        self.input_names, self.output_names = ["audio"], ["spectrogram"]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.front(audio)


def prepend_front_end(front: Path, model: Path, out: Path) -> None:
    """Write ``out``: ``model`` (a graph whose input is ``spectrogram``) fed by the front-end
    graph ``front`` (``FrontEndGraph``), so its input becomes ``audio``. The front end's
    internal names get an ``s2i_front/`` prefix (no clash); IR versions are aligned to the
    model's. Checked with ``export.onnx_export.check_onnx``."""
    import onnx
    import onnx.compose

    from export.onnx_export import check_onnx

    head, body = onnx.load(str(front)), onnx.load(str(model))
    head = onnx.compose.add_prefix(head, "s2i_front/", rename_inputs=False,
                                   rename_outputs=False)
    head.ir_version = body.ir_version
    merged = onnx.compose.merge_models(head, body, io_map=[("spectrogram", "spectrogram")])
    del merged.metadata_props[:]
    merged.metadata_props.extend(body.metadata_props)
    onnx.save_model(merged, str(out))
    check_onnx(out)
