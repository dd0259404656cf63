"""PNG figures of ``python -m trainer evaluate`` (the paper's Figs. 7-13), matplotlib Agg."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from runtime.artifacts import atomic_write_bytes  # noqa: E402

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"


def _percent(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else 100 * v for v in values], dtype=float)


def plot_run(run: dict[str, Any], path: Path) -> Path:
    """Informativity per class and their average over epochs (Figs. 7-11)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    epochs = run["epochs"]
    marker = "o" if len(epochs) <= 60 else None
    for i, (name, curve) in enumerate(run["per_class"].items()):
        ax.plot(epochs, _percent(curve["used"]), marker=marker, ms=3, lw=1.3,
                color=COLORS[i % len(COLORS)], label=name)
    ax.plot(epochs, _percent(run["average"]["used"]), color="black", lw=2.2, ls="--",
            label="average")
    if run["skipped_epochs"]:
        average = dict(zip(epochs, _percent(run["average"]["used"]), strict=True))
        ax.scatter(run["skipped_epochs"], [average[e] for e in run["skipped_epochs"]],
                   marker="x", color="grey", s=40, zorder=3,
                   label="after a D update: mean of the 5 epochs before")
    title = f"Translator informativity per class, D={run['embedding_dim']} ({run['name']})"
    if run["without_classifier"]:
        title += f"\nno classifier (too few labels): {', '.join(run['without_classifier'])}"
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel("informativity (% of images judged informative)")
    ax.set_ylim(-2, 102)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, path)


def plot_embedding_sizes(runs: list[dict[str, Any]], classes: list[str], path: Path) -> Path:
    """Average over the epoch range and max moving average per run / D (Fig. 12)."""
    runs = sorted(runs, key=lambda r: (r["embedding_dim"], r["name"]))
    dims = [r["embedding_dim"] for r in runs]
    names = [f"D={r['embedding_dim']}" + (f" {r['name']}" if dims.count(r["embedding_dim"]) > 1
                                          else "") for r in runs]
    series = [c for c in classes if any(c in r["per_class"] for r in runs)] + ["average"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    width = 0.8 / len(series)
    x = np.arange(len(runs))
    spans = ["{}..{}".format(*(r["average"]["average_epochs"] or ["?", "?"])) for r in runs]
    windows = [r["average"]["moving_average"]["window"] for r in runs]
    panels = (
        (axes[0], "average", "average over an epoch range",
         [f"{n}\nepochs {s}" for n, s in zip(names, spans, strict=True)]),
        (axes[1], "max_moving_average", "maximum moving average",
         [f"{n}\n{w}-epoch window" for n, w in zip(names, windows, strict=True)]))
    for ax, key, title, ticks in panels:
        for i, name in enumerate(series):
            curves = [r["average"] if name == "average" else r["per_class"].get(name, {})
                      for r in runs]
            values = [100 * (c.get(key) or 0.0) for c in curves]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width,
                   color="black" if name == "average" else COLORS[i % len(COLORS)],
                   label=name)
        ax.set_title(title)
        ax.set_xticks(x, ticks)
        ax.set_xlabel("audio embedding size")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("informativity (%)")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    missing = sorted({c for r in runs for c in r["without_classifier"]})
    fig.suptitle("Translator informativity by embedding size" +
                 (f" (no classifier: {', '.join(missing)})" if missing else ""))
    return _save(fig, path)


def plot_pixel_loss(runs: list[dict[str, Any]], window: int, path: Path) -> Path | None:
    """Training pixel loss per epoch (faint) and its moving average per run (Fig. 13).

    The first ``window - 1`` epochs average over the epochs there are so far."""
    with_loss = [r for r in runs if r["pixel_loss"] and r["pixel_loss"]["values"]]
    if not with_loss:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, run in enumerate(sorted(with_loss, key=lambda r: r["embedding_dim"])):
        loss, color = run["pixel_loss"], COLORS[i % len(COLORS)]
        label = f"D={run['embedding_dim']} ({run['name']})"
        ax.plot(loss["epochs"], loss["values"], color=color, lw=0.8, alpha=0.35)
        ax.plot(loss["epochs"], loss["trailing_mean"], color=color, lw=2, label=label,
                marker="o" if len(loss["epochs"]) <= 60 else None, ms=3)
    ax.set_title(f"Training pixel loss, {window}-epoch moving average (faint: per epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pixel loss (MSE)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    files = [plot_run(run, out / f"informativity_{_safe(run['name'])}.png")
             for run in report["runs"]]
    files.append(plot_embedding_sizes(report["runs"], report["classes"],
                                      out / "embedding_sizes.png"))
    pixel = plot_pixel_loss(report["runs"], report["settings"]["window"],
                            out / "pixel_loss.png")
    if pixel:
        files.append(pixel)
    return files
