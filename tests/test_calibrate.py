"""The input-sensitive tiny translator that data-flow tests rely on really is input-sensitive
(the session's shared one, helpers_runtime.tiny_export, that the runtime tests read)."""

from __future__ import annotations

import numpy as np
from helpers_runtime import tiny_export

from runtime.model.backends import open_translator
from runtime.model.masks import draw_masks, ones_masks


def grey_levels(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, -1, 1) + 1) * 127.5


def test_calibrated_export_depends_on_audio_and_masks(tmp_path_factory):
    translator = open_translator(tiny_export(tmp_path_factory), "onnxruntime-cpu")
    ramp = np.linspace(-1, 1, 100, dtype=np.float32)
    spectrograms = np.stack([np.broadcast_to(ramp, (1, 128, 100)),
                             np.broadcast_to(-ramp, (1, 128, 100)),
                             np.full((1, 128, 100), -0.8, np.float32)]).astype(np.float32)
    plain = grey_levels(translator.translate(spectrograms, ones_masks(translator.dropout, 3)))
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(plain[a] - plain[b]).mean() > 10, (a, b)
    masks = draw_masks(translator.dropout, 3, np.random.default_rng(0))
    dropped = grey_levels(translator.translate(spectrograms, masks))
    assert np.abs(dropped - plain).mean() > 5
