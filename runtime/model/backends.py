"""Model backends for the runtime: ONNX Runtime (CPU, CUDA) and TensorRT. No torch.

``open_translator(export_dir, backend, precision, features)`` validates the export (manifest
format, version, file hashes) and returns a ``LocalTranslator``: a
``runtime.model.translator.Translator`` (``translate_batch``, the one batched call) with
``encode`` and ``generate``, and ``encode_audio`` where the export has the audio-in graph
(``features="graph"``: the log-mel front end runs inside the model; docs/EXPORT.md,
"Audio-in graphs").
TensorRT execution needs the ``tensorrt`` and ``cuda-python`` packages and a CUDA GPU; both
are imported only when that backend is asked for or probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import log
from runtime.errors import S2IError, first_line
from runtime.frontend import FrontEndConfig
from runtime.model.gpu_env import (
    _cudart,
    cuda_device_info,
    cuda_provider_reason,
    import_onnxruntime,
    onnxruntime_conflict,
    preload_cuda_libraries,
    tensorrt_unavailable_reason,
)
from runtime.model.manifest import load_export_manifest
from runtime.model.precision import (
    BACKENDS,
    FEATURES,
    PRECISIONS,
    check_precision,
    missing_hint,
    model_key,
)
from runtime.model.translator import EncoderGenerator

try:
    import onnxruntime as ort
except ImportError:   # neither [cpu] nor [gpu] installed: _ort() says so when it is needed
    ort = None

__all__ = ["BACKENDS", "PRECISIONS", "LocalTranslator", "cuda_device_info", "list_backends",
           "open_translator", "tensorrt_unavailable_reason"]

SPECTROGRAM_TAIL = (1, 128, 100)


# --- what is available here ----------------------------------------------------------------

def _ort() -> Any:
    """onnxruntime (imported on first use: an install without it still gets one clear line)."""
    global ort
    if ort is None:
        ort = import_onnxruntime()
    return ort


def _unavailable_reason(backend: str) -> str | None:
    if backend == "tensorrt":
        return tensorrt_unavailable_reason()
    if backend == "onnxruntime-cuda":
        return cuda_provider_reason(_ort())
    return None


def list_backends() -> list[dict[str, Any]]:
    """``[{"name", "available", "reason"}]`` for every backend, best first."""
    rows = []
    for name in BACKENDS:
        reason = _unavailable_reason(name)
        rows.append({"name": name, "available": reason is None, "reason": reason})
    return rows


# --- one model file ---------------------------------------------------------------------

class _OrtModel:
    def __init__(self, path: Path, provider: str, threads: int | None) -> None:
        ort = _ort()
        preload = None
        if provider == "CUDAExecutionProvider":
            preload = preload_cuda_libraries(ort)  # pip-installed CUDA/cuDNN, found without torch
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle pool threads sleep instead of spinning: the encoder's and generator's sessions
        # each own a pool, and a spinning one steals a core from the next stage
        # (2-core CPU, D=512, K=1: p99 78 ms -> 30 ms; docs/BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" \
            else [provider]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise S2IError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") \
                from exc
        if self.session.get_providers()[0] != provider:
            hint = ("; its CUDA/cuDNN libraries did not load (CUDA major of onnxruntime-gpu vs "
                    "the driver, nvidia-* pip packages" + (f"; {preload}" if preload else "")
                    + ")") if provider == "CUDAExecutionProvider" else ""
            raise S2IError(f"ONNX Runtime could not use {provider} for {path.name} "
                           f"(got {self.session.get_providers()}){hint}")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def input_shapes(self) -> dict[str, list[Any]]:
        """Input name -> shape (a dynamic dimension is a name or None)."""
        return {i.name: list(i.shape) for i in self.session.get_inputs()}

    def output_shapes(self) -> list[list[Any]]:
        return [list(o.shape) for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


class TrtModel:
    """A TensorRT engine run through its Python API with cuda-python device buffers."""

    def __init__(self, path: Path, entry: dict[str, Any]) -> None:
        import tensorrt as trt

        self.trt = trt
        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise S2IError(f"TensorRT cannot load {path} (built by another TensorRT version or "
                           "for another GPU?); re-export on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.inputs]
        for name in names:
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise S2IError(f"{path.name}: tensor {name} is not float32; re-export")
        self.max_batch = int(entry.get("profile", {}).get("max", 1))
        self.stream = self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}

    def input_shapes(self) -> dict[str, list[Any]] | None:
        """Input name -> engine shape (a dynamic dimension is -1); None if this TensorRT
        version does not say (then the load-time check is skipped)."""
        try:
            return {n: [int(d) for d in self.engine.get_tensor_shape(n)] for n in self.inputs}
        except Exception:  # TensorRT API differences across versions
            return None

    def output_shapes(self) -> list[list[Any]]:
        try:
            return [[int(d) for d in self.engine.get_tensor_shape(n)]
                    for n in self.output_names]
        except Exception:  # TensorRT API differences across versions
            return []

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise S2IError(f"CUDA call {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._check(self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(self._check(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = feeds[self.inputs[0]].shape[0]
        parts = [self._run_chunk({k: v[i:i + self.max_batch] for k, v in feeds.items()})
                 for i in range(0, batch, self.max_batch)]
        return [np.concatenate([p[j] for p in parts]) if len(parts) > 1 else parts[0][j]
                for j in range(len(self.output_names))]

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=np.float32)
            self.context.set_input_shape(name, array.shape)
            ptr = self._device(name, array.nbytes)
            self._check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d,
                                               self.stream), "cudaMemcpyAsync")
            self.context.set_tensor_address(name, ptr)
        outputs = []
        for name in self.output_names:
            host = np.empty(tuple(self.context.get_tensor_shape(name)), np.float32)
            self.context.set_tensor_address(name, self._device(name, host.nbytes))
            outputs.append(host)
        if not self.context.execute_async_v3(int(self.stream)):
            raise S2IError("TensorRT execution failed (see the TensorRT log above)")
        for name, host in zip(self.output_names, outputs, strict=True):
            self._check(cudart.cudaMemcpyAsync(host.ctypes.data, self.buffers[name][0],
                                               host.nbytes, d2h, self.stream),
                        "cudaMemcpyAsync")
        self._check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return outputs

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            self.cudart.cudaFree(ptr)


# --- the translator -----------------------------------------------------------------------

class LocalTranslator(EncoderGenerator):
    """Encoder + generator of one export on one backend and precision, in this process (a
    ``runtime.model.translator.Translator``: ``translate_batch`` is ``EncoderGenerator``'s)."""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], backend: str,
                 precision: str, encoder: Any, generator: Any, fused: Any = None,
                 audio_encoder: Any = None, audio_fused: Any = None) -> None:
        self.export_dir = export_dir
        self.manifest = manifest
        self.backend = backend
        self.precision = precision
        self.dropout: list[dict[str, Any]] = list(manifest["dropout"])
        self.embedding_dim = int(manifest["embedding_dim"])
        self._encoder = encoder
        self._generator = generator
        self._fused = fused
        self._audio_encoder = audio_encoder
        self._audio_fused = audio_fused
        # "graph": encode_audio runs the log-mel inside the model; "host": runtime.frontend
        self.features = "graph" if audio_encoder is not None else "host"
        self.n_samples = FrontEndConfig.from_dict(manifest["front_end"]).n_samples
        self.fallbacks: list[str] = []    # auto: why better backends were passed over

    def __repr__(self) -> str:
        return (f"LocalTranslator({self.export_dir}, backend={self.backend!r}, "
                f"precision={self.precision!r}, features={self.features!r}, "
                f"D={self.embedding_dim})")

    def encode(self, spectrogram: np.ndarray) -> np.ndarray:
        """``[B,1,128,100]`` float32 log-mel in [-1, 1] -> ``[B, D]`` embeddings."""
        spectrogram = _float_array(spectrogram, "spectrogram")
        if spectrogram.ndim != 4 or spectrogram.shape[1:] != SPECTROGRAM_TAIL \
                or spectrogram.shape[0] < 1:
            raise S2IError(f"spectrogram has shape {list(spectrogram.shape)}, expected "
                           f"[batch, {', '.join(map(str, SPECTROGRAM_TAIL))}]")
        return self._encoder.run({"spectrogram": spectrogram})[0]

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        """``[B, n_samples]`` mono float32 audio at the model rate (finite; clipped to [-1, 1]
        in the graph) -> ``[B, D]`` embeddings, the log-mel computed inside the graph. Only
        where ``features == "graph"`` (the export has ``encoder_audio`` for this precision)."""
        if self._audio_encoder is None:
            raise S2IError(f"{self.export_dir} on {self.backend} ({self.precision}) has no "
                           "audio-in encoder (open with features='graph' an export that has "
                           "encoder_audio)")
        return self._audio_encoder.run({"audio": self._audio(audio, None)})[0]

    def _audio(self, audio: Any, batch: int | None) -> np.ndarray:
        audio = _float_array(audio, "audio")
        if audio.ndim != 2 or audio.shape[1] != self.n_samples or audio.shape[0] < 1 \
                or (batch is not None and audio.shape[0] != batch):
            rows = "batch" if batch is None else str(batch)
            raise S2IError(f"audio has shape {list(audio.shape)}, expected [{rows}, "
                           f"{self.n_samples}] (mono at the model rate)")
        return audio

    def generate(self, embedding: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """``[B, D]`` embeddings + one ``[B, C_i]`` mask per dropout layer -> ``[B,3,96,96]``
        images in [-1, 1]. Masks come from ``runtime.model.masks.draw_masks(self.dropout, ...)``
        (MC samples) or ``ones_masks`` (deterministic)."""
        embedding = _float_array(embedding, "embedding")
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim \
                or embedding.shape[0] < 1:
            raise S2IError(f"embedding has shape {list(embedding.shape)}, expected "
                           f"[batch, {self.embedding_dim}]")
        feeds = {"embedding": embedding, **self._mask_feeds(masks, embedding.shape[0])}
        return self._generator.run(feeds)[0]

    def translate(self, spectrogram: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """``encode`` then ``generate``: one image per spectrogram and mask row."""
        return self.generate(self.encode(spectrogram), masks)

    def translate_window(self, spectrogram: np.ndarray, masks: Sequence[np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One window ``[1,1,128,100]`` and K MC masks (``[K, C_i]`` each) -> ``images
        [K,3,96,96]``, their ``mean [1,3,96,96]`` and per-pixel ``uncertainty`` (standard
        deviation across the K samples). Uses the fused graph where the export has one for
        this backend and precision, else ``encode`` + ``generate``."""
        spectrogram = _float_array(spectrogram, "spectrogram")
        if spectrogram.shape != (1, *SPECTROGRAM_TAIL):
            raise S2IError(f"spectrogram has shape {list(spectrogram.shape)}, expected one "
                           f"window [1, {', '.join(map(str, SPECTROGRAM_TAIL))}]")
        if not masks or not isinstance(masks[0], np.ndarray) or masks[0].ndim != 2:
            raise S2IError("translate_window() takes one [K, C_i] mask array per dropout layer")
        samples = masks[0].shape[0]
        if self._fused is None:
            z = np.repeat(self.encode(spectrogram), samples, axis=0)
            images = self.generate(z, masks)
            return images, images.mean(0, keepdims=True), images.std(0, keepdims=True)
        feeds = {"spectrogram": spectrogram, **self._mask_feeds(masks, samples)}
        images, mean, uncertainty = self._fused.run(feeds)
        return images, mean, uncertainty

    def translate_window_audio(self, audio: np.ndarray, masks: Sequence[np.ndarray]
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``translate_window`` from one window of audio ``[1, n_samples]``: the fused
        audio-in graph (``translator_audio``) where the export has it, else ``encode_audio``
        + ``generate``."""
        audio = self._audio(audio, 1)
        if not masks or not isinstance(masks[0], np.ndarray) or masks[0].ndim != 2:
            raise S2IError("translate_window_audio() takes one [K, C_i] mask array per "
                           "dropout layer")
        samples = masks[0].shape[0]
        if self._audio_fused is None:
            images = self.generate(np.repeat(self.encode_audio(audio), samples, axis=0), masks)
            return images, images.mean(0, keepdims=True), images.std(0, keepdims=True)
        images, mean, uncertainty = self._audio_fused.run(
            {"audio": audio, **self._mask_feeds(masks, samples)})
        return images, mean, uncertainty

    def _mask_feeds(self, masks: Sequence[np.ndarray], batch: int) -> dict[str, np.ndarray]:
        if len(masks) != len(self.dropout):
            raise S2IError(f"{len(self.dropout)} masks expected (one per dropout layer), "
                           f"got {len(masks)}")
        feeds = {}
        for spec, mask in zip(self.dropout, masks, strict=True):
            mask = _float_array(mask, spec["input"])
            if mask.shape != (batch, int(spec["channels"])):
                raise S2IError(f"{spec['input']} has shape {list(mask.shape)}, expected "
                               f"[{batch}, {spec['channels']}]")
            feeds[spec["input"]] = mask
        return feeds


def _float_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise S2IError(f"{what} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.float32:
        if not np.issubdtype(value.dtype, np.floating):
            raise S2IError(f"{what} has dtype {value.dtype}, expected float32")
        value = value.astype(np.float32)
    return np.ascontiguousarray(value)


def _model_entry(manifest: dict[str, Any], export_dir: Path, graph: str, precision: str,
                 tensorrt: bool) -> dict[str, Any]:
    key = model_key(graph, precision, tensorrt)
    entry = manifest["models"].get(key)
    if entry is None:
        hint = missing_hint(precision, tensorrt)
        raise S2IError(f"{export_dir} has no {'TensorRT engine' if tensorrt else 'ONNX graph'} "
                       f"'{key}' ({precision}); {hint}")
    return entry


def _manifest_specs(manifest: dict[str, Any], export_dir: Path) -> tuple[int, dict[str, int]]:
    """The manifest's embedding_dim and ``{mask input: channels}``, checked for form."""
    where = f"{export_dir}/manifest.json"
    dim = manifest.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise S2IError(f"{where}: embedding_dim should be a positive integer, got {dim!r}; "
                       "re-export")
    dropout = manifest.get("dropout")
    if not isinstance(dropout, list):
        raise S2IError(f"{where}: dropout should be a list of {{input, channels}}; re-export")
    masks: dict[str, int] = {}
    for i, spec in enumerate(dropout):
        name = spec.get("input") if isinstance(spec, dict) else None
        channels = spec.get("channels") if isinstance(spec, dict) else None
        if not isinstance(name, str) or isinstance(channels, bool) \
                or not isinstance(channels, int) or channels < 1:
            raise S2IError(f"{where}: dropout entry {i} should have an \"input\" name and a "
                           f"positive \"channels\" count, got {spec!r}; re-export")
        masks[name] = channels
    return dim, masks


def _known(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def _check_inputs(file: str, model: Any, want: dict[str, int]) -> None:
    """``model``'s inputs are exactly ``want`` (name -> last-dimension size, where fixed)."""
    shapes = model.input_shapes()
    if shapes is None:
        return
    for name, size in want.items():
        if name not in shapes:
            raise S2IError(f"{file}: has no input {name}, the manifest lists it; re-export")
        last = shapes[name][-1] if shapes[name] else None
        if _known(last) and last != size:
            raise S2IError(f"{file}: input {name} has {last} channels, the manifest says "
                           f"{size}; re-export")
    extra = sorted(set(shapes) - set(want))
    if extra:
        raise S2IError(f"{file}: input(s) {', '.join(extra)} are not in the manifest; "
                       "re-export")


def _check_declared(file: str, entry: dict[str, Any], model: _OrtModel) -> None:
    """The manifest entry's ``inputs``/``outputs`` (names and shapes; what a hello announces)
    are the ONNX graph's: a fixed dimension the same size, a dynamic one dynamic."""
    for side, found in (("inputs", model.session.get_inputs()),
                        ("outputs", model.session.get_outputs())):
        declared = entry.get(side)
        if declared is None:
            continue
        graph = [(t.name, [n if _known(n) else None for n in t.shape]) for t in found]
        stated = [(t["name"], [n if _known(n) else None for n in t["shape"]])
                  for t in declared]        # checked for form by load_export_manifest
        if graph != stated:
            show = "; ".join(f"{name} {shape}" for name, shape in graph)
            mine = "; ".join(f"{name} {shape}" for name, shape in stated)
            raise S2IError(f"{file}: the manifest's {side} ({mine[:200]}) are not the graph's "
                           f"({show}); re-export")


def _check_models(dim: int, masks: dict[str, int], models: dict[str, tuple[str, Any]],
                  n_samples: int) -> None:
    """Compare the manifest's embedding_dim and dropout specs (``_manifest_specs``) with the
    loaded models' real inputs (``models``: graph -> (file name, model)); a mismatch is an
    S2IError now, not a wrong result or a backend traceback later."""
    spectrogram = {"spectrogram": SPECTROGRAM_TAIL[-1]}
    audio = {"audio": n_samples}
    want = {"encoder": spectrogram, "generator": {"embedding": dim, **masks},
            "translator": {**spectrogram, **masks}, "encoder_audio": audio,
            "translator_audio": {**audio, **masks}}
    for graph, (file, model) in models.items():
        _check_inputs(file, model, want[graph])
    file, encoder = models["encoder"]
    outputs = encoder.output_shapes()
    last = outputs[0][-1] if outputs and outputs[0] else None
    if _known(last) and last != dim:
        raise S2IError(f"{file}: output has {last} features, the manifest's embedding_dim "
                       f"is {dim}; re-export")


def _auto_candidates(manifest: dict[str, Any], precision: str) -> list[str]:
    """``auto``'s order: TensorRT where the export has engines for ``precision``, then ONNX
    Runtime CUDA where the provider is listed, then ONNX Runtime CPU (always last)."""
    if precision == "int8":
        return ["onnxruntime-cpu"]
    candidates = []
    if model_key("encoder", precision, tensorrt=True) in manifest["models"]:
        reason = tensorrt_unavailable_reason()
        if reason is None:
            candidates.append("tensorrt")
        else:
            log(f"auto: export has TensorRT engines but {reason}")
    if "CUDAExecutionProvider" in _ort().get_available_providers():
        candidates.append("onnxruntime-cuda")
    return [*candidates, "onnxruntime-cpu"]


def open_translator(export_dir: str | Path, backend: str = "auto", precision: str = "fp32",
                    threads: int | None = None, features: str = "auto") -> LocalTranslator:
    """Load an export on ``backend``. ``auto`` tries TensorRT (export with engines, TensorRT
    and a GPU present), then ONNX Runtime CUDA (provider listed), then ONNX Runtime CPU: a
    backend that is listed but fails to load (e.g. the CUDA provider cannot find its
    libraries) is logged with its reason and the next one is tried; the reasons are kept
    in ``LocalTranslator.fallbacks``.

    ``features``: ``graph`` loads the audio-in graphs (``encoder_audio``, and
    ``translator_audio`` where exported) for ``encode_audio`` (an S2IError if the export has
    none for this precision, or the backend is TensorRT: no audio-in engines are built);
    ``host`` does not (the caller computes the log-mel with ``runtime.frontend``); ``auto``
    (default) is ``graph`` where the export has them for this backend and precision."""
    export_dir = Path(export_dir)
    if features not in FEATURES:
        raise S2IError(f"unknown features '{features}'; expected one of {', '.join(FEATURES)}")
    if backend != "auto" and backend not in BACKENDS:
        raise S2IError(f"unknown backend '{backend}'; expected auto or one of "
                       f"{', '.join(BACKENDS)}")
    check_precision(precision, backend)
    manifest = load_export_manifest(export_dir)
    conflict = onnxruntime_conflict()
    if conflict:      # it may still work (whichever build pip wrote last), so only say it
        log(f"warning: {conflict}")
    if backend != "auto":
        reason = _unavailable_reason(backend)
        if reason:
            raise S2IError(f"backend {backend} is not available: {reason}")
        return _open(export_dir, manifest, backend, precision, threads, features)
    fallbacks: list[str] = []
    candidates = _auto_candidates(manifest, precision)
    for i, candidate in enumerate(candidates):
        try:
            translator = _open(export_dir, manifest, candidate, precision, threads, features)
        except S2IError as exc:
            if i == len(candidates) - 1:
                raise
            fallbacks.append(f"{candidate}: {exc}")
            log(f"auto: {candidate} failed to load, falling back to {candidates[i + 1]}: {exc}")
            continue
        translator.fallbacks = fallbacks
        return translator
    raise AssertionError("unreachable: onnxruntime-cpu is always a candidate")


def _open(export_dir: Path, manifest: dict[str, Any], backend: str, precision: str,
          threads: int | None, features: str = "auto") -> LocalTranslator:
    dim, masks = _manifest_specs(manifest, export_dir)     # its form, before loading models
    tensorrt = backend == "tensorrt"
    loaded: dict[str, tuple[str, Any]] = {}
    for graph in ("encoder", "generator"):
        entry = _model_entry(manifest, export_dir, graph, precision, tensorrt)
        path = export_dir / entry["file"]
        if tensorrt:
            loaded[graph] = (path.name, TrtModel(path, entry))
        else:
            provider = "CUDAExecutionProvider" if backend == "onnxruntime-cuda" \
                else "CPUExecutionProvider"
            loaded[graph] = (path.name, _OrtModel(path, provider, threads))
            _check_declared(path.name, entry, loaded[graph][1])
    audio_key = model_key("encoder_audio", precision)
    if features == "graph" and (tensorrt or audio_key not in manifest["models"]):
        why = "no audio-in TensorRT engines are built" if tensorrt else \
            f"it has no '{audio_key}' (re-export without --no-audio-in)"
        raise S2IError(f"--features graph: {export_dir} cannot run the front end in the graph "
                       f"on {backend}: {why}; use --features host")
    optional = ["translator"]
    if features != "host":
        optional += ["encoder_audio", "translator_audio"]
    for graph in optional:
        key = model_key(graph, precision)
        if tensorrt or key not in manifest["models"]:
            continue
        path = export_dir / manifest["models"][key]["file"]
        provider = loaded["encoder"][1].session.get_providers()[0]
        loaded[graph] = (path.name, _OrtModel(path, provider, threads))
        _check_declared(path.name, manifest["models"][key], loaded[graph][1])
    _check_models(dim, masks, loaded, FrontEndConfig.from_dict(manifest["front_end"]).n_samples)
    model = {graph: pair[1] for graph, pair in loaded.items()}
    return LocalTranslator(export_dir, manifest, backend, precision, model["encoder"],
                      model["generator"], fused=model.get("translator"),
                      audio_encoder=model.get("encoder_audio"),
                      audio_fused=model.get("translator_audio"))
