"""Automatic informative / non-informative labels, for sets no person labels (the demo).

The rule: a small independent 5-class CNN is trained on the store's REAL images (train
split; its accuracy on the real images of the validation split is reported). A
generated image is *informative* when that classifier gives the image's sound class a
probability of at least ``threshold`` (default 0.5): a viewer who knows only the real
scenes would recognise the class in it. Everything else is *non-informative*.

This is a stand-in for human judgement, fitting the demo set whose scenes are drawn
from the sound; for real data, label with the page (``python -m trainer label DIR``).
Labels a person gave are kept; earlier automatic labels are replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.errors import S2IError
from trainer.data.store import Store
from trainer.evaluate.real_classifier import class_probabilities, train_real_classifier
from trainer.evaluate.sample_files import INFORMATIVE, NON_INFORMATIVE, LabelBook


def load_png(path: Path) -> np.ndarray:
    """A generated image of a samples folder as uint8 ``[H, W, 3]``."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise S2IError(f"image {path} is missing or unreadable: {exc}") from exc


def auto_label(folder: str | Path, store_path: str | Path, threshold: float = 0.5,
               epochs: int = 8, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Label every image of ``folder`` that no person labelled; returns a summary."""
    if not 0.0 < threshold < 1.0:
        raise S2IError(f"--threshold must be between 0 and 1, got {threshold}")
    book = LabelBook(folder)
    store = Store(store_path)
    if store.classes != book.index["classes"]:
        raise S2IError(f"store {store.path} has classes {store.classes}; the samples in "
                       f"{folder} are of {book.index['classes']}")
    model, val_accuracy = train_real_classifier(store, epochs=epochs, seed=seed,
                                                progress=progress)
    todo = [it for it in book.index["items"]
            if book.labels.get(it["file"], {}).get("by") != "person"]
    changes: dict[str, dict[str, Any] | None] = {}
    rule = f"real-image classifier p(sound class) >= {threshold}"
    for start in range(0, len(todo), 256):
        chunk = todo[start:start + 256]
        images = np.stack([load_png(book.folder / it["file"]) for it in chunk])
        probs = class_probabilities(model, images)
        for it, p in zip(chunk, probs, strict=True):
            score = float(p[it["class_index"]])
            changes[it["file"]] = {"label": INFORMATIVE if score >= threshold else
                                   NON_INFORMATIVE, "by": "auto", "score": round(score, 4),
                                   "rule": rule}
    if changes:
        book.update(changes)
    per_class: dict[str, dict[str, int]] = {}
    for it in book.index["items"]:
        entry = book.labels.get(it["file"])
        if entry:
            counts = per_class.setdefault(it["class"], {INFORMATIVE: 0, NON_INFORMATIVE: 0})
            counts[entry["label"]] += 1
    return {"folder": str(book.folder), "auto_labelled": len(changes),
            "kept_person_labels": len(book.index["items"]) - len(todo),
            "real_classifier_val_accuracy": val_accuracy, "threshold": threshold,
            "per_class": per_class}
