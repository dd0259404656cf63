"""Store benchmark: build a store from the real s2i_data train archive, then load random
batches the way training does.

    python -m benchmarks store [--archive train.tar.gz] [--batches 200] [--batch-size 64]

Figures (issue 2 targets: build < 60 s on 2 cores, batch of 64 < 5 ms) go to
``benchmarks/results/store.json`` with the machine they were taken on.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import cpu_model
from runtime.artifacts import atomic_write_json
from runtime.config import config_json, parse_config
from runtime.errors import S2IError
from runtime.frontend import from_uint8
from trainer.data.prepare import build
from trainer.data.prepare_common import PrepareOptions
from trainer.data.store import Store

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "vegas-spectrograms" / "train.tar.gz"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "store.json"
TARGETS = {"build_seconds": 60.0, "batch64_ms": 5.0}


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}


def stats_ms(values: list[float]) -> dict[str, float]:
    v = np.asarray(values) * 1000.0
    return {"mean_ms": round(float(v.mean()), 4), "p50_ms": round(float(np.percentile(v, 50)), 4),
            "p95_ms": round(float(np.percentile(v, 95)), 4),
            "p99_ms": round(float(np.percentile(v, 99)), 4), "max_ms": round(float(v.max()), 4),
            "count": int(v.size)}


def load_batches(store: Store, split: str, batch: int, n_batches: int, seed: int
                 ) -> dict[str, Any]:
    """Random batches as training reads them: one fancy-indexed gather from the memmap
    (indices sorted), uint8 -> float32 [-1, 1], shape [B, 1, 128, 100]; also the
    map-style way (one item at a time, then stacked)."""
    arrays = store.split(split)
    rng = np.random.default_rng(seed)
    n = len(arrays)
    gathered, per_item = [], []
    for _ in range(n_batches):
        index = np.sort(rng.choice(n, batch, replace=False))
        start = time.perf_counter()
        x = from_uint8(arrays.spectrograms[index])[:, None]
        labels = arrays.labels[index]
        gathered.append(time.perf_counter() - start)
        assert x.shape == (batch, 1, 128, 100) and labels.shape == (batch,)
        index = rng.choice(n, batch, replace=False)
        start = time.perf_counter()
        items = [from_uint8(arrays.spectrograms[i])[None] for i in index]
        x = np.stack(items)
        per_item.append(time.perf_counter() - start)
    return {"split": split, "items": n, "batch": batch, "gather": stats_ms(gathered),
            "per_item": stats_ms(per_item)}


@dataclass
class StoreBenchConfig:
    archive: Path = field(default=DEFAULT_ARCHIVE,
                          metadata={"help": "JPG spectrogram archive (s2i_data train.tar.gz)"})
    store: Path | None = field(default=None, metadata={
        "help": "where to build the store (default: a temporary folder, removed after)"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N files"})
    batches: int = 200
    batch_size: int = 64
    seed: int = 0
    results: Path = DEFAULT_RESULTS
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})

    def __post_init__(self) -> None:
        if self.batches <= 0 or self.batch_size <= 0:
            raise ValueError("--batches and --batch-size must be positive")


def main(argv: list[str]) -> int:
    args = parse_config(StoreBenchConfig, argv, "python -m benchmarks store", __doc__)
    if not args.archive.is_file():
        raise S2IError(f"archive not found: {args.archive} (pass --archive PATH to the s2i_data "
                       "train.tar.gz)")
    scratch = None
    out = args.store
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="s2i-store-bench-"))
        out = scratch / "store"
    try:
        opts = PrepareOptions(out=out, overwrite=True, limit=args.limit,
                              progress=not args.quiet)
        start = time.perf_counter()
        store = build([str(args.archive)], opts)
        seconds = time.perf_counter() - start
        files = sum(int(i.get("files", 0)) for i in store.manifest["source"]["inputs"])
        store_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        split = store.splits[0]
        load = load_batches(store, split, args.batch_size, args.batches, args.seed)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "format": "s2i-store-benchmark", "version": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": config_json(args),
        "build": {"archive": str(args.archive), "files": files,
                  "items": int(store.manifest["splits"][split]["count"]),
                  "seconds": round(seconds, 3), "files_per_second": round(files / seconds, 1),
                  "store_bytes": store_bytes, "skipped": store.manifest["skipped"]},
        "load": load,
        "notes": "Build: list the archive, sha256 it, stream-decode every JPG (PIL) into a "
                 "memory-mapped .npy, sha256 the store files. Load: warm page cache (the store "
                 "was just written); gather = one sorted fancy-index read of the memmap + "
                 "uint8->float32, as the trainer's dataset does; per_item = 64 single reads.",
        "targets": TARGETS,
        "meets_targets": {"build_seconds": seconds < TARGETS["build_seconds"],
                          "batch64_ms": load["gather"]["p95_ms"] < TARGETS["batch64_ms"]},
    }
    atomic_write_json(args.results, results)
    print(f"build: {files} files in {seconds:.1f} s ({files / seconds:.0f} files/s)")
    for way in ("gather", "per_item"):
        s = load[way]
        print(f"load ({way}) batch of {args.batch_size}: mean {s['mean_ms']:.3f} ms, "
              f"p95 {s['p95_ms']:.3f} ms, max {s['max_ms']:.3f} ms over {s['count']} batches")
    print(f"results: {args.results}")
    return 0
