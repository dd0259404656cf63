"""Named presets: field overrides applied on top of a stage config's defaults.

A preset is data, one dict of ``field -> value`` per config class, so it merges with any way of
building a config (defaults -> preset -> saved JSON on resume -> command-line flags). The
defaults of the dataclasses are this project's (sized for a quick run); ``paper`` holds every
value the paper (Fanzeres & Nadeu) or the authors' public code states, and this project's
choice where neither does (docs/FIDELITY.md lists each, with its source).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime.errors import S2IError

# Where each value comes from: "paper" (section), "code" (the authors' public code), "ours"
# (stated by neither; this project's choice). docs/FIDELITY.md is the long form.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "AudioConfig": {
            "embedding_dim": 512,       # paper 5.4.1: best of 128..2048; code default
            "width": 1.0,               # paper Fig. 2 / code channel counts
            "epochs": 1000,             # code: train_net_audio_autoencoder.py NUM_EPOCHS
            "batch_size": 64,           # paper 5.2
            "lr": 0.05,                 # paper 5.2
            "momentum": 0.9,            # paper 5.2
            "val_max_batches": None,    # code: the whole held-out loader every epoch
            "snapshot_every": 50,       # code: epoch_save_jump = 50
        },
        "GanConfig": {
            "width": 1.0,               # paper Figs. 3-4 / code
            "generator_transitions": "official",   # code: out_channels = last layer of block
            "epochs": 4000,             # paper 5.4.1: informativity reported to epoch 4000
            "batch_size": 64,           # paper 5.2
            "lr": 0.1,                  # paper 5.2
            "momentum": 0.5,            # paper 5.2
            "adv_lambda": 0.1,          # paper 5.2, Eq. 6
            "n_gd": 5,                  # paper 4.1 / 5.2: D once per 5 G updates
            "n_gd_unit": "epoch",       # ours: the paper's skip rule implies epochs
            "ma_window": 10,            # ours: Eq. 5's k is not stated
            "r_max": 1.0,               # paper 4.3: the maximum of the tanh RC-score
            "r_min": -1.0,              # paper 4.3: the minimum of the tanh RC-score
            "snapshot_every": 1,        # paper 5.4.1: informativity of every epoch
        },
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_overrides(cls: type, name: str | None) -> dict[str, Any]:
    """The fields ``name`` sets on config class ``cls`` ({} for no preset)."""
    if not name:
        return {}
    if name not in PRESETS:
        raise S2IError(f"unknown preset '{name}'; expected one of {', '.join(preset_names())}")
    overrides = dict(PRESETS[name].get(cls.__name__, {}))
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:  # a renamed field must not silently drop out of the preset
        raise S2IError(f"preset '{name}' sets {unknown}, which {cls.__name__} does not have")
    return overrides


def apply_preset(config: Any, name: str | None) -> Any:
    """A copy of ``config`` with the preset's values (for code that builds configs directly),
    naming the preset in its ``preset`` field when it has one."""
    values = preset_overrides(type(config), name)
    if name and "preset" in {f.name for f in dataclasses.fields(config)}:
        values["preset"] = name
    return dataclasses.replace(config, **values)
