"""The paper's way to run a translator: PyTorch modules in eval mode, MC dropout on.

``EagerTranslator`` is a ``runtime.model.translator.Translator`` (``translate_batch`` from its
``encode`` and ``generate``, ``backend``, ``precision``, ``manifest``, ``dropout``) so the
benchmark can push it through the very same streaming loop as the ONNX Runtime and TensorRT
translators. Benchmarks only: ``runtime/`` never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import S2IError
from runtime.model.translator import EncoderGenerator
from trainer.checkpoint import load_translator
from trainer.models import AudioEncoder, DenseGenerator


class EagerTranslator(EncoderGenerator):
    """Encoder + generator as PyTorch eager modules under ``torch.inference_mode``.

    ``generate(z, masks)`` uses the given numpy masks (so every backend sees the same
    dropout draw); with ``masks=None`` the generator draws them itself, as the paper's code does.
    """

    def __init__(self, encoder: AudioEncoder, generator: DenseGenerator,
                 manifest: dict[str, Any], device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise S2IError(f"PyTorch device {device!r} asked for, but this torch has no CUDA")
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.generator = generator.eval().to(self.device)
        self.generator.mc_dropout = True
        self.manifest = manifest
        self.dropout: list[dict[str, Any]] = list(manifest["dropout"])
        self.features = "host"
        self.backend = "pytorch-cuda" if self.device.type == "cuda" else "pytorch-eager"
        self.precision = "fp32"

    @classmethod
    def from_checkpoint(cls, path: str | Path, manifest: dict[str, Any],
                        device: str = "cpu") -> EagerTranslator:
        """The modules of a GAN checkpoint (the one an export was made from)."""
        translator = load_translator(path)
        return cls(translator.encoder, translator.generator, manifest, device)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def encode(self, spectrogram: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.encoder(self._tensor(spectrogram)).cpu().numpy()

    def generate(self, z: np.ndarray, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        with torch.inference_mode():
            given = None if masks is None else [self._tensor(m) for m in masks]
            return self.generator(self._tensor(z), given).cpu().numpy()
