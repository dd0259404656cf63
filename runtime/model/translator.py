"""What a translator offers: the ``Translator`` Protocol (one batched call) and
``EncoderGenerator``, the batched call of a translator made of an encoder and a generator.

Every translator the runtime can serve implements ``Translator``: the local backends
(``runtime.model.backends.LocalTranslator``), the cluster client
(``runtime.cluster.client.ClusterTranslator``), the benchmarks' PyTorch eager model
(``benchmarks.eager.EagerTranslator``) and the host-only stand-in
(``benchmarks.standin_serve.ConstantTimeModel``). The serving pipeline
(``runtime.serve.pipeline``) uses nothing else; ``tests/test_translator_protocol.py`` checks that
each one conforms, members and signatures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtime.errors import S2IError


@runtime_checkable
class Translator(Protocol):
    """Sound windows -> images, B windows and K MC-dropout samples each in one call.

    ``manifest``: the export's manifest (front end, dropout, classes, image shape);
    ``dropout``: its ``[{"input", "p", "channels"}]`` list (what the masks are drawn from);
    ``backend``: a name for headers and logs; ``features``: what ``translate_batch`` takes,
    ``"host"`` (log-mel spectrograms ``[B,1,128,100]`` computed by ``runtime.frontend``) or
    ``"graph"`` (mono audio ``[B, n_samples]``, the log-mel computed inside the model)."""

    manifest: dict[str, Any]
    dropout: list[dict[str, Any]]
    backend: str
    features: str

    def translate_batch(self, inputs: np.ndarray, masks: Sequence[np.ndarray], samples: int
                        ) -> tuple[np.ndarray, dict[str, float]]:
        """B windows (``inputs``, per ``features``) and one ``[B*K, C_i]`` mask array per
        dropout layer (``samples`` = K) -> images ``[B*K, 3, H, W]`` in [-1, 1], window-major
        (rows b*K .. b*K+K-1 are window b), and the call's timings in ms (``encoder``,
        ``generator``; a remote translator adds its round trip as ``cluster``)."""
        ...

    def close(self) -> None:
        """Release what the translator holds beyond this process (a cluster connection)."""
        ...


class EncoderGenerator:
    """``translate_batch`` and ``close`` for a translator made of an encoder and a
    generator: ``encode`` (or ``encode_audio`` where ``features == "graph"``) on the B windows,
    each embedding repeated K times, ``generate`` on the ``[B*K, D]`` rows with the masks."""

    features: str = "host"

    def encode(self, spectrogram: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        raise S2IError(f"{type(self).__name__} has no audio-in encoder (features 'host')")

    def generate(self, embedding: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def translate_batch(self, inputs: np.ndarray, masks: Sequence[np.ndarray], samples: int
                        ) -> tuple[np.ndarray, dict[str, float]]:
        start = time.perf_counter()
        encode = self.encode_audio if self.features == "graph" else self.encode
        z = np.asarray(encode(inputs), np.float32)                            # [B, D]
        mid = time.perf_counter()
        if samples > 1:
            z = np.repeat(z, samples, axis=0)
        images = np.asarray(self.generate(z, masks))                          # [B*K, 3, H, W]
        return images, {"encoder": round((mid - start) * 1000, 3),
                        "generator": round((time.perf_counter() - mid) * 1000, 3)}

    def close(self) -> None:
        """Nothing held beyond this process."""
