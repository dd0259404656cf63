"""Benchmark results: summary statistics, machine and versions, JSON, markdown table, plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import atomic_write_bytes, atomic_write_json

RESULTS_FORMAT = "s2i-latency-benchmark"
RESULTS_VERSION = 1
STAGES = ("features", "encoder", "generator", "encoding", "transport")
# "other": end-to-end minus the stages (loop wake-up on the ring, thread hand-offs, queues)
SPLIT = (*STAGES, "other")
# Targets of issue 7, reported against (never asserted).
TARGETS = {"cpu_k1_p99_ms": 60.0, "cpu_ort_speedup_vs_eager": 1.3,
           "gpu_trt_fp16_k8_p99_ms": 5.0, "gpu_trt_fp16_k1_streams": 5000}


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (numpy's linear interpolation), max, mean and count of milliseconds."""
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return {"count": 0}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"count": int(v.size), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "p99": round(float(p99), 3), "max": round(float(v.max()), 3),
            "mean": round(float(v.mean()), 3), "min": round(float(v.min()), 3)}


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return ", ".join(names) or None


def machine_info() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu_model(), "cores": cores, "memory_gib": _memory_gib(),
            "gpu": _gpu_name(), "os": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    info["name"] = machine_slug(info)
    return info


def machine_slug(info: dict[str, Any]) -> str:
    """Short file-name-safe machine name: cpu model + cores (+ gpu)."""
    def slug(text: str) -> str:
        text = re.sub(r"\(r\)|\(tm\)|processor|cpu|@.*$", "", text.lower())
        return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:32]
    name = f"{slug(info['cpu']) or 'cpu'}-{info['cores']}c"
    if info.get("gpu"):
        name += "-" + slug(info["gpu"].split(",")[0].replace("nvidia", ""))
    return name


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "pyzmq",
                 "tensorrt"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


# --------------------------------------------------------------------------- outputs


def write_json(path: Path, results: dict[str, Any]) -> None:
    atomic_write_json(path, {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, **results})


def write_result(out: Path, stem: str, result: dict[str, Any], md: str) -> None:
    """``OUT/STEM.json`` (the result as it is) and ``OUT/STEM.md`` (its tables)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(md + "\n")


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(row: dict[str, Any], q: str) -> str:
    value = row.get("speedup_vs_eager", {}).get(q)
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(results: dict[str, Any]) -> str:
    """The README table: one row per backend/precision/K, latency and per-stage medians."""
    m, s = results["machine"], results["settings"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
             + f"; D={s['embedding_dim']}, width={s['width']}, {s['windows']} windows per row, "
             f"{s['threads']} CPU threads, {s['encoding']} images.",
             "Latency = last audio sample of the 1-s window -> image(s) received by the "
             "subscriber (ms). Speed-up = PyTorch eager time / this row's time (same K). "
             "Stage columns are medians (ms).",
             "",
             "| backend | precision | K | p50 | p95 | p99 | max | speed-up p50 | speed-up p99 "
             "| features | encoder | generator xK | encoding | transport | other |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["latency"]:
        e2e, st = row["end_to_end_ms"], row["stages_ms"]
        lines.append(
            f"| {_backend(row)} | {row['precision']} | {row['k']} | {_fmt(e2e['p50'])} "
            f"| {_fmt(e2e['p95'])} | {_fmt(e2e['p99'])} | {_fmt(e2e['max'])} "
            f"| {_ratio(row, 'p50')} | {_ratio(row, 'p99')} | "
            + " | ".join(_fmt(st.get(k, {}).get("p50"), 2) for k in SPLIT) + " |")
    if results.get("skipped"):
        lines += ["", "Not measured on this machine:", ""]
        lines += [f"- {skip['backend']} {skip['precision']}: {skip['reason']}"
                  for skip in results["skipped"]]
    if results.get("throughput"):
        lines += ["", "Throughput: concurrent real-time streams (one 1-s window per second "
                  "each) whose batched step (features, then encoder + generator for all streams "
                  "in one call, timed apart) fits 1 s: model p99 + features p99 on CPU, the "
                  "larger of the two on GPU.", "",
                  "| backend | precision | K | streams | model p50 ms | model p99 ms "
                  "| features p99 ms (at that batch) |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["throughput"]:
            best = row.get("at_limit") or {}
            more = " (search limit)" if row.get("limit_reached") else ""
            lines.append(f"| {_backend(row)} | {row['precision']} | {row['k']} "
                         f"| {row['streams']}{more} | {_fmt(best.get('p50_ms'))} "
                         f"| {_fmt(best.get('p99_ms'))} "
                         f"| {_fmt(best.get('features_p99_ms'))} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    atomic_write_bytes(path, markdown_table(results).encode())


def plot(path: Path, results: dict[str, Any]) -> None:
    """Left: CDF of window-end-to-received latency per row; right: median stage split."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["latency"]
    fig, (ax_cdf, ax_bar) = plt.subplots(1, 2, figsize=(13, 5),
                                         gridspec_kw={"width_ratios": [1.2, 1]})
    for row in rows:
        v = np.sort(np.asarray(row["samples_ms"]["end_to_end"]))
        if v.size:
            ax_cdf.plot(v, np.arange(1, v.size + 1) / v.size, label=_label(row))
    target = TARGETS["cpu_k1_p99_ms"]
    ax_cdf.axvline(target, color="grey", ls="--", lw=1)
    ax_cdf.text(target, 0.08, f" {target:g} ms: CPU target (K=1, p99)", color="grey",
                fontsize=8, ha="left")
    ax_cdf.axhline(0.99, color="grey", ls=":", lw=1)
    ax_cdf.set_xlim(left=0)
    ax_cdf.set_xlabel("window end -> image received (ms)")
    ax_cdf.set_ylabel("fraction of windows")
    ax_cdf.set_title("Latency per 1-s window (CDF; dotted line: p99)")
    ax_cdf.grid(True, alpha=0.3)
    ax_cdf.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  frameon=False)

    labels = [_label(r) for r in rows]
    left = np.zeros(len(rows))
    for stage in SPLIT:
        widths = np.array([max(0.0, r["stages_ms"].get(stage, {}).get("p50", 0.0))
                           for r in rows])
        ax_bar.barh(labels, widths, left=left, label=stage)
        left += widths
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("median time per stage (ms)")
    ax_bar.set_title("Where the time goes (medians)")
    ax_bar.legend(fontsize=8, ncol=len(SPLIT), loc="upper center",
                  bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax_bar.tick_params(axis="y", labelsize=8)
    m = results["machine"]
    fig.suptitle(f"S2I streaming latency - {m['cpu']}, {m['cores']} cores"
                 + (f", {m['gpu']}" if m.get("gpu") else "")
                 + f" - D={results['settings']['embedding_dim']}, "
                 f"width={results['settings']['width']}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _backend(row: dict[str, Any]) -> str:
    """The backend, marked where the log-mel ran inside the graph (``--features graph``)."""
    return row["backend"] + (" (features in graph)" if row.get("features") == "graph" else "")


def _label(row: dict[str, Any]) -> str:
    return f"{_backend(row)} {row['precision']} K={row['k']}"
