"""The files of a samples folder, torch-free: ``index.json``/``index.csv`` (written by
``python -m trainer sample``) and ``labels.json`` (the labelling page, automatic labels).

Everything that reads or writes them goes through here: the labelling page (which must
start without PyTorch), automatic labels, the informativity classifiers, sampling.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path
from typing import Any

from runtime.artifacts import atomic_write_bytes, atomic_write_json, check_format, read_json
from runtime.errors import S2IError

SAMPLES_FORMAT = "s2i-samples"
SAMPLES_VERSION = 1
INDEX_FIELDS = ("file", "sound_id", "class", "class_index", "checkpoint", "model", "epoch",
                "sample", "real")
LABELS_FORMAT = "s2i-labels"
LABELS_VERSION = 1
LABELS_FILE = "labels.json"
INFORMATIVE = "informative"
NON_INFORMATIVE = "non-informative"
LABEL_VALUES = (INFORMATIVE, NON_INFORMATIVE)


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_labels(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``file -> {"label", "by", "time", ...}`` from ``folder/labels.json`` ({} if none yet)."""
    path = Path(folder) / LABELS_FILE
    if not path.exists():
        return {}
    data = check_format(read_json(path, "labels file"), path, "labels file", LABELS_FORMAT,
                        LABELS_VERSION)
    if not isinstance(data.get("labels"), dict):
        raise S2IError(f"{path} is damaged: it has no 'labels' object")
    for file, entry in data["labels"].items():
        if not isinstance(entry, dict) or entry.get("label") not in LABEL_VALUES:
            raise S2IError(f"{path}: entry {file!r} has no valid label (expected one of "
                           f"{', '.join(LABEL_VALUES)})")
    return data["labels"]


class LabelBook:
    """The labels of one samples folder; every change is written at once (atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.files = [item["file"] for item in self.index["items"]]
        self.known = set(self.files)
        self.served = self.known | {item["real"] for item in self.index["items"] if item["real"]}
        self.labels = read_labels(self.folder)
        self.lock = threading.Lock()

    def set(self, file: str, label: str | None, by: str = "person",
            extra: dict[str, Any] | None = None) -> None:
        """Give ``file`` a label (None clears it) and save."""
        self.update({file: None if label is None else {"label": label, "by": by,
                                                       **(extra or {})}})

    def update(self, changes: dict[str, dict[str, Any] | None]) -> None:
        """Apply several changes (``file -> entry`` or None to clear), then save once.
        The labels in memory change only once the file is written (all or nothing)."""
        with self.lock:
            labels = dict(self.labels)
            for file, entry in changes.items():
                if file not in self.known:
                    raise S2IError(f"{file!r} is not an image of {self.folder}/index.json")
                if entry is None:
                    labels.pop(file, None)
                    continue
                if entry.get("label") not in LABEL_VALUES:
                    raise S2IError(f"label for {file!r} must be one of {', '.join(LABEL_VALUES)}"
                                   f", got {entry.get('label')!r}")
                labels[file] = {"time": now_utc(), **entry}
            atomic_write_json(self.folder / LABELS_FILE,
                              {"format": LABELS_FORMAT, "version": LABELS_VERSION,
                               "labels": labels})
            self.labels = labels

    def counts(self) -> dict[str, int]:
        with self.lock:
            values = [e["label"] for f, e in self.labels.items() if f in self.known]
        return {"total": len(self.files), "labelled": len(values),
                INFORMATIVE: values.count(INFORMATIVE),
                NON_INFORMATIVE: values.count(NON_INFORMATIVE)}

    def state(self) -> dict[str, Any]:
        with self.lock:
            labels = {f: e["label"] for f, e in self.labels.items() if f in self.known}
        items = [{k: it[k] for k in ("file", "sound_id", "class", "epoch", "sample", "real",
                                     "model")} for it in self.index["items"]]
        return {"items": items, "labels": labels, "split": self.index.get("split")}




def read_index(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/index.json`` written by :func:`write_samples`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise S2IError(f"samples folder not found: {folder} (write one with "
                       "`python -m trainer sample RUN --store S --out DIR`)")
    path = folder / "index.json"
    index = check_format(read_json(path, "samples index"), path, "samples index",
                         SAMPLES_FORMAT, SAMPLES_VERSION,
                         "expected the output of `python -m trainer sample`")
    if not isinstance(index.get("items"), list):
        raise S2IError(f"{path} is damaged: it has no 'items' list")
    for item in index["items"]:     # each names an image of this folder, read from it later
        file = item.get("file") if isinstance(item, dict) else None
        if not isinstance(file, str) or not file.isprintable() or not 0 < len(file) <= 1024 \
                or file.startswith("/") or "\\" in file or ".." in file.split("/"):
            raise S2IError(f"{path} is damaged: item {str(item)[:80]} names no image file of "
                           "the folder (expected {\"file\": \"NAME.png\", ...})")
    if not isinstance(index.get("classes", []), list):
        raise S2IError(f"{path} is damaged: its 'classes' is no list")
    return index


def write_index(folder: Path, index: dict[str, Any]) -> None:
    """``index.json`` and ``index.csv`` (one row per item) into ``folder``."""
    atomic_write_json(folder / "index.json", index)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for item in index["items"]:
        writer.writerow({k: "" if item[k] is None else item[k] for k in INDEX_FIELDS})
    atomic_write_bytes(folder / "index.csv", text.getvalue().encode())
