"""Named front ends, the refusal to mix them, and the tools that estimated the authors' one."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime.errors import S2IError
from runtime.frontend import (
    FRONT_END_PRESETS,
    FrontEndConfig,
    check_same_front_end,
    log_mel,
    to_uint8,
)
from trainer.data.frontend_fit import (
    distances,
    mel_db,
    read_openttd_catalogue,
    statistics,
    to_pixels,
)


def test_presets_are_valid_configs_with_names() -> None:
    for name in FRONT_END_PRESETS:
        assert FrontEndConfig.preset(name).name() == name
    official = FrontEndConfig.preset("s2i-official")
    assert official != FrontEndConfig() and official.n_frames == 100 and official.n_mels == 128
    assert FrontEndConfig(db_min=-70.0).name().startswith("custom ")
    with pytest.raises(S2IError, match="unknown front-end preset 'vegas'"):
        FrontEndConfig.preset("vegas")


def test_mixing_front_ends_is_refused_naming_both() -> None:
    with pytest.raises(S2IError, match="front end 's2i-official', not 'default'.*sample_rate"):
        check_same_front_end(FrontEndConfig(), FrontEndConfig.preset("s2i-official").to_dict(),
                             "store S")


def test_fit_pipeline_matches_the_shipped_front_end() -> None:
    """The fitting code's own log-mel (it also handles layouts FrontEndConfig cannot hold)
    agrees with runtime.frontend on the preset, so the fitted figures carry over."""
    cfg = FrontEndConfig.preset("s2i-official")
    rng = np.random.default_rng(0)
    t = np.arange(cfg.n_samples) / cfg.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))
             + 0.05 * rng.standard_normal(cfg.n_samples)).astype(np.float32)
    ours = to_uint8(log_mel(audio, cfg))[::-1].astype(int)           # band 0 lowest
    db = mel_db(audio, cfg.sample_rate, cfg.n_fft, cfg.f_max, cfg.win_length)
    assert db is not None
    fitted = to_pixels(db[0], cfg.db_min, cfg.db_max).astype(int)
    inner = np.s_[:, 2:-2]                  # the edge frames pad differently (reflect vs zeros)
    assert np.abs(ours[inner] - fitted[inner]).mean() < 1.0


def test_statistics_and_distances() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 128, 100))
    b = a.copy()
    b[:, 100:] = 0                          # the top bands at the floor
    same, other = distances(statistics(a), statistics(a)), distances(statistics(a), statistics(b))
    assert same == {"occupancy_l1": 0.0, "histogram_emd": 0.0, "layout_r": 1.0}
    assert other["occupancy_l1"] == pytest.approx(28 / 128 * (1 - (a[:, 100:] <= 4).mean()))
    assert other["histogram_emd"] > 10


def test_openttd_catalogue_reader(tmp_path: Path) -> None:
    entries = []
    for name, seconds in (("Original 'train.wav' by someone", 1.5), ("Synth beep", 0.5)):
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros((int(44100 * seconds), 2), np.float32), 44100, format="WAV")
        label = name.encode() + b"\0"
        entries.append(bytes([len(label)]) + label + buffer.getvalue())
    offset, table, body = 8 * len(entries), b"", b""
    for entry in entries:
        table += struct.pack("<II", (offset + len(body)) | 0x80000000, len(entry))
        body += entry
    path = tmp_path / "sounds.cat"
    path.write_bytes(table + body)
    sounds = read_openttd_catalogue(path)
    assert [(n[:8], len(a), r) for n, a, r in sounds] == [("Original", 66150, 44100)]
    assert len(read_openttd_catalogue(path, recordings_only=False)) == 2
    with pytest.raises(S2IError, match="openttd-opensfx"):
        read_openttd_catalogue(tmp_path / "missing.cat")
