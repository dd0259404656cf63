"""Named presets: the paper's values apart from the quick defaults, options still win."""

from __future__ import annotations

import pytest

from runtime.errors import S2IError
from trainer.presets import PRESETS, preset_overrides
from trainer.train.audio import AudioConfig
from trainer.train.common import parse_stage
from trainer.train.gan import GanConfig


def test_paper_preset_sets_the_stated_values_and_options_override_it() -> None:
    audio, _ = parse_stage(["--store", "s", "--preset", "paper"], AudioConfig, "audio", "t")
    assert (audio.epochs, audio.lr, audio.momentum, audio.batch_size) == (1000, 0.05, 0.9, 64)
    assert AudioConfig().epochs == 100 and AudioConfig().preset == ""   # quick default apart
    gan, _ = parse_stage(["--store", "s", "--preset", "paper", "--epochs", "3"], GanConfig,
                         "gan", "t")
    assert gan.epochs == 3 and gan.preset == "paper"
    assert (gan.snapshot_every, gan.n_gd, gan.n_gd_unit, gan.adv_lambda) == (1, 5, "epoch", 0.1)
    assert gan.generator_transitions == "official"


def test_presets_name_only_existing_fields_and_unknown_names_are_refused() -> None:
    for name in PRESETS:
        preset_overrides(AudioConfig, name)
        preset_overrides(GanConfig, name)
    with pytest.raises(S2IError, match="unknown preset 'papr'"):
        parse_stage(["--store", "s", "--preset", "papr"], AudioConfig, "audio", "t")
