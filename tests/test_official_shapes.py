"""Parameter counts of every network against the authors' modules (leofanzeres/s2i, models/).

The reference counts are computed here from the official layer tables (channels, kernels,
bias flags, every layer followed by BatchNorm), written out from the authors' files, not
from trainer.models. Our networks are built on the meta device: counting a full-width
model allocates nothing and runs no forward pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.models import (
    AudioDecoder,
    AudioEncoder,
    DenseGenerator,
    Discriminator,
    InformativityClassifier,
    count_parameters,
)

Layer = tuple[int, int, tuple[int, int], bool]      # in, out, kernel, bias (+ BatchNorm)


def reference(layers: list[Layer]) -> int:
    return sum(i * o * kh * kw + (o if bias else 0) + 2 * o for i, o, (kh, kw), bias in layers)


def chain(channels: list[int], kernels: list[tuple[int, int]], bias: bool = True
          ) -> list[Layer]:
    return [(channels[k], channels[k + 1], kernel, bias) for k, kernel in enumerate(kernels)]


# net_audio_autoencoder.py: conv_num_maps, conv1..conv13 and convT1..convT13
AUDIO_MAPS = [80, 176, 192, 224, 272, 304, 352, 416, 512, 512, 512, 512]
ENCODER_KERNELS = [(7, 5)] + [(5, 3)] * 4 + [(3, 3)] * 8
DECODER_KERNELS = [(3, 3)] * 8 + [(5, 3)] * 3 + [(5, 4), (8, 6)]
# net_visual_generator_dense.py: get_dimensions(), convT1..convT18
GENERATOR_MAPS = [512, 512, 512, 512, 416, 352, 304, 256, 224, 192, 176, 160, 144, 128, 112,
                  96, 80, 64]
TRANSITION_KERNELS = [(2, 2), (3, 3), (3, 3), (4, 4), (4, 4), (4, 4), (4, 4)]
# net_discriminator.py: conv1..conv12 (bias_conv = False), conv13 on the conditioned 2x2
DISCRIMINATOR_MAPS = [96, 192, 192, 208, 224, 240] + [256] * 6


def official_encoder(d: int) -> int:
    return reference(chain([1] + AUDIO_MAPS + [d], ENCODER_KERNELS))


def official_decoder(d: int) -> int:
    return reference(chain([d] + AUDIO_MAPS[::-1] + [1], DECODER_KERNELS))


def official_generator(d: int) -> int:
    layers: list[Layer] = []
    in_ch = d
    for t, kernel in enumerate(TRANSITION_KERNELS):
        if t == 6:
            layers.append((in_ch, 3, kernel, True))
            break
        # transition t outputs the last map of the block before it (convT1 for t = 0)
        out = GENERATOR_MAPS[0] if t == 0 else GENERATOR_MAPS[3 * t - 1]
        layers.append((in_ch, out, kernel, True))
        c1, c2, c3 = GENERATOR_MAPS[3 * t: 3 * t + 3]
        layers += [(out, c1, (3, 3), True), (c1, c2, (3, 3), True), (c1 + c2, c3, (3, 3), True)]
        in_ch = c1 + c2 + c3
    return reference(layers)


def official_discriminator(d: int) -> int:
    kernels = [(5, 5)] + [(3, 3)] * 11
    return reference(chain([3] + DISCRIMINATOR_MAPS, kernels, bias=False)
                     + [(256 + d // 4, 1, (2, 2), False)])


def official_classifier(fc1: bool) -> int:
    """net_visual_interpretability.py: conv1 5x5, conv2..5 3x3 (bias, BN); fc2 + BatchNorm1d,
    fc3; fc1 + BatchNorm1d only when it runs (``fc1_pass``; False in the authors' code)."""
    convs = reference(chain([3, 12, 32, 32, 32, 32], [(5, 5)] + [(3, 3)] * 4))
    fc_bn = 32 * 32 + 32 + 2 * 32
    return convs + fc_bn * (2 if fc1 else 1) + 32 * 2 + 2


def on_meta(build: type[nn.Module], *args: object) -> int:
    with torch.device("meta"):
        return count_parameters(build(*args))


@pytest.mark.parametrize("d", [128, 512, 2048])
def test_every_network_matches_the_official_shapes(d: int) -> None:
    assert on_meta(AudioEncoder, d) == official_encoder(d)
    assert on_meta(AudioDecoder, d) == official_decoder(d)
    assert on_meta(DenseGenerator, d) == official_generator(d)
    assert on_meta(Discriminator, d) == official_discriminator(d)


def test_published_counts() -> None:
    """The counts the fidelity check quoted (D = 512 unless said)."""
    assert official_encoder(512) == on_meta(AudioEncoder, 512) == 16_672_912
    assert official_decoder(512) == on_meta(AudioDecoder, 512) == 16_742_819
    assert official_decoder(128) == on_meta(AudioDecoder, 128) == 14_973_347
    assert official_generator(512) == on_meta(DenseGenerator, 512) == 38_644_137
    assert official_discriminator(512) == on_meta(Discriminator, 512) == 5_276_450


def test_classifier_architectures() -> None:
    assert on_meta(InformativityClassifier, 1.0, "official") == official_classifier(False) \
        == 33_610
    assert on_meta(InformativityClassifier, 1.0, "paper") == official_classifier(True) == 34_730
    assert on_meta(InformativityClassifier, 1.0, "ours") == 32_970
    images = torch.rand(3, 3, 96, 96) * 2 - 1
    for arch in ("official", "paper", "ours"):
        model = InformativityClassifier(0.5, arch).eval()
        assert model(images).exp().sum(1).allclose(torch.ones(3))
    with pytest.raises(ValueError, match="official"):
        InformativityClassifier(1.0, "wide")


def test_decoder_layout_and_earlier_checkpoints_convert_exactly() -> None:
    """convT12 is (5,4) stride 2 without output padding and the dropout rates are the
    authors' list; a state dict of the earlier (5,3) + output-padding decoder converts to
    the same outputs."""
    from trainer.models import DECODER_DROPOUT_P, upgrade_decoder_state

    decoder = AudioDecoder(64, 0.125)
    assert decoder.dropout_p == list(DECODER_DROPOUT_P) == [
        0.15, 0.14, 0.13, 0.12, 0.11, 0.10, 0.10, 0.09, 0.08, 0.07, 0.06, 0.05]
    convT12 = decoder.convs[11]
    assert convT12.kernel_size == (5, 4) and convT12.stride == (2, 2)
    assert all(c.output_padding == (0, 0) for c in decoder.convs)
    torch.manual_seed(0)
    old = AudioDecoder(64, 0.125)
    old.convs[11] = nn.ConvTranspose2d(convT12.in_channels, convT12.out_channels, (5, 3), 2,
                                       output_padding=(0, 1))
    old.eval()
    old.mc_dropout = False
    state = old.state_dict()
    assert upgrade_decoder_state(state) == ["convs.11.weight"]
    assert upgrade_decoder_state(state) == []           # already converted
    decoder.load_state_dict(state)
    decoder.eval()
    decoder.mc_dropout = False
    z = torch.rand(2, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(old(z), decoder(z), atol=1e-6)
