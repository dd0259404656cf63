"""The paper's networks: layer counts, shapes, sizes, and the generator's dropout masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.models import (
    DROPOUT_P,
    EMBEDDING_SIZES,
    AudioAutoencoder,
    AudioEncoder,
    DenseGenerator,
    Discriminator,
    InformativityClassifier,
    count_parameters,
)


def count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_layer_counts_match_the_paper() -> None:
    ae = AudioAutoencoder(512, width=0.125)
    assert count(ae.encoder, nn.Conv2d) == 13
    assert count(ae.decoder, nn.ConvTranspose2d) == 13
    assert count(DenseGenerator(512, 0.125), nn.ConvTranspose2d) == 25
    assert count(Discriminator(512, 0.125), nn.Conv2d) == 13   # 12 + the conditioned score


def test_full_size_shapes_and_parameter_counts() -> None:
    torch.manual_seed(0)
    encoder, generator = AudioEncoder(512), DenseGenerator(512)
    assert 16e6 < count_parameters(encoder) < 18e6          # paper: about 17 M
    assert 36e6 < count_parameters(generator) < 38.5e6      # paper: about 37 M
    encoder.eval()
    generator.eval()
    with torch.no_grad():
        z = encoder(torch.rand(2, 1, 128, 100) * 2 - 1)
        image = generator(z)
    assert z.shape == (2, 512) and z.abs().max() <= 1
    assert image.shape == (2, 3, 96, 96) and image.abs().max() <= 1
    assert generator.mask_channels == [512, 512, 304, 192, 144, 96]


@pytest.mark.parametrize("dim", EMBEDDING_SIZES)
def test_every_embedding_size_runs(dim: int) -> None:
    ae = AudioAutoencoder(dim, width=0.125)
    x = torch.rand(2, 1, 128, 100) * 2 - 1
    recon, z = ae(x)
    assert recon.shape == x.shape and z.shape == (2, dim)
    images = DenseGenerator(dim, 0.125)(z)
    assert images.shape == (2, 3, 96, 96)
    score = Discriminator(dim, 0.125)(images, z)
    assert score.shape == (2,) and score.abs().max() <= 1
    assert InformativityClassifier(0.5)(images).exp().sum(1).allclose(torch.ones(2))


def test_bad_embedding_size_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        DenseGenerator(130)


def test_xavier_init_zero_biases() -> None:
    for m in DenseGenerator(64, 0.125).modules():
        if isinstance(m, nn.ConvTranspose2d):
            assert torch.count_nonzero(m.bias) == 0
            bound = (6 / (m.weight.shape[0] * m.weight[0, 0].numel()
                          + m.weight.shape[1] * m.weight[0, 0].numel())) ** 0.5
            assert m.weight.abs().max() <= bound + 1e-6


def generator_and_z(seed: int = 0) -> tuple[DenseGenerator, torch.Tensor]:
    torch.manual_seed(seed)
    gen = DenseGenerator(64, 0.125).eval()
    return gen, torch.rand(4, 64) * 2 - 1


def test_given_masks_are_used_exactly() -> None:
    gen, z = generator_and_z()
    masks = gen.draw_masks(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = gen(z, masks), gen(z, [m.clone() for m in masks])
        ones = gen(z, gen.ones_masks(4))
        dropped = gen(z, [torch.zeros_like(masks[0])] + masks[1:])
    assert torch.equal(a, b)
    assert not torch.allclose(a, ones)
    assert not torch.allclose(a, dropped)


def test_drawn_masks_differ_and_mc_off_is_deterministic() -> None:
    gen, z = generator_and_z()
    with torch.no_grad():
        first, second = gen(z), gen(z)              # MC dropout on by default
        assert not torch.allclose(first, second)
        gen.mc_dropout = False
        plain = gen(z)
        assert torch.equal(plain, gen(z))
        assert torch.allclose(plain, gen(z, gen.ones_masks(4)))


def test_drawn_masks_have_the_layer_rates_and_scale() -> None:
    gen, _ = generator_and_z()
    masks = gen.draw_masks(4000, torch.Generator().manual_seed(0))
    for p, mask in zip(DROPOUT_P, masks, strict=True):
        dropped = (mask == 0).float().mean().item()
        assert abs(dropped - p) < 0.01
        assert torch.allclose(mask[mask > 0], torch.full_like(mask[mask > 0], 1 / (1 - p)))


def test_wrong_number_of_masks_is_refused() -> None:
    gen, z = generator_and_z()
    with pytest.raises(ValueError, match="6 masks"):
        gen(z, gen.ones_masks(4)[:5])
