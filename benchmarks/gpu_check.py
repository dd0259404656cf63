"""``python -m benchmarks gpu-check``: the GPU path verified in one command (docs/GPU.md).

Steps, each recorded with its status and time, the JSON written after every step:

1. environment: GPU, driver, CUDA, cuda-python, TensorRT, ONNX Runtime builds and providers;
2. export: a full-size translator (width 1.0, D=512; input-sensitive weights) with FP16
   graphs and TensorRT engines (profile 1 / 8 / 64), its own parity against PyTorch;
3. parity: ONNX Runtime CUDA and TensorRT (FP32, FP16), and ONNX Runtime CPU FP16, against
   ONNX Runtime CPU FP32 on the same spectrograms and masks at K = 1, 8, 64 and above the
   engine profile's maximum (chunked runs);
4. latency: model-only (encoder + generator xK on one window) and end-to-end (the streaming
   benchmark: ring -> pipeline -> encoding -> ZeroMQ -> subscriber process) at K = 1 and 8,
   PNG and raw frames;
5. streams: the serving benchmark (``python -m benchmarks serve``) where it exists.

A row that cannot run here (no GPU, no TensorRT, out of memory) is kept as skipped with its
reason; on a CPU machine the whole check still runs. ``--quick``: tiny sizes, few repetitions
(the test suite runs it). A time budget (default 540 s) skips what would run past it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.isolation import release_memory, skip_reason
from runtime.config import config_json, parse_config
from runtime.errors import S2IError, first_line

FORMAT = "s2i-gpu-check"
DEFAULT_OUT = Path(__file__).parent / "results"
CPU_REFERENCE = ("onnxruntime-cpu", "fp32")
PARITY_ROWS = (("onnxruntime-cpu", "fp16"), ("onnxruntime-cuda", "fp32"),
               ("onnxruntime-cuda", "fp16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"))
LATENCY_ROWS = (CPU_REFERENCE, *PARITY_ROWS[1:])
# against ONNX Runtime CPU FP32, each stage on the reference's input (encoder on the
# spectrograms, generator on the reference's embeddings: the test network amplifies an
# embedding error tenfold, docs/EXPORT.md): rms relative error. GPU FP32 kernels may use TF32
# (an FP16-like mantissa); a wrong graph gives ~0.85.
PARITY_LIMIT_RMS = {"fp32": 2e-2, "fp16": 1e-1}
BATCH_SIZES = (1, 8, 64)


@dataclass
class GpuCheckConfig:
    quick: bool = field(default=False, metadata={
        "help": "tiny sizes (width 0.125, D=64), few repetitions: a smoke run"})
    export: Path | None = field(default=None, metadata={
        "help": "check this export instead of building a full-size one"})
    windows: int | None = field(default=None, metadata={
        "help": "end-to-end windows per row (default 200; quick 3)"})
    reps: int | None = field(default=None, metadata={
        "help": "model-only repetitions per row (default 200; quick 3)"})
    budget_s: float = field(default=540.0, metadata={
        "help": "skip steps that would start after this many seconds"})
    out: Path = field(default=DEFAULT_OUT, metadata={"help": "results folder"})

    def __post_init__(self) -> None:
        self.windows = self.windows or (3 if self.quick else 200)
        self.reps = self.reps or (3 if self.quick else 200)
        if self.windows < 1 or self.reps < 1:
            raise ValueError("--windows and --reps must be at least 1")


class Check:
    """The results being built, written after every step."""

    def __init__(self, args: GpuCheckConfig, json_path: Path) -> None:
        self.args = args
        self.json_path = json_path
        self.started = time.monotonic()
        self.results: dict[str, Any] = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": report.machine_info(), "versions": report.versions(),
            "config": config_json(args),
            "settings": {"quick": bool(args.quick), "budget_s": args.budget_s,
                         "batch_sizes": list(BATCH_SIZES),
                         "parity_limit_rms": dict(PARITY_LIMIT_RMS)},
            "steps": {}, "parity": [], "model_latency": [], "end_to_end": [],
            "streams": [], "skipped": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, name: str, body: Callable[[], Any]) -> Any:
        """Run one step unless the budget is spent; record ok / skipped / failed."""
        if self.elapsed() > self.args.budget_s:
            self.results["steps"][name] = {"status": "skipped",
                                           "reason": f"time budget of {self.args.budget_s:g} s "
                                                     "spent"}
            self.write()
            return None
        start = time.monotonic()
        print(f"gpu-check: {name} ...", flush=True)
        try:
            value = body()
            status: dict[str, Any] = {"status": "ok"}
        except S2IError as exc:
            value, status = None, {"status": "failed", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one step failing must not lose the others
            value, status = None, {"status": "failed", "reason": skip_reason(exc)}
        status["seconds"] = round(time.monotonic() - start, 2)
        self.results["steps"][name] = status
        if status["status"] != "ok":
            print(f"gpu-check: {name} {status['status']}: {status['reason']}", flush=True)
        self.write()
        return value

    def skip(self, what: dict[str, Any], reason: str) -> None:
        self.results["skipped"].append({**what, "reason": reason})
        print(f"gpu-check: skip {' '.join(str(v) for v in what.values())}: {reason}",
              flush=True)

    def write(self) -> None:
        report.write_json(self.json_path, {"format": FORMAT, **self.results,
                                           "elapsed_s": round(self.elapsed(), 1)})


# --------------------------------------------------------------------------- steps

def environment() -> dict[str, Any]:
    from runtime.model.gpu_env import environment as probe

    env = probe()
    env["nvidia_smi"] = _nvidia_smi()
    torch = _torch_cuda()
    if torch:
        env["torch"] = torch
    return env


def _nvidia_smi() -> dict[str, str] | str:
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi unavailable ({first_line(exc, with_type=True)})"
    first = out.strip().splitlines()[0] if out.strip() else ""
    return dict(zip(query.split(","), (x.strip() for x in first.split(",")), strict=False))


def _torch_cuda() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": bool(torch.cuda.is_available())}


def build_export(work: Path, quick: bool) -> Path:
    from benchmarks.latency import fresh_export

    width, dim = (0.125, 64) if quick else (1.0, 512)
    return fresh_export(work / "export", width, dim, fp16=True)


def open_row(export_dir: Path, backend: str, precision: str) -> Any:
    from runtime.model.backends import open_translator

    return open_translator(export_dir, backend, precision, threads=None)


def parity_sizes(manifest: dict[str, Any]) -> list[int]:
    """K = 1, 8, 64 and one above the engines' profile maximum (chunked runs)."""
    top = max(BATCH_SIZES)
    for entry in manifest["models"].values():
        top = max(top, int(entry.get("profile", {}).get("max", 0)))
    return [*BATCH_SIZES, top + top // 2 + 4]


def parity_inputs(manifest: dict[str, Any], k: int, seed: int = 0
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """K smooth synthetic spectrograms (K streams in one batch) and K drawn mask rows."""
    import torch

    from runtime.model.masks import draw_masks
    from trainer.calibrate import synthetic_spectrograms

    spec = synthetic_spectrograms(k, torch.Generator().manual_seed(seed)).numpy()
    return spec, draw_masks(manifest["dropout"], k, np.random.default_rng(seed))


def check_parity(check: Check, export_dir: Path) -> None:
    from export.parity import relative_error, rms_relative_error
    from runtime.model.manifest import load_export_manifest

    manifest = load_export_manifest(export_dir)
    sizes = parity_sizes(manifest)
    inputs = {k: parity_inputs(manifest, k, seed=k) for k in sizes}
    cpu = open_row(export_dir, *CPU_REFERENCE)
    want_z = {k: cpu.encode(inputs[k][0]) for k in sizes}
    want = {k: cpu.generate(want_z[k], inputs[k][1]) for k in sizes}
    del cpu
    release_memory()
    for k in sizes:   # the reference must itself move with the input, or parity proves little
        if k > 1:
            spread = rms_relative_error(want[k][1:], np.repeat(want[k][:1], k - 1, axis=0))
            check.results.setdefault("reference_sensitivity", {})[str(k)] = round(spread, 4)
    def parity(backend: str, precision: str, translator: Any) -> None:
        limit = PARITY_LIMIT_RMS[precision]
        for k in sizes:
            z = translator.encode(inputs[k][0])
            got = translator.generate(want_z[k], inputs[k][1])
            rms_z = rms_relative_error(z, want_z[k])
            rms = rms_relative_error(got, want[k])
            row = {"backend": backend, "precision": precision, "k": k,
                   "rms_relative_error": _round(rms),
                   "max_relative_error": _round(relative_error(got, want[k])),
                   "embedding_rms_relative_error": _round(rms_z),
                   "limit_rms": limit, "ok": bool(max(rms, rms_z) <= limit)}
            check.results["parity"].append(row)
            print(f"parity {backend:<17} {precision} K={k:<3} image rms {rms:.2e} max "
                  f"{row['max_relative_error']:.2e}, embedding rms {rms_z:.2e} "
                  f"{'ok' if row['ok'] else 'MISMATCH'}", flush=True)

    for_each_row(check, export_dir, PARITY_ROWS, "parity", parity)


def for_each_row(check: Check, export_dir: Path, rows: tuple[tuple[str, str], ...], step: str,
                 body: Callable[[str, str, Any], None]) -> None:
    """Open each (backend, precision) row of ``export_dir`` and run ``body`` on it. A row
    that cannot open here (no GPU, no TensorRT, out of memory) or fails is kept as skipped
    with its reason; each row's memory is released before the next opens."""
    for backend, precision in rows:
        where = {"step": step, "backend": backend, "precision": precision}
        try:
            translator = open_row(export_dir, backend, precision)
        except Exception as exc:  # noqa: BLE001 - S2IError (unavailable), out of memory...
            check.skip(where, str(exc) if isinstance(exc, S2IError) else skip_reason(exc))
            continue
        try:
            body(backend, precision, translator)
        except Exception as exc:  # noqa: BLE001 - one row failing must not lose the others
            check.skip(where, skip_reason(exc))
        finally:
            del translator
            release_memory()
        check.write()


def _round(x: float) -> float | None:
    return float(f"{x:.3e}") if np.isfinite(x) else None


def model_latency(check: Check, export_dir: Path, reps: int) -> None:
    """Encoder on one window, generator on its K samples (the pipeline's model step)."""
    from runtime.model.manifest import load_export_manifest
    from runtime.model.masks import draw_masks

    manifest = load_export_manifest(export_dir)
    spec, _ = parity_inputs(manifest, 1)
    rng = np.random.default_rng(0)
    def latency(backend: str, precision: str, translator: Any) -> None:
        for k in (1, 8):
            masks = [draw_masks(manifest["dropout"], k, rng) for _ in range(reps + 3)]
            times = []
            for i, mask in enumerate(masks):
                start = time.perf_counter()
                z = np.repeat(translator.encode(spec), k, axis=0)
                translator.generate(z, mask)
                if i >= 3:                               # 3 warm-up calls
                    times.append((time.perf_counter() - start) * 1000)
            stats = report.summarize(times)
            check.results["model_latency"].append(
                {"backend": backend, "precision": precision, "k": k, "ms": stats})
            print(f"model  {backend:<17} {precision} K={k}: p50 {stats['p50']:.2f} ms p99 "
                  f"{stats['p99']:.2f}", flush=True)

    for_each_row(check, export_dir, LATENCY_ROWS, "model latency", latency)


def end_to_end(check: Check, export_dir: Path, work: Path, windows: int,
               encoding: str) -> None:
    from benchmarks import latency

    rows = [f"{b}:{q}" for b, q in LATENCY_ROWS]
    config = latency.LatencyConfig(export=export_dir, windows=windows, warmup=2, k=(1, 8),
                                   encoding=encoding, throughput=False, threads=2,
                                   backends=tuple(rows))
    results = latency.run(config, work)
    for row in results["latency"]:
        check.results["end_to_end"].append(
            {"backend": row["backend"], "precision": row["precision"], "k": row["k"],
             "encoding": encoding, "ms": row["end_to_end_ms"],
             "stages_p50_ms": {s: v.get("p50") for s, v in row["stages_ms"].items()}})
    for skip in results["skipped"]:
        check.skip({"step": f"end-to-end {encoding}", "backend": skip["backend"],
                    "precision": skip["precision"]}, skip["reason"])


def streams(check: Check, export_dir: Path, work: Path, quick: bool) -> None:
    """The streams the real server holds: ``python -m benchmarks serve`` (the serving
    benchmark: real s2i-serve, N paced PUSH streams, a subscriber counting every frame) on
    this export with the server's default backend (``auto``: the best one here)."""
    commands = importlib.import_module("benchmarks.__main__").COMMANDS
    if "serve" not in commands:
        check.skip({"step": "streams"}, "python -m benchmarks serve (the serving issue's "
                   "benchmark of the real s2i-serve) is not in this tree yet")
        return
    out = work / "serve"
    command = [sys.executable, "-m", "benchmarks", "serve", "--export", str(export_dir),
               "--work", str(work / "serve-work"), "--out", str(out), "--name", "serve",
               *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=300 if quick else 600)
    tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
    row: dict[str, Any] = {"command": "python " + " ".join(command[1:]), "rc": done.returncode,
                           "output_tail": tail}
    if (out / "serve.json").is_file():
        serve = json.loads((out / "serve.json").read_text())
        row.update(held=serve.get("held"), ceiling=(serve.get("ceiling") or {}).get("streams"),
                   rows=[{k: r.get(k) for k in ("streams", "held", "delivered_fraction",
                                                 "e2e_p50_ms", "e2e_p99_ms")}
                         for run in serve.get("runs", []) for r in run.get("rows", [])])
    check.results["streams"].append(row)
    if done.returncode != 0:
        raise S2IError(f"benchmarks serve exited {done.returncode}: "
                       f"{tail[-1] if tail else 'no output'}")
    print(f"streams held by s2i-serve: {row.get('held')}", flush=True)


# --------------------------------------------------------------------------- output

def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    env = results.get("environment") or {}
    lines = [f"# gpu-check: {m['cpu']}, {m['cores']} cores, "
             + (f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"), "",
             f"- driver CUDA: {env.get('driver_cuda')}; cuda-python: {env.get('cuda_python')}; "
             f"TensorRT: {env.get('tensorrt')}; ONNX Runtime: "
             f"{env.get('onnxruntime_builds')} providers {env.get('onnxruntime_providers')}",
             f"- elapsed: {results.get('elapsed_s')} s", "",
             "| step | status | seconds | reason |", "|---|---|---|---|"]
    for name, step in results["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '-')} "
                     f"| {step.get('reason', '')} |")
    if results["parity"]:
        lines += ["", "Parity against ONNX Runtime CPU FP32 (relative errors; images from "
                  "the reference's embeddings):", "",
                  "| backend | precision | K | image rms | image max | embedding rms "
                  "| limit (rms) | ok |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['precision']} | {r['k']} | {r['rms_relative_error']} "
                  f"| {r['max_relative_error']} | {r['embedding_rms_relative_error']} "
                  f"| {r['limit_rms']} | {r['ok']} |" for r in results["parity"]]
    if results["model_latency"]:
        lines += ["", "Model-only latency (encoder on one window + generator xK), ms:", "",
                  "| backend | precision | K | p50 | p99 |", "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['precision']} | {r['k']} | {r['ms']['p50']} "
                  f"| {r['ms']['p99']} |" for r in results["model_latency"]]
    if results["end_to_end"]:
        lines += ["", "End-to-end latency (window end -> image received by a subscriber "
                  "process), ms:", "", "| backend | precision | K | frames | p50 | p99 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['precision']} | {r['k']} | {r['encoding']} "
                  f"| {r['ms']['p50']} | {r['ms']['p99']} |" for r in results["end_to_end"]]
    for row in results["streams"]:
        lines += ["", f"Streams held by the real s2i-serve (`{row['command']}`): "
                  f"{row.get('held')} (batched-step ceiling {row.get('ceiling')})"]
    if results["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [f"- {' / '.join(str(v) for k, v in s.items() if k != 'reason')}: "
                  f"{s['reason']}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_config(GpuCheckConfig, argv, "python -m benchmarks gpu-check",
                        "Verify and time the GPU path in one command.")
    windows, reps = int(args.windows or 1), int(args.reps or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = report.machine_info()["name"]
    json_path = args.out / f"gpu-check-{name}.json"
    check = Check(args, json_path)
    check.results["environment"] = check.step("environment", environment)
    with tempfile.TemporaryDirectory(prefix="s2i-gpu-check-") as tmp:
        work = Path(tmp)
        export_dir = args.export or check.step("export", lambda: build_export(work,
                                                                            args.quick))
        if export_dir is not None:
            from runtime.model.manifest import load_export_manifest

            manifest = load_export_manifest(export_dir)
            check.results["export"] = {"path": str(export_dir),
                                       "width": manifest["width"],
                                       "embedding_dim": manifest["embedding_dim"],
                                       "models": sorted(manifest["models"]),
                                       "tensorrt": manifest.get("tensorrt"),
                                       "parity_vs_pytorch": manifest.get("parity")}
            check.step("parity", lambda: check_parity(check, export_dir))
            check.step("model latency", lambda: model_latency(check, export_dir, reps))
            for encoding in ("png", "raw"):
                check.step(f"end-to-end {encoding}",
                           lambda e=encoding: end_to_end(check, export_dir, work, windows, e))
            check.step("streams", lambda: streams(check, export_dir, work, args.quick))
    check.write()
    md_path = args.out / f"gpu-check-{name}.md"
    from runtime.artifacts import atomic_write_bytes

    table = markdown({**check.results, "elapsed_s": round(check.elapsed(), 1)})
    atomic_write_bytes(md_path, table.encode())
    print()
    print(table)
    print(f"wrote {json_path} and {md_path}")
    failed = [r for r in check.results["parity"] if not r["ok"]]
    broken = [n for n, s in check.results["steps"].items() if s["status"] == "failed"]
    return 1 if failed or broken else 0
