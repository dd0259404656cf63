"""The modules that become ONNX graphs: fixed positional inputs, named like the graph's.

Every graph takes and returns float32. ``graph.to_half()`` turns the weights and the
computation to float16 with casts at the edges (FP16 internals, FP32 inputs and outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models import DROPOUT_P, AudioEncoder, DenseGenerator

N_MASKS = len(DROPOUT_P)


def mask_names(count: int = N_MASKS) -> list[str]:
    return [f"mask{i}" for i in range(count)]


def _check_mask_count(generator: DenseGenerator) -> None:
    if len(generator.mask_channels) != N_MASKS:
        raise ValueError(f"export graphs take {N_MASKS} masks, the generator has "
                         f"{len(generator.mask_channels)}")


class _Graph(nn.Module):
    input_names: list[str]
    output_names: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.compute_dtype = torch.float32

    def to_half(self) -> _Graph:
        self.half()
        self.compute_dtype = torch.float16
        return self

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.compute_dtype)


class EncoderGraph(_Graph):
    """``spectrogram [B,1,128,100] -> embedding [B,D]``."""

    def __init__(self, encoder: AudioEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = ["spectrogram"]
        self.output_names = ["embedding"]

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._in(spectrogram)).float()


class GeneratorGraph(_Graph):
    """``embedding [B,D], mask0..mask5 [B,C_i] -> image [B,3,96,96]``: masks are inputs, so
    the graph holds no Dropout or random op (MC dropout works on every backend)."""

    def __init__(self, generator: DenseGenerator) -> None:
        super().__init__()
        _check_mask_count(generator)
        self.generator = generator
        self.input_names = ["embedding", *mask_names()]
        self.output_names = ["image"]

    def forward(self, embedding: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor,
                mask2: torch.Tensor, mask3: torch.Tensor, mask4: torch.Tensor,
                mask5: torch.Tensor) -> torch.Tensor:
        # explicit arguments (not *masks): the exporter maps dynamic axes by argument
        masks = [self._in(m) for m in (mask0, mask1, mask2, mask3, mask4, mask5)]
        return self.generator(self._in(embedding), masks).float()


class TranslatorGraph(_Graph):
    """One window, K MC samples: ``spectrogram [1,1,128,100]``, masks ``[K,C_i]`` ->
    ``images [K,3,96,96]``, their ``mean [1,3,96,96]`` and per-pixel ``uncertainty``
    (standard deviation across the K samples, ``[1,3,96,96]``)."""

    def __init__(self, encoder: AudioEncoder, generator: DenseGenerator) -> None:
        super().__init__()
        _check_mask_count(generator)
        self.encoder = encoder
        self.generator = generator
        self.input_names = ["spectrogram", *mask_names()]
        self.output_names = ["images", "mean", "uncertainty"]

    def forward(self, spectrogram: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor,
                mask2: torch.Tensor, mask3: torch.Tensor, mask4: torch.Tensor,
                mask5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks = [self._in(m) for m in (mask0, mask1, mask2, mask3, mask4, mask5)]
        z = self.encoder(self._in(spectrogram)).expand(mask0.shape[0], -1)
        images = self.generator(z, masks).float()
        mean = images.mean(0, keepdim=True)
        uncertainty = (images - mean).square().mean(0, keepdim=True).sqrt()
        return images, mean, uncertainty


class _AudioIn(_Graph):
    """Mixin for the audio-in graphs: the front end (``export.logmel.LogMel``) stays FP32
    when the rest turns FP16 (the power range does not fit float16)."""

    front: nn.Module

    def to_half(self) -> _Graph:
        super().to_half()
        self.front.float()
        return self

    def _features(self, audio: torch.Tensor) -> torch.Tensor:
        return self._in(self.front(audio))


class AudioEncoderGraph(_AudioIn):
    """``audio [B, n_samples] -> embedding [B,D]``: ``EncoderGraph`` with the log-mel inside."""

    def __init__(self, encoder: AudioEncoder, front: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.encoder = encoder
        self.input_names = ["audio"]
        self.output_names = ["embedding"]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._features(audio)).float()


class AudioTranslatorGraph(_AudioIn):
    """``TranslatorGraph`` with the log-mel inside: ``audio [1, n_samples]``, masks ``[K,C_i]``
    -> ``images [K,3,96,96]``, ``mean`` and ``uncertainty [1,3,96,96]``."""

    def __init__(self, encoder: AudioEncoder, generator: DenseGenerator,
                 front: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.translator = TranslatorGraph(encoder, generator)
        self.input_names = ["audio", *mask_names()]
        self.output_names = self.translator.output_names

    def to_half(self) -> _Graph:
        super().to_half()
        self.translator.compute_dtype = torch.float16
        return self

    def forward(self, audio: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor,
                mask2: torch.Tensor, mask3: torch.Tensor, mask4: torch.Tensor,
                mask5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.translator(self._features(audio), mask0, mask1, mask2, mask3, mask4, mask5)
