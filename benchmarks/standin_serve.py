"""The real ``s2i-serve`` with its model replaced by a CONSTANT-TIME STAND-IN (host-only rows of
``python -m benchmarks serve``).

    python benchmarks/standin_serve.py --standin-ms 2 <s2i-serve options>

Run as a script with ``PYTHONPATH`` set to the checkout whose server it measures (it imports
only that checkout's ``runtime``). The export's real translator is opened once, computes the
images of 8 windows, and is then replaced by ``ConstantTimeModel``: each batch sleeps a fixed
time (no CPU: the GIL is released, as during a GPU call) and returns those images, tiled to
the batch. Everything else (ingress, batching, features, encoding, publishing) is the
server's own code, so the process's CPU is the host's work per window, without the model.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

DEFAULT_STANDIN_MS = 2.0
LABEL = "host-only: model replaced by a constant-time stand-in"


class ConstantTimeModel:
    """A ``runtime.model.translator.Translator`` (``manifest``, ``dropout``, ``backend``,
    ``features``, ``translate_batch``) at a fixed cost per batch: ``seconds`` of sleep, then
    precomputed real images. ``encode``/``generate`` are the same for an older checkout's
    server, which called those two."""

    def __init__(self, inner: Any, seconds: float, windows: int = 8) -> None:
        from runtime.frontend import FrontEndConfig, log_mel_batch

        draw_masks = _runtime("masks").draw_masks
        self.manifest, self.dropout = inner.manifest, inner.dropout
        # as the real translator: audio windows in where its export computes the log-mel in
        # the graph (then the host computes none), spectrograms otherwise
        self.features = getattr(inner, "features", "host")   # an older checkout's may not say
        self.backend, self.seconds = f"stand-in-{seconds * 1000:g}ms", seconds
        front_end = FrontEndConfig.from_dict(inner.manifest["front_end"])
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal((windows, front_end.n_samples)) * 0.3).astype(np.float32)
        z = np.asarray(inner.encode(log_mel_batch(audio, front_end)[:, None]), np.float32)
        self.z = z
        self.images = np.asarray(inner.generate(z, draw_masks(self.dropout, windows, rng)))

    def translate_batch(self, inputs: np.ndarray, masks: Any, samples: int
                        ) -> tuple[np.ndarray, dict[str, float]]:
        time.sleep(self.seconds)
        rows = np.arange(len(inputs) * samples) % len(self.images)
        return self.images[rows], {"encoder": self.seconds * 1000, "generator": 0.0}

    def close(self) -> None:
        """Nothing held beyond this process."""

    def encode(self, features: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.z[np.arange(len(features)) % len(self.z)]

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        return self.encode(audio)

    def generate(self, z: np.ndarray, masks: Any) -> np.ndarray:
        return self.images[np.arange(len(z)) % len(self.images)]


LAYOUTS = {"backends": ("runtime.model.backends", "runtime.backends"),
           "masks": ("runtime.model.masks", "runtime.masks"),
           "serve": ("runtime.apps.serve", "runtime.server")}


def _runtime(role: str) -> ModuleType:
    """A module of whichever runtime PYTHONPATH holds: role folders, or an older flat one
    (decided by the files of the ``runtime`` package found: an editable install's finder
    could otherwise hand out this checkout's submodules)."""
    import runtime

    new, old = LAYOUTS[role]
    folders = (Path(runtime.__file__).parent / "model").is_dir()
    return importlib.import_module(new if folders else old)


def main(argv: list[str]) -> int:
    backends, serve = _runtime("backends"), _runtime("serve").main
    seconds = DEFAULT_STANDIN_MS / 1000
    if argv[:1] == ["--standin-ms"]:
        seconds, argv = float(argv[1]) / 1000, argv[2:]
    real_open = backends.open_translator

    def open_standin(*args: Any, **kwargs: Any) -> ConstantTimeModel:
        return ConstantTimeModel(real_open(*args, **kwargs), seconds)

    backends.open_translator = open_standin    # read at call time by the server's options
    print(f"{LABEL} ({seconds * 1000:g} ms per batch)", file=sys.stderr, flush=True)
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
