"""The paper's networks: layer counts, shapes, sizes, and the generator's dropout masks."""

from __future__ import annotations

from pathlib import Path

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
    assert count_parameters(encoder) == 16_672_912
    assert count_parameters(generator) == 38_644_137        # the authors' transition widths
    encoder.eval()
    generator.eval()
    with torch.no_grad():
        z = encoder(torch.rand(2, 1, 128, 100) * 2 - 1)
        image = generator(z)
    assert z.shape == (2, 512) and z.abs().max() <= 1
    assert image.shape == (2, 3, 96, 96) and image.abs().max() <= 1
    assert generator.mask_channels == [512, 512, 352, 224, 160, 112]


def test_transition_widths_official_and_older_variant() -> None:
    """Transition k >= 1 outputs the last width of the block before it (official); the older
    variant (the next block's first width) stays loadable. Checked at a tiny width, where both
    follow the scaled block widths, and by counting the full-size variant's parameters."""
    official, older = DenseGenerator(64, 0.125), DenseGenerator(64, 0.125, "next-block")
    assert official.mask_channels == [64, 64, 44, 28, 20, 14]
    assert older.mask_channels == [64, 64, 38, 24, 18, 12]
    for gen in (official, older):
        outs = [t[0].out_channels for t in gen.transitions][:6]
        assert outs == gen.mask_channels
        assert [b.layer1[0].in_channels for b in gen.blocks] == gen.mask_channels
    assert count_parameters(DenseGenerator(512, transitions="next-block")) == 37_234_777
    with pytest.raises(ValueError, match="official"):
        DenseGenerator(64, 0.125, "wide")


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


def test_checkpoints_keep_their_transition_widths(tmp_path: Path) -> None:
    from trainer.checkpoint import (
        load_checkpoint,
        load_translator,
        save_checkpoint,
        save_untrained_translator,
    )
    encoder = AudioEncoder(64, 0.125)
    for kind in ("official", "next-block"):
        path = save_untrained_translator(tmp_path / f"{kind}.pt", encoder,
                                         DenseGenerator(64, 0.125, kind), 64, 0.125, "test")
        assert load_translator(path).generator.transition_widths == kind
    state = load_checkpoint(tmp_path / "next-block.pt")
    del state["generator_transitions"]                   # written before the key existed
    save_checkpoint(tmp_path / "old.pt", state)
    assert load_translator(tmp_path / "old.pt").generator.mask_channels[2] == 38
