"""``python -m trainer evaluate RUN... --classifiers DIR --store S``: the paper's reports.

Every GAN snapshot of each run (``checkpoints/gan_eNNNN.pt``, plus ``gan_last.pt``)
translates the sounds of a split (test by default; MC dropout on); each generated image
is scored only by the informativity classifier of its sound's TRUE class, and the share
judged informative is the informativity of that class at that epoch (paper, 5.4.1).

Reports, written to ``--out`` (default ``RUN/evaluation`` for one run):

- ``informativity_<run>.png``: informativity per class and their average over epochs
  (the paper's Figs. 7-11, one per embedding size D);
- ``embedding_sizes.png``: per run (= per D), the average over an epoch range
  (``--avg-from/--avg-to``, the paper's 500..4000) and the maximum moving average
  (``--window``, 50 epochs in the paper; shrunk to the run's length on short runs)
  (Fig. 12);
- ``pixel_loss.png``: the training pixel loss moving average from the checkpoint
  history (Fig. 13);
- ``informativity.json`` (everything), ``informativity.csv`` (one row per run, epoch and
  class) and ``summary.csv`` (one row per run and class).

As in the paper, the ``--skip-after-d`` (2) epochs right after a discriminator update are
not trusted (their images often fooled the classifiers): their value is replaced by the
mean of the five previous kept epochs. When D was updated comes from the checkpoint
(config ``n_gd`` with unit ``epoch``, or a per-epoch ``d_updates`` count in the history);
``--d-every N`` sets it by hand, ``--skip-after-d 0`` turns skipping off.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.artifacts import atomic_write_bytes, atomic_write_json
from runtime.config import parse_config, save_config
from runtime.errors import S2IError
from trainer.checkpoint import load_translator
from trainer.data.store import Store
from trainer.evaluate.informativity import informative_probability, load_classifiers
from trainer.evaluate.sample import check_compatible, list_snapshots, select_items, translate

PIXEL_KEYS = ("pixel_loss", "train_pixel_loss", "loss_pixel", "g_pixel", "pixel")
D_UPDATE_KEYS = ("d_updates", "d_steps", "discriminator_updates")
N_GD_KEYS = ("n_gd", "d_every", "gd_ratio")
N_GD_UNIT_KEYS = ("n_gd_unit", "gd_unit", "d_update_unit", "n_gd_per")
PREVIOUS_FOR_SKIPPED = 5  # the paper replaces a skipped epoch by the mean of the 5 before it


# ------------------------------------------------------------------ checkpoint facts

def history_series(history: Any, key: str) -> list[float] | None:
    """A per-epoch series from a history (dict of lists, or list of per-epoch dicts)."""
    if isinstance(history, dict) and isinstance(history.get(key), list):
        return [float(v) if v is not None else math.nan for v in history[key]]
    if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
        if any(key in h for h in history):
            return [float(h[key]) if h.get(key) is not None else math.nan for h in history]
    return None


def history_epochs(history: Any, n: int) -> list[int]:
    """Epoch numbers of a history's entries (its own ``epoch`` field, else 1..n)."""
    epochs = history_series(history, "epoch")
    if epochs and len(epochs) == n:
        return [int(e) for e in epochs]
    return list(range(1, n + 1))


def pixel_loss_history(state: dict[str, Any], key: str | None = None
                       ) -> tuple[str, list[int], list[float]] | None:
    history = state.get("history", {})
    for k in ([key] if key else PIXEL_KEYS):
        values = history_series(history, k)
        if values:
            return k, history_epochs(history, len(values)), values
    return None


def discriminator_update_epochs(state: dict[str, Any], epochs: list[int],
                                d_every: int | None) -> tuple[set[int], str]:
    """Epochs at which D was updated (every training epoch up to the last snapshot, not
    only snapshot epochs: with snapshots every 2 epochs and D every 5, D at epoch 5 still
    makes snapshots 6 and 7 skipped), and where that fact came from."""
    trained = range(1, max(epochs, default=0) + 1)
    if d_every:
        return {e for e in trained if e % d_every == 0}, f"--d-every {d_every}"
    config = state.get("config", {}) or {}
    n_gd = next((config[k] for k in N_GD_KEYS if k in config), None)
    unit = str(next((config[k] for k in N_GD_UNIT_KEYS if k in config), "")).lower()
    if n_gd and unit.startswith("epoch"):
        return ({e for e in trained if e % int(n_gd) == 0},
                f"checkpoint config: D once per {n_gd} generator epochs")
    history = state.get("history", {})
    for key in D_UPDATE_KEYS:
        counts = history_series(history, key)
        if counts:
            numbered = zip(history_epochs(history, len(counts)), counts, strict=True)
            updated = {e for e, c in numbered if c > 0}
            if updated >= set(range(1, len(counts) + 1)) and len(counts) > 1:
                return set(), f"history '{key}': D updated within every epoch, nothing skipped"
            return updated, f"history '{key}'"
    if n_gd and unit.startswith("batch"):
        return set(), f"checkpoint config: D once per {n_gd} generator batches (every epoch)"
    return set(), "unknown (pass --d-every N to skip epochs after D updates)"


def skipped_after_d(epochs: list[int], d_epochs: set[int], skip: int) -> list[bool]:
    """Per snapshot epoch: does it fall within ``skip`` epochs after a D update (d+1..d+skip)?"""
    return [skip > 0 and any(0 < e - d <= skip for d in d_epochs) for e in epochs]


# ------------------------------------------------------------------------- series math

def replace_skipped(values: list[float | None], skipped: list[bool]) -> list[float | None]:
    """A skipped epoch takes the mean of up to five previous kept values (None if none)."""
    used: list[float | None] = []
    kept: list[float] = []
    for value, skip in zip(values, skipped, strict=True):
        if skip:
            previous = kept[-PREVIOUS_FOR_SKIPPED:]
            used.append(float(np.mean(previous)) if previous else None)
        else:
            used.append(value)
            if value is not None:
                kept.append(value)
    return used


def moving_average(epochs: list[int], values: list[float | None], window: int
                   ) -> tuple[list[int], list[float], int]:
    """Mean over the last ``window`` epochs, at each epoch where a full window fits.

    The window shrinks to the run's span on short runs; returns (end epochs, means,
    window used). Missing values (None / NaN) are left out of each mean.
    """
    pairs = [(e, v) for e, v in zip(epochs, values, strict=True)
             if v is not None and not math.isnan(v)]
    if not pairs:
        return [], [], 0
    first, last = pairs[0][0], pairs[-1][0]
    width = max(1, min(window, last - first + 1))
    ends, means = [], []
    for end, _ in pairs:
        if end - width + 1 < first:
            continue
        inside = [v for e, v in pairs if end - width < e <= end]
        ends.append(end)
        means.append(float(np.mean(inside)))
    return ends, means, width


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start): for plotting."""
    return [float(np.nanmean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))]


def range_average(epochs: list[int], values: list[float | None], lo: int, hi: int
                  ) -> tuple[float | None, list[int]]:
    """Mean over epochs lo..hi; when none falls inside, over the whole run."""
    pairs = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
    inside = [(e, v) for e, v in pairs if lo <= e <= hi] or pairs
    if not inside:
        return None, []
    return float(np.mean([v for _, v in inside])), [inside[0][0], inside[-1][0]]


# --------------------------------------------------------------------------- scoring

def score_run(run: str | Path, store: Store, classifiers: dict[int, Any], split: str,
              samples: int, per_class: int | None, seed: int, batch_size: int,
              progress: bool = True) -> tuple[list[int], dict[int, list[float]], dict[str, Any]]:
    """Informativity per class (index -> per-epoch list) for every snapshot of ``run``."""
    arrays = store.split(split)
    chosen = select_items(arrays, per_class, None, seed)
    labels = np.asarray(arrays.labels)[chosen]
    spectrograms = np.asarray(arrays.spectrograms[chosen])
    epochs: list[int] = []
    shares: dict[int, list[float]] = {k: [] for k in classifiers}
    last_state: dict[str, Any] = {}
    paths = list_snapshots(run)
    for path in tqdm(paths, desc=f"evaluate {Path(run).name}", unit="ckpt",
                     disable=not progress):
        translator = load_translator(path)
        check_compatible(translator, store)
        images = translate(translator, spectrograms, samples, seed=seed,
                           batch_size=batch_size)
        epochs.append(translator.epoch)
        for k, model in classifiers.items():
            of_class = images[labels == k].reshape(-1, 96, 96, 3)
            if len(of_class) == 0:
                raise S2IError(f"split '{split}' of {store.path} has no sounds of class "
                               f"{store.classes[k]!r} to score")
            shares[k].append(float((informative_probability(model, of_class) >= 0.5).mean()))
        last_state = translator.state
    order = np.argsort(epochs, kind="stable")
    epochs = [epochs[i] for i in order]
    shares = {k: [v[i] for i in order] for k, v in shares.items()}
    if len(set(epochs)) != len(epochs):
        raise S2IError(f"run {run} has two checkpoints of the same epoch; evaluate one run "
                       "folder at a time")
    return epochs, shares, last_state


def summarize(values: list[float | None], epochs: list[int], skipped: list[bool],
              window: int, lo: int, hi: int) -> dict[str, Any]:
    used = replace_skipped(values, skipped)
    average, used_range = range_average(epochs, used, lo, hi)
    ends, means, width = moving_average(epochs, used, window)
    best = int(np.argmax(means)) if means else None
    return {"raw": values, "used": used, "average": average, "average_epochs": used_range,
            "moving_average": {"epochs": ends, "values": means, "window": width},
            "max_moving_average": means[best] if best is not None else None,
            "max_moving_average_epoch": ends[best] if best is not None else None}


@dataclass
class EvaluateConfig:
    """What ``python -m trainer evaluate`` is told (saved as ``OUT/config_evaluate.json``)."""

    runs: list[str] = field(metadata={
        "positional": True, "help": "run folders (several: one per embedding size D)"})
    store: str = field(metadata={"help": "dataset store with the sounds to translate"})
    classifiers: str | None = field(default=None, metadata={
        "help": "output of `python -m trainer informativity`"})
    auto: bool = field(default=False, metadata={
        "help": "no classifiers yet (demo set): sample the val sounds, label them "
                "automatically, train the classifiers in OUT, then evaluate"})
    auto_snapshots: str = field(default="4", metadata={
        "help": "--auto: snapshots per run to sample"})
    auto_epochs: int = field(default=60, metadata={"help": "--auto: classifier epochs"})
    split: str = "test"
    samples: int = field(default=1, metadata={"help": "MC-dropout images per sound"})
    per_class: int | None = field(default=None, metadata={
        "help": "sounds per class (default all)"})
    window: int = field(default=50, metadata={"help": "moving-average window in epochs"})
    avg_from: int = field(default=500, metadata={"help": "first epoch of the average"})
    avg_to: int = field(default=4000, metadata={"help": "last epoch of the average"})
    skip_after_d: int = field(default=2, metadata={
        "help": "epochs after each D update replaced by the mean of the five before "
                "(0: keep all)"})
    d_every: int | None = field(default=None, metadata={
        "help": "D updated every N epochs (overrides what the checkpoint says)"})
    pixel_key: str | None = field(default=None, metadata={
        "help": "history key of the pixel loss"})
    seed: int = 0
    batch_size: int = 64
    out: str | None = field(default=None, metadata={
        "help": "report folder (default RUN/evaluation; required for several runs)"})
    progress: bool = field(default=True, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.runs = [str(r) for r in self.runs]
        self.store = str(self.store)
        if self.window < 1:
            raise S2IError(f"--window must be at least 1, got {self.window}")


def evaluate_runs(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score every snapshot of ``cfg.runs`` with the classifiers in ``cfg.classifiers``."""
    if cfg.classifiers is None:
        raise S2IError("no --classifiers given")
    classifiers_dir, split, samples, window = cfg.classifiers, cfg.split, cfg.samples, cfg.window
    avg_from, avg_to, skip_after_d, d_every = (cfg.avg_from, cfg.avg_to, cfg.skip_after_d,
                                               cfg.d_every)
    store = Store(cfg.store)
    classes, classifiers = load_classifiers(classifiers_dir)
    if classes != store.classes:
        raise S2IError(f"the classifiers in {classifiers_dir} are for classes {classes}; store "
                       f"{store.path} has {store.classes}")
    if not classifiers:
        raise S2IError(f"{classifiers_dir} holds no trained classifier")
    results = []
    for run in cfg.runs:
        epochs, shares, state = score_run(run, store, classifiers, split, samples,
                                          cfg.per_class, cfg.seed, cfg.batch_size, cfg.progress)
        d_epochs, d_source = discriminator_update_epochs(state, epochs, d_every)
        skipped = skipped_after_d(epochs, d_epochs, skip_after_d)
        per_class_report = {classes[k]: summarize(v, epochs, skipped, window, avg_from, avg_to)
                            for k, v in shares.items()}
        mean_curve = [float(np.mean([shares[k][i] for k in shares])) for i in range(len(epochs))]
        pixel = pixel_loss_history(state, cfg.pixel_key)
        pixel_report = None
        if pixel:
            key, p_epochs, p_values = pixel
            ends, means, width = moving_average(p_epochs, p_values, window)
            pixel_report = {"key": key, "epochs": p_epochs, "values": p_values,
                            "trailing_mean": trailing_mean(p_values, window),
                            "moving_average": {"epochs": ends, "values": means,
                                               "window": width}}
        results.append({
            "run": str(run), "name": Path(run).name if Path(run).is_dir() else Path(run).stem,
            "embedding_dim": int(state["embedding_dim"]), "epochs": epochs,
            "d_update_epochs": sorted(d_epochs), "d_update_source": d_source,
            "skipped_epochs": [e for e, s in zip(epochs, skipped, strict=True) if s],
            "per_class": per_class_report,
            "without_classifier": [c for k, c in enumerate(classes) if k not in classifiers],
            "average": summarize(mean_curve, epochs, skipped, window, avg_from, avg_to),
            "pixel_loss": pixel_report})
    return {"format": "s2i-evaluation", "version": 1, "store": str(store.path), "split": split,
            "samples_per_sound": samples, "classes": classes,
            "settings": {"window": window, "avg_from": avg_from, "avg_to": avg_to,
                         "skip_after_d": skip_after_d, "d_every": d_every},
            "runs": results}


AUTO_SAMPLES = 2       # --auto: MC images per validation sound to label
AUTO_THRESHOLD = 0.5   # --auto: the automatic labels' rule (trainer.evaluate.autolabel)


def auto_classifiers(cfg: EvaluateConfig, out: str | Path) -> Path:
    """The whole labelling side without a person (demo set): sample the validation sounds
    with ``cfg.auto_snapshots`` snapshots of each run, label them automatically
    (``trainer.evaluate.autolabel``), train the classifiers. Returns the classifiers folder.

    ``OUT/labels`` is reused when it exists (labels a person gave there are kept)."""
    from trainer.evaluate.autolabel import auto_label
    from trainer.evaluate.informativity import InformativityConfig, train_classifiers
    from trainer.evaluate.sample import SampleConfig, write_samples

    out = Path(out)
    labels_dir = out / "labels"
    if not (labels_dir / "index.json").is_file():
        split = "val" if "val" in Store(cfg.store).splits else "train"
        write_samples(SampleConfig(list(cfg.runs), cfg.store, str(labels_dir), split=split,
                                   samples=AUTO_SAMPLES, seed=cfg.seed,
                                   snapshots=cfg.auto_snapshots, overwrite=True,
                                   progress=cfg.progress))
    auto_label(labels_dir, cfg.store, threshold=AUTO_THRESHOLD, seed=cfg.seed,
               progress=cfg.progress)
    classifiers = out / "classifiers"
    train_classifiers([labels_dir], classifiers,
                      InformativityConfig(epochs=cfg.auto_epochs, seed=cfg.seed),
                      progress=cfg.progress)
    return classifiers


# ----------------------------------------------------------------------------- writing

def _csv_text(header: list[str], rows: list[list[Any]]) -> bytes:
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue().encode()


def write_reports(report: dict[str, Any], out: str | Path) -> list[Path]:
    """JSON + CSV tables and the PNG figures; returns the files written."""
    from trainer.evaluate import plots as evaluate_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "informativity.json", report)
    rows, summary = [], []
    for run in report["runs"]:
        skipped = set(run["skipped_epochs"])
        curves = {**run["per_class"], "average": run["average"]}
        for name, curve in curves.items():
            for e, raw, used in zip(run["epochs"], curve["raw"], curve["used"], strict=True):
                rows.append([run["name"], run["embedding_dim"], e, name, raw, used,
                             int(e in skipped)])
            summary.append([run["name"], run["embedding_dim"], name, curve["average"],
                            *(curve["average_epochs"] or [None, None]),
                            curve["max_moving_average"], curve["max_moving_average_epoch"],
                            curve["moving_average"]["window"]])
    atomic_write_bytes(out / "informativity.csv", _csv_text(
        ["run", "embedding_dim", "epoch", "class", "informativity", "informativity_used",
         "skipped_after_d"], rows))
    atomic_write_bytes(out / "summary.csv", _csv_text(
        ["run", "embedding_dim", "class", "average", "average_from", "average_to",
         "max_moving_average", "max_moving_average_epoch", "window"], summary))
    files = [out / "informativity.json", out / "informativity.csv", out / "summary.csv"]
    files += evaluate_plots.write_plots(report, out)
    return files


def check_writable(out: Path) -> None:
    """Create the report folder and make sure files can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise S2IError(f"cannot write the reports to --out {out}: {exc.strerror or exc} "
                       "(expected a writable folder)") from exc


def main(argv: list[str]) -> int:
    cfg = parse_config(EvaluateConfig, argv, "python -m trainer evaluate",
                       "Score a run's GAN snapshots with the informativity classifiers and "
                       "write the paper's reports.")
    if cfg.out is None:
        if len(cfg.runs) > 1:
            raise S2IError("several runs given: pass --out DIR for the combined report")
        cfg.out = str(Path(cfg.runs[0]) / "evaluation")
    check_writable(Path(cfg.out))  # before minutes of scoring, not after
    if cfg.classifiers is None:
        if not cfg.auto:
            raise S2IError("pass --classifiers DIR (from `python -m trainer informativity`), "
                           "or --auto to label automatically (demo set)")
        cfg.classifiers = str(auto_classifiers(cfg, cfg.out))
    report = evaluate_runs(cfg)
    try:
        files = write_reports(report, cfg.out)
        save_config(cfg, Path(cfg.out) / "config_evaluate.json")
        files.append(Path(cfg.out) / "config_evaluate.json")
    except OSError as exc:
        raise S2IError(f"cannot write the reports to --out {cfg.out}: "
                       f"{exc.strerror or exc}") from exc
    for run in report["runs"]:
        avg = run["average"]
        print(f"{run['name']} (D={run['embedding_dim']}, {len(run['epochs'])} snapshots): "
              f"average informativity {100 * (avg['average'] or 0):.1f}% over epochs "
              f"{avg['average_epochs']}, max {avg['moving_average']['window']}-epoch moving "
              f"average {100 * (avg['max_moving_average'] or 0):.1f}%; D updates: "
              f"{run['d_update_source']}")
    print(f"wrote {len(files)} files to {cfg.out}")
    return 0
