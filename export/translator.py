"""Export a GAN checkpoint: ONNX graphs (+FP16), parity checks, TensorRT engines, manifest.

Everything is written into a temporary folder beside the output and renamed into place at
the end (``runtime.model.manifest.atomic_dir``): an interrupted export or a failed parity check
leaves no half-written files, and a previous export at the same place stays intact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from export.conv_rewrite import rewrite_file
from export.folding import fold_batchnorm
from export.graphs import (
    AudioEncoderGraph,
    AudioTranslatorGraph,
    EncoderGraph,
    GeneratorGraph,
    TranslatorGraph,
    mask_names,
)
from export.int8 import Int8Options, export_int8, store_path
from export.logmel import LogMel
from export.manifest import build_manifest, dropout_spec, onnx_entry
from export.onnx_export import DEFAULT_OPSET, model_opset, write_onnx
from export.parity import check_engine_parity, check_parity, describe, log_parity
from export.tensorrt_build import build_engines
from runtime.artifacts import atomic_dir, atomic_write_json, check_replaceable
from runtime.config import config_json
from runtime.errors import S2IError, first_line
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import EXPORT_FORMAT, export_stamp
from runtime.model.precision import BF16_REASON, model_file, model_key
from trainer.checkpoint import load_translator
from trainer.models import AudioEncoder, DenseGenerator
from trainer.run import RunFolder, find_checkpoint

DEFAULT_BATCH_SIZES = (1, 8, 64)   # TensorRT profile: min, opt (K MC samples), max
DEFAULT_RUN = Path("runs/demo")


@dataclass
class ExportConfig:
    """``python -m export``'s settings, and ``export_translator``'s; the resolved config is
    saved in the manifest (``manifest["config"]``)."""

    source: Path = field(default=DEFAULT_RUN, metadata={
        "positional": True, "help": "run folder or GAN checkpoint"})
    out: Path | None = field(default=None, metadata={
        "help": "export folder (default: RUN/export; for a checkpoint file "
                "RUN/checkpoints/x.pt -> RUN/export)"})
    fp16: bool = field(default=False, metadata={
        "switch": True, "help": "also write FP16 graphs (and engines) with FP32 inputs/outputs"})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset"})
    batch_sizes: tuple[int, ...] = field(default=DEFAULT_BATCH_SIZES, metadata={
        "help": "batch sizes the runtime will use; TensorRT profile min/opt/max"})
    fused: bool = field(default=True, metadata={
        "switch": True, "help": "skip the fused translator graph (spectrogram + K masks -> "
                                "images, mean, uncertainty)"})
    audio_in: bool = field(default=True, metadata={
        "switch": True, "help": "skip the audio-in graphs (encoder_audio, translator_audio: "
                                "the log-mel front end inside the graph, mono audio at the "
                                "model rate in)"})
    tensorrt: bool = field(default=True, metadata={"switch": True,
                                                   "help": "do not build engines"})
    timing_cache: Path | None = field(default=None, metadata={
        "help": "TensorRT timing cache file (default ~/.cache/s2i/)"})
    verify: Path | None = field(default=None, metadata={
        "metavar": "EXPORT_DIR",
        "help": "re-run parity of every file of EXPORT_DIR against the checkpoint its "
                "manifest names; print a line per file, exit 1 on a mismatch"})
    checkpoint: Path | None = field(default=None, metadata={
        "help": "with --verify: the checkpoint to compare with (default: the manifest's "
                "checkpoint path; its sha256 must match)"})
    conv_rewrite: bool = field(default=True, metadata={
        "switch": True, "help": "keep the generator's ConvTranspose layers (default: rewrite "
                                "them exactly as Conv / Conv + DepthToSpace)"})
    int8: bool = field(default=False, metadata={
        "switch": True, "help": "also write INT8 encoder and generator graphs (ONNX Runtime "
                                "CPU), calibrated on real store windows and gated against FP32"})
    bf16: bool = field(default=False, metadata={
        "switch": True, "help": "BF16 graphs: refused on this runtime (says why)"})
    int8_options: Int8Options = field(default_factory=Int8Options, metadata={
        "title": "INT8 for the CPU (docs/EXPORT.md, \"INT8\"; with --int8)"})

    def __post_init__(self) -> None:
        if self.bf16:
            raise S2IError(f"--bf16: {BF16_REASON}")
        sizes = self.profile
        if not sizes or sizes[0] < 1:
            raise S2IError(f"--batch-sizes must be positive integers, got "
                           f"{list(self.batch_sizes)}")
        if sizes[0] != 1:
            raise S2IError(f"--batch-sizes must include 1 (the runtime encodes one clip at a "
                           f"time, so the engine profile minimum is 1), got "
                           f"{list(self.batch_sizes)}")
        if self.int8:
            self.int8_options.check()

    @property
    def profile(self) -> list[int]:
        """The batch sizes, sorted, each once (the TensorRT profile, the manifest's)."""
        return sorted(set(self.batch_sizes))

    @property
    def quantize(self) -> Int8Options | None:
        """The INT8 settings when ``--int8`` asks for INT8 graphs."""
        return self.int8_options if self.int8 else None


def default_out_dir(source: Path) -> Path:
    """``RUN`` -> ``RUN/export``; ``RUN/checkpoints/x.pt`` -> ``RUN/export``;
    any other checkpoint file ``DIR/x.pt`` -> ``DIR/x_export``."""
    if source.is_dir():
        return RunFolder(source).export
    run = RunFolder.of_checkpoint(source)
    return run.export if run is not None else source.parent / f"{source.stem}_export"


def load_networks(path: Path) -> tuple[dict[str, Any], AudioEncoder, DenseGenerator]:
    """A GAN checkpoint's encoder and generator (``trainer.checkpoint.load_translator``),
    eval mode, the generator's own dropout draws off: the graphs take masks as inputs."""
    translator = load_translator(path)
    try:   # what the manifest records besides the networks
        FrontEndConfig.from_dict(translator.state["front_end"])
        float(translator.state["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise S2IError(f"checkpoint {path} lacks {first_line(exc)} (expected embedding_dim, "
                       "width, front_end and models)") from exc
    translator.generator.mc_dropout = False
    return translator.state, translator.encoder, translator.generator


@dataclass
class _Networks:
    """A loaded GAN checkpoint: its file, its state and the networks the graphs wrap."""

    checkpoint: Path
    state: dict[str, Any]
    encoder: AudioEncoder
    generator: DenseGenerator


def export_translator(config: ExportConfig,
                      log: Callable[[str], None] = lambda _: None) -> Path:
    """Export ``config.source`` (run folder or GAN checkpoint) to ``config.out``; returns its
    path. ``conv_rewrite`` writes the generator's ConvTranspose layers as Conv
    (export/conv_rewrite); ``int8`` adds quantized graphs for the CPU with their quality gates
    (export/int8); ``audio_in`` adds ``encoder_audio`` (and, with ``fused``,
    ``translator_audio``): the same networks with the log-mel front end inside the graph
    (export/logmel.py), mono audio at the model rate in."""
    source = Path(config.source)
    checkpoint = find_checkpoint(source, "gan") if source.is_dir() else source
    out = Path(config.out) if config.out is not None else default_out_dir(source)
    config = replace(config, out=out)      # resolved: saved in the manifest
    _check_out_dir(out)
    nets = _Networks(checkpoint, *load_networks(checkpoint))
    if config.quantize is not None:
        store_path(nets.state, config.quantize)  # a missing calibration store fails first
    log(f"checkpoint {checkpoint}: D={nets.state['embedding_dim']}, "
        f"width={nets.state['width']}, epoch {nets.state.get('epoch')}")
    graphs = _graphs(config, nets, log)
    try:
        _write_export(out, nets, graphs, config, log)
    except OSError as exc:
        raise S2IError(f"cannot write the export to {out}: {exc.strerror or exc}") from exc
    log(f"export written to {out}")
    return out


def _graphs(config: ExportConfig, nets: _Networks, log: Callable[[str], None]
            ) -> list[tuple[str, Any, tuple[torch.Tensor, ...], dict[str, str]]]:
    """``(name, module, example inputs, dynamic axes)`` of every graph to write."""
    generator = nets.generator
    enc_folded, gen_folded = fold_batchnorm(nets.encoder), fold_batchnorm(generator)
    batch = {name: "batch" for name in ["spectrogram", "embedding", *mask_names()]}
    spec2 = torch.zeros(2, 1, 128, 100)
    z2 = torch.zeros(2, generator.embedding_dim)
    masks2 = tuple(generator.ones_masks(2))
    masks3 = tuple(generator.ones_masks(3))
    graphs: list[tuple[str, Any, tuple[torch.Tensor, ...], dict[str, str]]] = [
        ("encoder", EncoderGraph(enc_folded), (spec2,), batch),
        ("generator", GeneratorGraph(gen_folded), (z2, *masks2), batch)]
    samples_axis = {name: "samples" for name in mask_names()}
    if config.fused:
        graphs.append(("translator", TranslatorGraph(enc_folded, gen_folded),
                       (spec2[:1], *masks3), samples_axis))
    front_end = FrontEndConfig.from_dict(nets.state["front_end"])
    audio_in = config.audio_in
    if audio_in and front_end.level != "fixed":
        # the graph computes the fixed-range log-mel; a clip or running level needs the
        # whole clip or the stream's history, which a one-window graph does not have
        log(f"audio-in graphs skipped: the front end's level is '{front_end.level}' (the "
            "runtime computes it on the host)")
        audio_in = False
    if audio_in:
        front = LogMel(front_end)
        audio2 = 0.1 * torch.randn(2, front_end.n_samples, generator=torch.Generator()
                                   .manual_seed(0))
        graphs.append(("encoder_audio", AudioEncoderGraph(enc_folded, front), (audio2,),
                       {"audio": "batch"}))
        if config.fused:
            graphs.append(("translator_audio",
                           AudioTranslatorGraph(enc_folded, gen_folded, front),
                           (audio2[:1], *masks3), samples_axis))
    return graphs


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an earlier export (nothing already written is lost)."""
    check_replaceable(out, "S2I export", EXPORT_FORMAT)


def _write_export(out: Path, nets: _Networks, graphs: list[Any], config: ExportConfig,
                  log: Callable[[str], None]) -> None:
    checkpoint, state, encoder, generator = nets.checkpoint, nets.state, nets.encoder, \
        nets.generator
    fp16, opset, sizes, int8 = config.fp16, config.opset, config.profile, config.quantize
    dropout = dropout_spec(generator)
    stamp = export_stamp(FrontEndConfig.from_dict(state["front_end"]), dropout)
    with atomic_dir(out) as tmp:
        files: dict[str, Path] = {}
        models: dict[str, dict[str, Any]] = {}
        for precision in (["fp32", "fp16"] if fp16 else ["fp32"]):
            for name, graph, example, dynamic in graphs:
                key = model_key(name, precision)
                path = tmp / model_file(name, precision)
                if precision == "fp16":
                    graph = _half_copy(graph)
                exporter = write_onnx(graph, example, path, dynamic, opset, metadata=stamp)
                rewritten = rewrite_file(path) if config.conv_rewrite else None
                files[key] = path
                models[key] = {**onnx_entry(path, precision), "exporter": exporter}
                if rewritten is not None:
                    models[key]["conv_rewrite"] = rewritten
                log(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
        parity = check_parity(encoder, generator, files, dropout,
                              front_end=FrontEndConfig.from_dict(state["front_end"]))
        log_parity(parity, log)
        if not parity["passed"]:
            front = parity.get("front_end") or {"ok": True}
            bad = "; ".join([f"{k}: {describe(r)}" for k, r in parity.get("files", {}).items()
                             if not r["ok"]]
                            + ([] if front["ok"] else [f"front_end: max abs "
                                                       f"{front['max_abs_error']:.1e}"])) \
                or "all-ones masks not repeatable"
            raise S2IError(f"ONNX Runtime does not reproduce PyTorch within tolerance "
                           f"({bad}); nothing written to {out}")
        trt_info: dict[str, Any] = {"built": False, "reason": "not asked for (--no-tensorrt)"}
        if config.tensorrt:
            engines, trt_info = _engines_with_parity(tmp, models, sizes, config.timing_cache,
                                                     encoder, generator, dropout, parity, log)
            models.update(engines)
            if not trt_info["built"]:
                log(f"no TensorRT engine built: {trt_info['reason']}")
            for entry in engines.values():
                log(f"wrote {entry['file']}")
        written = max(model_opset(path) for path in files.values())  # may exceed --opset
        quantized: dict[str, Any] | None = None
        if int8 is not None:
            int8_models, quantized = export_int8(tmp, files, dropout, state, int8, log,
                                                    stamp=stamp)
            if "encoder_int8" in int8_models and "encoder_audio" in files:
                int8_models.update(_audio_int8(tmp, FrontEndConfig.from_dict(
                    state["front_end"]), opset, stamp, quantized, log))
            models.update(int8_models)
        manifest = build_manifest(state=state, checkpoint=checkpoint, dropout=dropout,
                                  opset=written, models=models, parity=parity,
                                  tensorrt=trt_info, batch_sizes=sizes)
        if quantized is not None:
            manifest["int8"] = quantized
        manifest["config"] = config_json(config)
        atomic_write_json(tmp / "manifest.json", manifest)


def _engines_with_parity(tmp: Path, models: dict[str, dict[str, Any]], sizes: list[int],
                         timing_cache: Path | None, encoder: AudioEncoder,
                         generator: DenseGenerator, dropout: list[dict[str, Any]],
                         parity: dict[str, Any], log: Callable[[str], None]
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Build the engines and check each against PyTorch (figures in ``parity["tensorrt"]``).
    Engines are kept or dropped one by one, each with its reason in
    ``tensorrt["engines"]``: one that fails to build or its parity check is removed, and so
    is its partner of the same precision (the runtime needs an encoder AND a generator);
    the others stay. A failure of the whole build drops every engine with its reason. The
    ONNX export is kept either way."""
    try:
        engines, trt_info = build_engines(tmp, models, sizes, timing_cache)
        if engines:
            parity["tensorrt"] = check_engine_parity(encoder, generator, tmp, engines, dropout)
            log_parity(parity["tensorrt"], log)
    except Exception as exc:  # noqa: BLE001 - TensorRT/CUDA raise RuntimeError, TypeError...
        for plan in tmp.glob("*.plan"):
            plan.unlink()
        return {}, {"built": False,
                    "reason": first_line(exc, with_type=not isinstance(exc, S2IError))}
    if not trt_info.get("built"):
        trt_info.setdefault("reason", _summary(trt_info.get("engines", {})))
        return {}, trt_info
    verdicts: dict[str, dict[str, Any]] = dict(trt_info.get("engines", {}))
    for key, row in parity["tensorrt"]["files"].items():
        if row["ok"]:
            verdicts[key] = {"kept": True, "reason": None,
                             "relative_error": row["relative_error"]}
        else:
            detail = describe(row)
            verdicts[key] = {"kept": False, "reason": f"parity with PyTorch failed: {detail}",
                             "relative_error": row["relative_error"]}
    for key, verdict in list(verdicts.items()):    # a precision needs both of its engines
        partner = key.replace("encoder", "generator") if key.startswith("encoder") \
            else key.replace("generator", "encoder")
        if verdict["kept"] and not verdicts.get(partner, {}).get("kept", False):
            verdicts[key] = {**verdict, "kept": False,
                             "reason": f"dropped with {partner} (the runtime needs the "
                                       "encoder and the generator engine of a precision)"}
    kept = {k: e for k, e in engines.items() if verdicts[k]["kept"]}
    for key, entry in engines.items():
        if key not in kept:
            (tmp / entry["file"]).unlink(missing_ok=True)
            log(f"TensorRT engine {entry['file']} dropped: {verdicts[key]['reason']}")
    trt_info = {**trt_info, "built": bool(kept), "engines": verdicts}
    if not kept:
        trt_info["reason"] = _summary(verdicts)
    return kept, trt_info


def _summary(verdicts: dict[str, dict[str, Any]]) -> str:
    """Every dropped engine's reason, one line."""
    return "; ".join(f"{key}: {v['reason']}" for key, v in verdicts.items()
                     if not v.get("kept")) or "no engine built"


# the INT8 encoder on the in-graph front end vs on runtime/frontend.py's features: a 1e-5
# feature difference may move an activation across a quantization step (rms, as for FP16)
INT8_AUDIO_TOLERANCE = 2e-2


def _audio_int8(tmp: Path, front_end: FrontEndConfig, opset: int, stamp: dict[str, str],
                record: dict[str, Any], log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """``encoder_audio.int8.onnx``: the FP32 front end (export/logmel.py; 8-bit activations
    cannot hold the power spectrum's range) feeding the kept INT8 encoder, checked against
    the INT8 encoder on the host front end's features; ``record["audio_in"]`` says how
    close and whether it was kept."""
    from export.logmel import FrontEndGraph, prepend_front_end
    from export.onnx_export import stamp_onnx_file
    from export.parity import cpu_session, parity_audio, rms_relative_error
    from runtime.frontend import log_mel_batch

    front, out, encoder = tmp / "front_end.onnx", tmp / "encoder_audio.int8.onnx", \
        tmp / "encoder.int8.onnx"
    try:
        write_onnx(FrontEndGraph(front_end), (torch.zeros(2, front_end.n_samples),), front,
                   {"audio": "batch"}, opset)
        prepend_front_end(front, encoder, out)
    finally:
        front.unlink(missing_ok=True)
    stamp_onnx_file(out, stamp)
    audio = parity_audio(front_end)
    (z_graph,) = cpu_session(out).run(None, {"audio": audio})
    (z_host,) = cpu_session(encoder).run(
        None, {"spectrogram": log_mel_batch(audio, front_end)[:, None]})
    error = rms_relative_error(z_graph, z_host)
    kept = bool(error <= INT8_AUDIO_TOLERANCE)
    record["audio_in"] = {"file": out.name, "front_end": "fp32", "kept": kept,
                          "rms_relative_error_vs_host_features": error,
                          "limit": INT8_AUDIO_TOLERANCE}
    log(f"{out.name}: FP32 front end + INT8 encoder, rms relative error {error:.1e} vs the "
        f"host front end (limit {INT8_AUDIO_TOLERANCE:.0e}) {'ok' if kept else 'NOT kept'}")
    if not kept:
        out.unlink()
        return {}
    return {"encoder_audio_int8": {**onnx_entry(out, "int8"), "quantized_from": encoder.name,
                                   "front_end": "fp32"}}


def _half_copy(graph: Any) -> Any:
    import copy
    return copy.deepcopy(graph).to_half()
