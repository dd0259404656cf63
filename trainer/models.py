"""The paper's networks: audio autoencoder, dense generator, conditioned discriminator and the
informativity classifier (Fanzeres & Nadeu, Figs. 2-4; numbers in shared/REFERENCE.md).

Every network takes ``width``: 1.0 is the paper's channel counts, smaller values shrink every
layer alike (tests and the CPU demo use e.g. 0.125). The embedding size ``D`` is not scaled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Audio encoder: (out channels, kernel, stride) of its 13 convolutions; the last one outputs D.
ENCODER_LAYERS: tuple[tuple[int, tuple[int, int], int], ...] = (
    (80, (7, 5), 2), (176, (5, 3), 2), (192, (5, 3), 1), (224, (5, 3), 1), (272, (5, 3), 1),
    (304, (3, 3), 1), (352, (3, 3), 1), (416, (3, 3), 1), (512, (3, 3), 1), (512, (3, 3), 1),
    (512, (3, 3), 1), (512, (3, 3), 1), (0, (3, 3), 1),
)
# Dense generator: the three layers of each dense block; a transition before each block.
GENERATOR_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (512, 512, 512), (512, 416, 352), (304, 256, 224),
    (192, 176, 160), (144, 128, 112), (96, 80, 64),
)
# (kernel, stride, padding) of the 7 transposed-conv transitions: 1->2->4->6->12->24->48->96.
GENERATOR_TRANSITIONS: tuple[tuple[int, int, int], ...] = (
    (2, 1, 0), (3, 1, 0), (3, 1, 0), (4, 2, 1), (4, 2, 1), (4, 2, 1), (4, 2, 1),
)
# What transition k (k >= 1) outputs. "official" (the authors' code): the channel count of the
# LAST layer of the block before it (512, 512, 352, 224, 160, 112 at width 1; 38,644,137
# parameters at D = 512). "next-block" (this project before 2026-12-02): the first width of the
# block after it (512, 512, 304, 192, 144, 96; 37,234,777 parameters). Transition 0 outputs
# the first block's width in both.
GENERATOR_TRANSITION_WIDTHS: tuple[str, ...] = ("official", "next-block")
DROPOUT_P: tuple[float, ...] = (0.15, 0.13, 0.11, 0.09, 0.07, 0.05)
# Audio decoder (the authors' net_audio_autoencoder.py): Dropout2d after convT1..convT12, and
# the two layers whose kernel / stride are not the mirrored encoder's (index 11 = convT12,
# 12 = convT13). Before 2026-12-03 this project used (5,3) + output_padding for convT12 and
# evenly spaced rates; ``upgrade_decoder_state`` converts such checkpoints exactly.
DECODER_DROPOUT_P: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10, 0.10, 0.09,
                                        0.08, 0.07, 0.06, 0.05)
DECODER_KERNELS: dict[int, tuple[tuple[int, int], int]] = {11: ((5, 4), 2), 12: ((8, 6), 2)}
DISCRIMINATOR_CHANNELS: tuple[int, ...] = (96, 192, 192, 208, 224, 240) + (256,) * 6
EMBEDDING_SIZES: tuple[int, ...] = (128, 256, 512, 1024, 2048)


def scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# The largest networks S2I builds (and so the largest a checkpoint may ask for): parameters
# grow as width**2 (38 M at width 1.0, 150 M at 2.0) and with D.
MAX_EMBEDDING_DIM = 4096
MAX_WIDTH = 2.0


def check_embedding_dim(embedding_dim: int) -> None:
    if embedding_dim < 4 or embedding_dim % 4 or embedding_dim > MAX_EMBEDDING_DIM:
        raise ValueError(f"embedding size D={embedding_dim} must be a positive multiple of 4 "
                         f"up to {MAX_EMBEDDING_DIM} (the paper uses {EMBEDDING_SIZES})")


def check_width(width: float) -> None:
    if not 0 < width <= MAX_WIDTH:
        raise ValueError(f"width {width} must be in (0, {MAX_WIDTH:g}] (1.0 is the paper's "
                         "channel counts)")


class AudioEncoder(nn.Module):
    """``[B, 1, 128, 100]`` log-mel -> ``[B, D]`` embedding in [-1, 1] (13 convs, no padding)."""

    def __init__(self, embedding_dim: int = 512, width: float = 1.0) -> None:
        super().__init__()
        check_embedding_dim(embedding_dim)
        layers: list[nn.Module] = []
        in_ch = 1
        for i, (out, kernel, stride) in enumerate(ENCODER_LAYERS):
            last = i == len(ENCODER_LAYERS) - 1
            out_ch = embedding_dim if last else scaled(out, width)
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), nn.BatchNorm2d(out_ch),
                       nn.Tanh() if last else nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        xavier_init(self)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.net(spectrogram).flatten(1)


class AudioDecoder(nn.Module):
    """``[B, D]`` -> ``[B, 1, 128, 100]``: the encoder mirrored as the authors built it
    (``convT1..convT13``), Dropout2d (``DECODER_DROPOUT_P``) on at test time too.

    Spatial sizes 1 -> 3 -> ... -> 29x23 -> 61x48 (``convT12``: kernel (5,4), stride 2)
    -> 128x100 (``convT13``: kernel (8,6), stride 2): no output padding anywhere.
    """

    def __init__(self, embedding_dim: int = 512, width: float = 1.0) -> None:
        super().__init__()
        check_embedding_dim(embedding_dim)
        mirrored = list(reversed(ENCODER_LAYERS))
        channels = [embedding_dim] + [scaled(out, width) for out, _, _ in mirrored[1:]] + [1]
        self.dropout_p: list[float] = list(DECODER_DROPOUT_P)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (_, kernel, stride) in enumerate(mirrored):
            kernel, stride = DECODER_KERNELS.get(i, (kernel, stride))
            self.convs.append(nn.ConvTranspose2d(channels[i], channels[i + 1], kernel, stride))
            self.norms.append(nn.BatchNorm2d(channels[i + 1]))
        self.mc_dropout = True
        xavier_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z[:, :, None, None]
        active = self.training or self.mc_dropout
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if i == len(self.convs) - 1:
                return torch.tanh(x)
            x = F.dropout2d(F.relu(x), self.dropout_p[i], training=active)
        raise AssertionError("unreachable")


def upgrade_decoder_state(state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Convert, in place, a decoder state dict of the earlier layout (``convT12`` kernel
    (5,3) with ``output_padding=(0,1)``) to the authors' (5,4): the new fourth kernel column
    is zero. Exact: with (5,3) the 48th output column only ever received the bias, and a
    zero fourth column gives it exactly that again, so every output is unchanged (only the
    dropout rates, which are not weights, now follow the authors' list). Returns the keys
    converted (empty for a state already in the authors' layout)."""
    key = f"{prefix}convs.11.weight"
    weight = state.get(key)
    if weight is None or weight.shape[-1] != 3:
        return []
    state[key] = F.pad(weight, (0, 1))
    return [key]


class AudioAutoencoder(nn.Module):
    def __init__(self, embedding_dim: int = 512, width: float = 1.0) -> None:
        super().__init__()
        self.encoder = AudioEncoder(embedding_dim, width)
        self.decoder = AudioDecoder(embedding_dim, width)

    def forward(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(spectrogram)
        return self.decoder(z), z


def _deconv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
            final: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, kernel, stride, padding),
                         nn.BatchNorm2d(out_ch), nn.Tanh() if final else nn.ReLU(inplace=True))


class DenseBlock(nn.Module):
    """Three 3x3 layers: x1 = L1(x), x2 = L2(x1), x3 = L3(cat(x1, x2)); out = cat(x1, x2, x3)."""

    def __init__(self, in_ch: int, channels: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.layer1 = _deconv(in_ch, c1, 3, padding=1)
        self.layer2 = _deconv(c1, c2, 3, padding=1)
        self.layer3 = _deconv(c1 + c2, c3, 3, padding=1)
        self.out_channels = c1 + c2 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(torch.cat([x1, x2], 1))
        return torch.cat([x1, x2, x3], 1)


def check_transition_widths(transitions: str) -> str:
    if transitions not in GENERATOR_TRANSITION_WIDTHS:
        raise ValueError(f"generator transitions must be one of {GENERATOR_TRANSITION_WIDTHS}, "
                         f"got '{transitions}'")
    return transitions


def transition_channels(blocks: list[tuple[int, ...]], transitions: str) -> list[int]:
    """Output channels of transitions 0..5 (= the sizes of the six dropout masks)."""
    if check_transition_widths(transitions) == "next-block":
        return [b[0] for b in blocks]
    return [blocks[0][0]] + [b[-1] for b in blocks[:-1]]


class DenseGenerator(nn.Module):
    """``[B, D]`` embedding (+ optional channel masks) -> ``[B, 3, 96, 96]`` image in [-1, 1].

    25 transposed convolutions: 7 transitions and 6 dense blocks of 3. Channel dropout
    (``DROPOUT_P``) follows transitions 0..5 and stays on at test time (``mc_dropout``).
    A mask is a float ``[B, C]`` tensor of 0 or ``1/(1-p)``; pass ``masks`` to supply them
    from outside (the exported graph takes them as inputs), or leave it None to draw them.
    ``transitions`` picks the transition widths (``GENERATOR_TRANSITION_WIDTHS``); the default
    is the authors' code.
    """

    def __init__(self, embedding_dim: int = 512, width: float = 1.0,
                 transitions: str = "official") -> None:
        super().__init__()
        check_embedding_dim(embedding_dim)
        self.embedding_dim = embedding_dim
        self.transition_widths = check_transition_widths(transitions)
        blocks = [tuple(scaled(c, width) for c in b) for b in GENERATOR_BLOCKS]
        self.mask_channels: list[int] = transition_channels(blocks, transitions)
        self.transitions = nn.ModuleList()
        self.blocks = nn.ModuleList()
        in_ch = embedding_dim
        for i, (kernel, stride, padding) in enumerate(GENERATOR_TRANSITIONS):
            final = i == len(GENERATOR_TRANSITIONS) - 1
            out_ch = 3 if final else self.mask_channels[i]
            self.transitions.append(_deconv(in_ch, out_ch, kernel, stride, padding, final))
            if not final:
                block = DenseBlock(out_ch, blocks[i])  # type: ignore[arg-type]
                self.blocks.append(block)
                in_ch = block.out_channels
        self.dropout_p: list[float] = list(DROPOUT_P)
        self.mc_dropout = True
        xavier_init(self)

    def draw_masks(self, batch: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Fresh Bernoulli channel masks, scaled as dropout scales."""
        device = device or next(self.parameters()).device
        masks = []
        for p, c in zip(self.dropout_p, self.mask_channels, strict=True):
            keep = torch.rand(batch, c, generator=generator, device=device) >= p
            masks.append(keep.float() / (1.0 - p))
        return masks

    def ones_masks(self, batch: int) -> list[torch.Tensor]:
        device = next(self.parameters()).device
        return [torch.ones(batch, c, device=device) for c in self.mask_channels]

    def forward(self, z: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        if masks is None:
            drop = self.training or self.mc_dropout
            masks = self.draw_masks(z.shape[0]) if drop else None
        elif len(masks) != len(self.mask_channels):
            raise ValueError(f"generator takes {len(self.mask_channels)} masks, got {len(masks)}")
        x = z[:, :, None, None]
        for i, transition in enumerate(self.transitions):
            x = transition(x)
            if i < len(self.blocks):
                if masks is not None:
                    x = x * masks[i][:, :, None, None]
                x = self.blocks[i](x)
        return x


class Discriminator(nn.Module):
    """Image + embedding -> RC-score in [-1, 1] (realness and coherence with the sound)."""

    def __init__(self, embedding_dim: int = 512, width: float = 1.0) -> None:
        super().__init__()
        check_embedding_dim(embedding_dim)
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out in enumerate(DISCRIMINATOR_CHANNELS):
            out_ch = scaled(out, width)
            kernel, stride = (5, 2) if i == 0 else (3, 2) if i == 1 else (3, 1)
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride, bias=False),
                       nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), nn.Dropout2d(0.5)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)           # 96x96 -> 2x2
        self.score = nn.Sequential(nn.Conv2d(in_ch + embedding_dim // 4, 1, 2, bias=False),
                                   nn.BatchNorm2d(1), nn.Tanh())
        xavier_init(self)

    def forward(self, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.features(image)
        cond = z.reshape(z.shape[0], -1, 2, 2)
        return self.score(torch.cat([h, cond], 1)).flatten()


# Informativity classifier architectures (docs/EVALUATION.md, docs/FIDELITY.md):
# "official" the authors' net_visual_interpretability.py as it runs (fc1 defined but skipped:
#            33,610 parameters in use), "paper" the paper's text (5 convs + 3 FC, BN, ReLU and
#            dropout after each but the last; the official sizes, fc1 used: 34,730), "ours"
#            this project's first version (3x3 convs with padding, global average pooling,
#            FC 32 -> 32 -> 2 without BN: 32,970).
CLASSIFIER_ARCHITECTURES: tuple[str, ...] = ("official", "paper", "ours")
CLASSIFIER_CONV_CHANNELS: tuple[int, ...] = (12, 32, 32, 32, 32)
CLASSIFIER_CONV_DROPOUT: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def check_classifier_architecture(architecture: str) -> str:
    if architecture not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(f"classifier architecture must be one of {CLASSIFIER_ARCHITECTURES}, "
                         f"got {architecture!r}")
    return architecture


def _fc_bn(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
            nn.Dropout(0.5)]


class InformativityClassifier(nn.Module):
    """Binary informative / non-informative classifier for one sound class:
    ``[B, 3, 96, 96]`` in [-1, 1] -> log-probabilities ``[B, 2]``."""

    def __init__(self, width: float = 1.0, architecture: str = "official") -> None:
        super().__init__()
        self.architecture = check_classifier_architecture(architecture)
        channels = [3] + [scaled(c, width) for c in CLASSIFIER_CONV_CHANNELS]
        ours = architecture == "ours"
        layers: list[nn.Module] = []
        for i, p in enumerate(CLASSIFIER_CONV_DROPOUT):
            # official / paper: no padding, the first kernel 5x5: 96 -> 46 -> 22 -> 10 -> 4 -> 1
            kernel, padding = (3, 1) if ours else (5 if i == 0 else 3, 0)
            layers += [nn.Conv2d(channels[i], channels[i + 1], kernel, 2, padding),
                       nn.BatchNorm2d(channels[i + 1]), nn.ReLU(inplace=True), nn.Dropout2d(p)]
        pool = [nn.AdaptiveAvgPool2d(1)] if ours else []
        self.features = nn.Sequential(*layers, *pool, nn.Flatten())
        hidden = scaled(32, width)
        if ours:
            head: list[nn.Module] = [nn.Linear(channels[-1], hidden), nn.ReLU(inplace=True),
                                     nn.Dropout(0.5)]
        else:
            head = (_fc_bn(channels[-1], hidden) if architecture == "paper" else []) \
                + _fc_bn(channels[-1] if architecture == "official" else hidden, hidden)
        self.head = nn.Sequential(*head, nn.Linear(hidden, 2))
        xavier_init(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.features(image)), dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
