"""``python -m trainer informativity LABELS_DIR... --out DIR``: one classifier per class.

As in the paper (section 5.3): for each sound class a binary informative /
non-informative classifier (``trainer.models.InformativityClassifier``) is trained on
labelled generated images of that class; SGD, lr 0.001, momentum 0.9, weight decay 5e-5.
``--architecture`` picks the network (``trainer.models.CLASSIFIER_ARCHITECTURES``): the
authors' code (default), the paper's text, or this project's first version; the manifest
records it and loading builds that one (a mismatch is refused). ``--epochs`` defaults to 60
(ours): the paper gives none, the authors' saved classifiers are from epochs 124-307.
Per class the labelled images are split into train and held-out parts, stratified by
label (``--holdout``, 0.2 = the paper's 800/200). Training batches are balanced: the
smaller kind is oversampled to the size of the larger (``--balance subsample`` draws the
larger down instead). The held-out accuracy and the balanced accuracy (mean recall of
the two kinds) are reported per class.

Output (written atomically as a whole)::

    OUT/manifest.json    {"format": "s2i-informativity", "architecture": "official",
                          "classes": [...], "per_class":
                          {class: {"file", "accuracy", "balanced_accuracy", ...} or
                          {"skipped": reason}}, "config": {...}}
    OUT/class_<k>.pt     the classifier of class k (state dict, sealed with its sha256 like a
                         checkpoint: ``trainer.checkpoint.seal``)
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime.artifacts import (
    atomic_dir,
    atomic_write_json,
    check_format,
    check_replaceable,
    read_json,
)
from runtime.config import config_parser, dataclass_from_args
from runtime.errors import S2IError
from trainer.checkpoint import MAX_WIDTH, check_seal, read_state, seal
from trainer.evaluate.autolabel import load_png
from trainer.evaluate.sample_files import INFORMATIVE, read_index, read_labels
from trainer.images import from_uint8_images
from trainer.models import (
    CLASSIFIER_ARCHITECTURES,
    InformativityClassifier,
    check_classifier_architecture,
)

CLASSIFIERS_FORMAT = "s2i-informativity"
CLASSIFIERS_VERSION = 2   # 2: each class_K.pt sealed with its sha256 (trainer.checkpoint)
INFORMATIVE_INDEX = 1  # column of log P(informative) in the classifier's output
_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")   # class_K.pt, in the folder


@dataclass
class InformativityConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 0.001                 # the paper's settings
    momentum: float = 0.9
    weight_decay: float = 5e-5
    holdout: float = 0.2              # 800/200 per class in the paper
    balance: str = "oversample"       # or "subsample"
    min_per_kind: int = 4             # fewer labels of either kind -> the class is skipped
    width: float = 1.0
    architecture: str = field(default="official", metadata={
        "choices": CLASSIFIER_ARCHITECTURES,
        "help": "official (the authors' code, default), paper (its text: 3 FC layers) or "
                "ours (this project's first version); docs/EVALUATION.md"})
    seed: int = 0


LabelledImages = dict[int, list[tuple[Path, int]]]


def collect_labelled(folders: list[str | Path]) -> tuple[list[str], LabelledImages]:
    """``classes`` and ``class index -> [(image path, 1 informative / 0 not)]``."""
    classes: list[str] | None = None
    per_class: LabelledImages = {}
    for folder in folders:
        folder = Path(folder)
        index = read_index(folder)
        labels = read_labels(folder)
        if not labels:
            raise S2IError(f"{folder} has no labels yet (label it with `python -m trainer "
                           f"label {folder}` or `--auto`)")
        if classes is None:
            classes = list(index["classes"])
        elif classes != list(index["classes"]):
            raise S2IError(f"{folder} holds classes {index['classes']}, the other folders "
                           f"{classes}; label folders must share the classes")
        for item in index["items"]:
            entry = labels.get(item["file"])
            if entry is not None:
                per_class.setdefault(int(item["class_index"]), []).append(
                    (folder / item["file"], int(entry["label"] == INFORMATIVE)))
    assert classes is not None
    return classes, per_class


def split_holdout(targets: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``fraction`` of each kind (at least one) held out."""
    train, held = [], []
    for kind in (0, 1):
        members = rng.permutation(np.flatnonzero(targets == kind))
        n_held = max(1, int(round(len(members) * fraction)))
        held.append(members[:n_held])
        train.append(members[n_held:])
    return np.concatenate(train), np.concatenate(held)


def balanced_epoch(targets: np.ndarray, balance: str, rng: np.random.Generator) -> np.ndarray:
    """Indices with as many informative as non-informative images, shuffled."""
    kinds = [np.flatnonzero(targets == k) for k in (0, 1)]
    size = max(map(len, kinds)) if balance == "oversample" else min(map(len, kinds))
    picked = [np.concatenate([rng.permutation(k) for _ in range(-(-size // len(k)))])[:size]
              for k in kinds]
    return rng.permutation(np.concatenate(picked))


@torch.no_grad()
def informative_probability(model: InformativityClassifier, images_u8: np.ndarray,
                            batch_size: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([
        model(from_uint8_images(images_u8[s:s + batch_size]))[:, INFORMATIVE_INDEX].exp().numpy()
        for s in range(0, len(images_u8), batch_size)])


def train_one(images: np.ndarray, targets: np.ndarray, cfg: InformativityConfig,
              rng: np.random.Generator) -> tuple[InformativityClassifier, dict[str, Any]]:
    """Train one class's classifier; returns it and its held-out figures."""
    train_idx, held_idx = split_holdout(targets, cfg.holdout, rng)
    model = InformativityClassifier(cfg.width, cfg.architecture)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    train_targets = torch.from_numpy(targets)
    for _ in range(cfg.epochs):
        model.train()
        order = train_idx[balanced_epoch(targets[train_idx], cfg.balance, rng)]
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two images
            loss = F.nll_loss(model(from_uint8_images(images[idx])), train_targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    predicted = informative_probability(model, images[held_idx]) >= 0.5
    truth = targets[held_idx] == 1
    recalls = [float((predicted[truth == k] == k).mean()) for k in (False, True)]
    return model, {"accuracy": float((predicted == truth).mean()),
                   "balanced_accuracy": float(np.mean(recalls)),
                   "n_train": int(len(train_idx)), "n_heldout": int(len(held_idx)),
                   "n_informative": int(targets.sum()),
                   "n_non_informative": int((targets == 0).sum())}


def check_out_dir(out: Path) -> None:
    """Refuse any ``--out`` but a new or empty folder or earlier classifiers (the whole
    folder is replaced, so a labels folder or anything else there would be lost)."""
    check_replaceable(out, "informativity classifiers", CLASSIFIERS_FORMAT,
                      never={"labels.json": "a labels folder", "index.json": "a samples folder"})


def train_classifiers(folders: list[str | Path], out: str | Path, cfg: InformativityConfig,
                      progress: bool = True) -> dict[str, Any]:
    if cfg.balance not in ("oversample", "subsample"):
        raise S2IError(f"--balance must be 'oversample' or 'subsample', got {cfg.balance!r}")
    if cfg.architecture not in CLASSIFIER_ARCHITECTURES:
        raise S2IError(f"--architecture must be one of {', '.join(CLASSIFIER_ARCHITECTURES)}, "
                       f"got {cfg.architecture!r}")
    if not 0.0 < cfg.holdout < 1.0:
        raise S2IError(f"--holdout must be between 0 and 1, got {cfg.holdout}")
    check_out_dir(Path(out))
    classes, per_class = collect_labelled(folders)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    report: dict[str, Any] = {}
    with atomic_dir(out, replace=True) as tmp:
        for k, name in enumerate(tqdm(classes, desc="informativity classifiers", unit="class",
                                      disable=not progress)):
            entries = per_class.get(k, [])
            targets = np.array([t for _, t in entries], dtype=np.int64)
            n_inf, n_non = int(targets.sum()), int((targets == 0).sum())
            if min(n_inf, n_non) < max(2, cfg.min_per_kind):
                report[name] = {"skipped": f"only {n_inf} informative and {n_non} "
                                f"non-informative labels (need {max(2, cfg.min_per_kind)} "
                                "of each)", "n_informative": n_inf, "n_non_informative": n_non}
                continue
            images = np.stack([load_png(path) for path, _ in entries])
            model, figures = train_one(images, targets, cfg, rng)
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            (tmp / f"class_{k}.pt").write_bytes(seal(buffer.getvalue()))
            report[name] = {"file": f"class_{k}.pt", **figures}
        trained = [r for r in report.values() if "file" in r]
        if not trained:
            raise S2IError("no class has enough labels of both kinds to train a classifier ("
                           + "; ".join(f"{c}: {r['skipped']}" for c, r in report.items()) + ")")
        manifest = {"format": CLASSIFIERS_FORMAT, "version": CLASSIFIERS_VERSION,
                    "architecture": cfg.architecture, "classes": classes,
                    "per_class": report, "config": asdict(cfg),
                    "labels_from": [str(Path(f).resolve()) for f in folders],
                    "mean_accuracy": float(np.mean([r["accuracy"] for r in trained]))}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def load_classifiers(folder: str | Path, architecture: str | None = None
                     ) -> tuple[list[str], dict[int, InformativityClassifier]]:
    """``classes`` and ``class index -> classifier`` (eval mode) from an OUT folder, built as
    the manifest's ``architecture`` says (a manifest without one predates the choice: "ours").
    ``architecture``, when given, must be the saved one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise S2IError(f"classifiers folder not found: {folder} (train them with `python -m "
                       "trainer informativity LABELS_DIR --out DIR`)")
    path = folder / "manifest.json"
    manifest = check_format(read_json(path, "informativity classifiers manifest"), path,
                            "informativity classifiers manifest", CLASSIFIERS_FORMAT,
                            CLASSIFIERS_VERSION, "retrain the classifiers")
    config, classes, per_class = (manifest.get(key) for key in ("config", "classes",
                                                                  "per_class"))
    width = config.get("width", 1.0) if isinstance(config, dict) else None
    if type(width) not in (int, float) or not 0 < width <= MAX_WIDTH \
            or not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) \
            or not isinstance(per_class, dict) \
            or not all(isinstance(e, dict) for e in per_class.values()):
        raise S2IError(f"informativity classifiers manifest {path} is damaged (expected "
                       f"config.width in (0, {MAX_WIDTH:g}], classes and per_class); "
                       "retrain the classifiers")
    saved = manifest.get("architecture", "ours")
    try:
        check_classifier_architecture(saved)
    except ValueError as exc:
        raise S2IError(f"{path}: {exc}; retrain the classifiers") from None
    if architecture is not None and architecture != saved:
        raise S2IError(f"the classifiers in {folder} are of architecture '{saved}', not the "
                       f"'{architecture}' asked for; retrain them with --architecture "
                       f"{architecture} or use them as they are")
    models: dict[int, InformativityClassifier] = {}
    for k, name in enumerate(classes):
        entry = per_class.get(name, {})
        if "file" not in entry:
            continue
        if not isinstance(entry["file"], str) or not _FILE.fullmatch(entry["file"]):
            raise S2IError(f"informativity classifiers manifest {path}: class {name!r} names "
                           f"no file of its folder ({str(entry['file'])[:80]!r}); retrain "
                           "the classifiers")
        model = InformativityClassifier(width, saved)
        path = folder / entry["file"]
        try:
            # every byte as written (one line naming the file), before anything is unpickled
            check_seal(path, "classifier", "retrain the classifiers")
            model.load_state_dict(read_state(path, "classifier"))
        except S2IError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on junk
            raise S2IError(f"classifier {path} is missing, damaged or not of the manifest's "
                           f"architecture '{saved}' ({type(exc).__name__}); retrain the "
                           "classifiers") from exc
        model.eval()
        models[k] = model
    return list(classes), models


def main(argv: list[str]) -> int:
    parser = config_parser(InformativityConfig, "python -m trainer informativity",
                           "Train the per-class informativity classifiers.")
    parser.add_argument("folders", nargs="+", help="labelled samples folders (index.json + "
                        "labels.json)")
    parser.add_argument("--out", required=True, help="output folder for the classifiers")
    args = parser.parse_args(argv)
    cfg = dataclass_from_args(InformativityConfig, args)
    manifest = train_classifiers(args.folders, args.out, cfg)
    print(f"{'class':<16} {'held-out acc':>12} {'balanced':>9} {'train':>6} {'held':>5}")
    for name, r in manifest["per_class"].items():
        if "file" in r:
            print(f"{name:<16} {r['accuracy']:>12.3f} {r['balanced_accuracy']:>9.3f} "
                  f"{r['n_train']:>6} {r['n_heldout']:>5}")
        else:
            print(f"{name:<16} skipped: {r['skipped']}")
    print(f"saved to {args.out} (mean held-out accuracy {manifest['mean_accuracy']:.3f})")
    return 0
