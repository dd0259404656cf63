"""The cost of a frame's image encodings: CPU per frame, bytes, and what the lossy one loses.

For each encoding (``raw``, ``png`` at several compression levels, ``jpeg`` at several
qualities) and each frame shape (K = 1; K = 8 plus the uncertainty map), builds the real
protocol message (``runtime.wire.protocol.encode_frame``) ``--frames`` times and decodes it back
(``decode_frame``, what ``runtime.wire.client.Subscriber`` does), timing both with the thread's
CPU clock (``time.thread_time``: what the host pays, whatever else runs) and the wall clock.
The pictures are the generator's own (``--export``: an export's FP32 translator on seeded
noise windows) or, by default, smooth synthetic pictures with the statistics of generated
ones (low-frequency colour fields plus fine detail), since random noise is not what any
codec sees in practice.

    python -m benchmarks encodings [--frames 200] [--export DIR] [--out FILE]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from runtime.config import config_json, parse_config
from runtime.wire.protocol import decode_frame, encode_frame, images_to_uint8, uncertainty_map

RESULTS = Path(__file__).parent / "results"
SETTINGS: tuple[tuple[str, int | None], ...] = (
    ("raw", None), ("png", 0), ("png", 1), ("png", 6), ("jpeg", 95), ("jpeg", 85),
    ("jpeg", 75), ("jpeg", 50))
SHAPES = ((1, False), (8, True))      # (K, uncertainty map)


def synthetic_images(count: int, seed: int = 0, size: int = 96) -> np.ndarray:
    """``[count, 3, size, size]`` in [-1, 1]: a few low-frequency colour waves per picture
    plus mild pixel noise (GAN output is smooth with fine texture, not white noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        for c in range(3):
            field = np.zeros((size, size))
            for _ in range(4):
                fx, fy, phase = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.3)
                field += rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
            out[i, c] = np.clip(field + 0.05 * rng.standard_normal((size, size)), -1, 1)
    return out


def export_images(export_dir: Path, count: int, seed: int = 0) -> np.ndarray:
    """``count`` images of an export's FP32 translator (ONNX Runtime CPU) on noise windows."""
    from runtime.frontend import FrontEndConfig, log_mel_batch
    from runtime.model.backends import open_translator
    from runtime.model.masks import draw_masks

    translator = open_translator(export_dir, backend="onnxruntime-cpu", features="host")
    cfg = FrontEndConfig.from_dict(translator.manifest["front_end"])
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((count, cfg.n_samples)) * rng.uniform(0.01, 0.5, (count, 1)))
    features = log_mel_batch(np.clip(audio, -1, 1).astype(np.float32), cfg)[:, None]
    return translator.translate(features, draw_masks(translator.dropout, count, rng))


def measure(encoding: str, level: int | None, images: np.ndarray, k: int, with_map: bool,
            frames: int) -> dict[str, Any]:
    """Encode and decode ``frames`` frames of ``k`` images (+ the map); per-frame figures."""
    u8 = images_to_uint8(images)
    encode_cpu, encode_wall, decode_cpu, sizes, errors = [], [], [], [], []
    for f in range(frames):
        rows = [(f * k + j) % len(u8) for j in range(k)]
        unc = uncertainty_map(images[rows]) if with_map else None
        wall, cpu = time.perf_counter(), time.thread_time()
        parts = encode_frame("s2i", {"stream": "bench", "seq": f}, u8[rows], unc, encoding, level)
        encode_cpu.append((time.thread_time() - cpu) * 1000)
        encode_wall.append((time.perf_counter() - wall) * 1000)
        cpu = time.thread_time()
        frame = decode_frame(parts)
        decode_cpu.append((time.thread_time() - cpu) * 1000)
        sizes.append(sum(len(p) for p in parts[2:]))
        got = np.stack(frame.images).astype(np.int16)
        errors.append(np.abs(got - u8[rows]).reshape(k, -1))
    diff = np.concatenate(errors)
    return {"encoding": encoding, "level": level, "k": k, "uncertainty": with_map,
            "frames": frames,
            "encode_cpu_ms": report.summarize(encode_cpu),
            "encode_wall_ms": report.summarize(encode_wall),
            "decode_cpu_ms": report.summarize(decode_cpu),
            "bytes_per_frame": int(np.mean(sizes)),
            "grey_levels_max_error": int(diff.max()),
            "grey_levels_mean_error": round(float(diff.mean()), 3)}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| K | encoding | level | encode CPU ms (p50 / p99) | decode CPU ms | "
             "bytes/frame | error (grey levels, mean / max) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = f"{r['k']}" + (" + map" if r["uncertainty"] else "")
        level = "-" if r["level"] is None else r["level"]
        lines.append(f"| {shape} | {r['encoding']} | {level}"
                     f" | {r['encode_cpu_ms']['p50']:.3f} / {r['encode_cpu_ms']['p99']:.3f}"
                     f" | {r['decode_cpu_ms']['p50']:.3f} | {r['bytes_per_frame']}"
                     f" | {r['grey_levels_mean_error']:.2f} / {r['grey_levels_max_error']} |")
    return "\n".join(lines) + "\n"


@dataclass
class EncodingsConfig:
    frames: int = field(default=200, metadata={"help": "frames per setting and shape"})
    export: Path | None = field(default=None, metadata={
        "help": "take the pictures from this export's translator (default: smooth synthetic "
                "pictures)"})
    out: Path = RESULTS / "encodings.json"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("--frames must be at least 1")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(EncodingsConfig, sys.argv[1:] if argv is None else argv,
                        "python -m benchmarks encodings", __doc__.split("\n\n")[0])
    pictures = 64
    images = export_images(args.export, pictures) if args.export is not None \
        else synthetic_images(pictures)
    rows = []
    for k, with_map in SHAPES:
        for encoding, level in SETTINGS:
            row = measure(encoding, level, images, k, with_map, args.frames)
            print(json.dumps({key: row[key] for key in ("encoding", "level", "k",
                                                        "bytes_per_frame")}
                             | {"encode_cpu_ms": row["encode_cpu_ms"]["p50"]}))
            rows.append(row)
    record = {"benchmark": "encodings", "machine": report.machine_info(),
              "versions": report.versions(),
              "config": config_json(args),
              "pictures": str(args.export) if args.export else "synthetic (smooth)",
              "clock": "time.thread_time (CPU of the encoding thread)", "rows": rows}
    report.write_result(args.out.parent, args.out.stem, record, markdown(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0
