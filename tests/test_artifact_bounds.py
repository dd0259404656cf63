"""Issue 22, artifact side: every file S2I reads (manifests, stores, checkpoints) refuses bad
bytes in one line. Zip bombs and crafted checkpoint fields are refused before anything is
built; hostile JSON (NUL, 5,000 digits, deep nesting) is one ``S2IError`` naming the file;
``export --verify`` runs the runtime's checks; a manifest's shapes are the graph's; SIGTERM or
Ctrl-C during ``python -m export`` leaves no ``.partial`` folder and no traceback."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_export import make_tiny_checkpoint, shared_export

from export.translator import ExportConfig, export_translator
from export.verify import verify_export
from runtime.artifacts import load_json
from runtime.errors import S2IError
from runtime.model.backends import open_translator
from runtime.model.manifest import load_export_manifest
from trainer.checkpoint import load_checkpoint, load_translator, read_state, save_checkpoint, seal
from trainer.data.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_export(tmp_path_factory, embedding_dim=16, fused=True)    # copied to edit


def one_line(call: Callable[[], Any], match: str) -> str:
    with pytest.raises(S2IError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def edited(export: Path, to: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``export`` whose manifest ``change`` edited (the string "BIG" becomes a
    5,000-digit number, which json.dumps cannot write)."""
    shutil.copytree(export, to)
    manifest = json.loads((to / "manifest.json").read_text())
    change(manifest)
    (to / "manifest.json").write_text(json.dumps(manifest).replace('"BIG"', "9" * 5000))
    return to


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


# --- checkpoints: zip bombs and crafted fields -------------------------------------------

def zip_bytes(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return seal(buffer.getvalue())


def test_sealed_zip_bomb_is_refused_before_torch_load(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's 1.5 MB bomb used 3.3 GB: declared sizes are checked before inflating."""
    bomb = tmp_path / "gan_last.pt"
    bomb.write_bytes(zip_bytes([("archive/data.pkl", bytes(16 << 20), zipfile.ZIP_DEFLATED)]))
    assert bomb.stat().st_size < 100_000
    result = run_export(str(bomb), "--out", str(tmp_path / "out"), "--no-tensorrt")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "zip bomb" in lines[0] and str(bomb) in lines[0]

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("torch.load reached")
    monkeypatch.setattr(torch, "load", never)
    one_line(lambda: load_checkpoint(bomb), r"declares 16777216 bytes .* zip bomb")


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("entries, match", [
    ([("archive/data.pkl", b"x", 0), ("archive/data.pkl", b"y", 0)], "names a zip entry twice"),
    ([("archive/../evil", b"x", 0)], "zip entry named"),
    ([("/abs/data.pkl", b"x", 0)], "zip entry named"),
    ([("archive/data.pkl", b"x", 0), ("other/data/0", b"y", 0)], "zip entry named"),
    ([("archive/a\x01b", b"x", 0)], "zip entry named"),
    ([], "has 0 zip entries"),
])
def test_crafted_zip_structure_is_refused(tmp_path: Path, entries: list, match: str) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(zip_bytes(entries))
    assert str(path) in one_line(lambda: load_checkpoint(path), match)


def test_too_many_zip_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr("trainer.checkpoint.MAX_ENTRIES", 3)
    path = tmp_path / "c.pt"
    path.write_bytes(zip_bytes([(f"archive/data/{i}", b"x", 0) for i in range(4)]))
    one_line(lambda: read_state(path), "has 4 zip entries")


@pytest.mark.parametrize("field, value, match", [
    ("epoch", 2**70, "epoch should be a count, got an integer of 71 bits"),
    ("embedding_dim", "512", "embedding_dim should be an integer 4..4096"),
    ("embedding_dim", 10**9, "embedding_dim should be an integer 4..4096"),
    ("width", 64.0, r"width should be a number in \(0, 2\]"),
    ("classes", [1, 2], "classes should be a list of class names"),
], ids=["huge-epoch", "text-dim", "huge-dim", "huge-width", "int-classes"])
def test_crafted_checkpoint_fields_are_refused_before_networks_are_built(
        tmp_path: Path, field: str, value: Any, match: str) -> None:
    good = make_tiny_checkpoint(tmp_path / "good.pt", embedding_dim=16)
    state = read_state(good)
    state[field] = value
    path = tmp_path / "gan_last.pt"
    save_checkpoint(path, state)
    one_line(lambda: load_translator(path), match)
    one_line(lambda: export_translator(ExportConfig(path, tmp_path / "out", tensorrt=False)), match)


def test_deeply_nested_checkpoint_contents_are_refused(tmp_path: Path) -> None:
    nested: Any = "leaf"
    for _ in range(200):
        nested = [nested]
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"stage": "gan", "front_end": {}, "config": nested})
    one_line(lambda: load_checkpoint(path), "nests more than 32 levels")


# --- JSON files: one safe reader --------------------------------------------------------

HOSTILE = {
    "NUL in a model file name": lambda m: m["models"]["encoder"].update(file="enc\0oder.onnx"),
    "5,000-digit number": lambda m: m.update(embedding_dim="BIG"),
    "lone surrogate": lambda m: m["models"]["encoder"].update(file="\ud800.onnx"),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_manifest_values_are_one_line(export: Path, tmp_path: Path, what: str) -> None:
    bad = edited(export, tmp_path / "bad", HOSTILE[what])
    message = one_line(lambda: load_export_manifest(bad), "manifest.json")
    assert str(bad / "manifest.json") in message
    one_line(lambda: open_translator(bad, "onnxruntime-cpu"), "manifest.json")


@pytest.mark.parametrize("text, match", [
    ('{"a": ' + "9" * 5000 + "}", "integer of 5000 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply|nests more than"),
    ("[" * 40 + "]" * 40, "nests more than 32 levels"),
    (b'{"a": "\xff"}', "not UTF-8"),
    ('{"a": "x\\u0000y"}', "NUL"),
    ('{"a": NaN', "not valid JSON"),
], ids=["digits", "deep", "nested-40", "not-utf8", "nul", "cut-short"])
def test_every_artifact_json_reader_is_one_line(export: Path, tmp_path: Path,
                                                text: str | bytes, match: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    (folder / "manifest.json").write_bytes(data)
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_bytes(data)
    for call in (lambda: load_export_manifest(folder), lambda: Store(store),
                 lambda: load_json(folder / "manifest.json", "file")):
        one_line(call, match)


def test_oversized_json_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2048 + b"{}")
    one_line(lambda: load_json(path, "labels file", max_bytes=1024), "larger than")


def test_store_ids_go_through_the_safe_reader(tmp_path: Path) -> None:
    from test_store import write_small_store

    store = tmp_path / "store"
    write_small_store(store)
    split = next(p for p in store.iterdir() if (p / "ids.json").is_file())
    (split / "ids.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line(lambda: Store(store).split(split.name), "ids.json")


DEEP = "[" * 100_000 + "]" * 100_000


def run_config(folder: Path) -> Any:
    from trainer.demo import DemoConfig
    from trainer.run import RunFolder

    (folder / "config_demo.json").write_text(DEEP)
    return RunFolder(folder).load_config(DemoConfig, "demo")


def run_metrics(folder: Path) -> Any:
    from trainer.run import RunFolder

    (folder / "metrics.json").write_text(DEEP)
    return RunFolder(folder).metrics()


def samples_index(folder: Path) -> Any:
    from trainer.evaluate.sample_files import read_index

    (folder / "index.json").write_text(DEEP)
    return read_index(folder)


def labels_file(folder: Path) -> Any:
    from trainer.evaluate.sample_files import read_labels

    (folder / "labels.json").write_text(DEEP)
    return read_labels(folder)


def classifiers(folder: Path) -> Any:
    from trainer.evaluate.informativity import load_classifiers

    (folder / "manifest.json").write_text(DEEP)
    return load_classifiers(folder)


@pytest.mark.parametrize("read", [run_config, run_metrics, samples_index, labels_file,
                                  classifiers])
def test_every_trainer_json_file_goes_through_the_safe_reader(tmp_path: Path,
                                                              read: Callable) -> None:
    one_line(lambda: read(tmp_path), rf"{tmp_path}/\w+\.json is not valid S2I JSON: nested")


@pytest.mark.parametrize("items", [[{"file": "../../etc/passwd"}], [{"file": "/etc/x.png"}],
                                   [3], [{"file": ["a"]}]])
def test_samples_index_items_name_files_of_the_folder(tmp_path: Path, items: list) -> None:
    from trainer.evaluate.sample_files import read_index

    (tmp_path / "index.json").write_text(json.dumps(
        {"format": "s2i-samples", "version": 1, "items": items}))
    one_line(lambda: read_index(tmp_path), "names no image file of the folder")


@pytest.mark.parametrize("change", [
    lambda m: m.update(config=[]), lambda m: m["config"].update(width=10**6),
    lambda m: m.update(classes="ab"), lambda m: m["per_class"].update(a={"file": "../x.pt"}),
])
def test_damaged_classifiers_manifest_is_one_line(tmp_path: Path,
                                                  change: Callable[[dict], Any]) -> None:
    from trainer.evaluate.informativity import load_classifiers

    manifest = {"format": "s2i-informativity", "version": 2, "classes": ["a"],
                "per_class": {"a": {"file": "class_0.pt"}}, "config": {"width": 0.125}}
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    one_line(lambda: load_classifiers(tmp_path), "classifiers manifest")


# --- export --verify runs the runtime's checks; manifest shapes are the graph's --------

def test_verify_refuses_what_the_runtime_refuses(export: Path, tmp_path: Path) -> None:
    """embedding_dim 10**9 passed --verify; the runtime refused it."""
    bad = edited(export, tmp_path / "bad", lambda m: m.update(embedding_dim=10**9))
    one_line(lambda: open_translator(bad, "onnxruntime-cpu"), "the manifest says 1000000000")
    one_line(lambda: verify_export(bad, log=lambda _: None), "the manifest says 1000000000")
    result = run_export("--verify", str(bad))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, \
        result.stderr


def test_verify_shows_onnx_runtime_errors_as_one_line(export: Path, tmp_path: Path) -> None:
    """A checkpoint of another D (no sha256 recorded to catch it): ONNX Runtime refuses the
    feed; that was a traceback."""
    bad = edited(export, tmp_path / "bad", lambda m: m["checkpoint"].pop("sha256"))
    other = make_tiny_checkpoint(tmp_path / "other.pt", embedding_dim=32)
    message = one_line(lambda: verify_export(bad, other, log=lambda _: None),
                       "running its models failed")
    assert str(bad) in message


@pytest.mark.parametrize("shape, match", [
    (["batch", 3, 100000, 100000], r"is no batch of RGB images .* H, W <= 4096"),
    (["batch", 100000, 3], "is no batch of RGB images"),
    (["batch", 3, 2**40, 96], r"sizes 0..2\*\*31-1"),
])
def test_announced_image_shape_is_bounded(export: Path, tmp_path: Path, shape: list,
                                          match: str) -> None:
    bad = edited(export, tmp_path / "bad",
                 lambda m: m["models"]["generator"]["outputs"][0].update(shape=shape))
    one_line(lambda: load_export_manifest(bad), match)


@pytest.mark.parametrize("graph, side, change", [
    ("generator", "outputs", lambda io: io[0].update(shape=["batch", 3, 48, 48])),
    ("encoder", "outputs", lambda io: io[0].update(shape=[7, 16])),
    ("encoder", "inputs", lambda io: io[0].update(name="audio")),
    ("translator", "outputs", lambda io: io.pop()),
])
def test_manifest_shapes_are_the_graphs(export: Path, tmp_path: Path, graph: str, side: str,
                                        change: Callable[[list], Any]) -> None:
    bad = edited(export, tmp_path / "bad", lambda m: change(m["models"][graph][side]))
    load_export_manifest(bad)          # well formed ...
    one_line(lambda: open_translator(bad, "onnxruntime-cpu"),   # ... but not the graph's
             rf"{graph}.onnx: the manifest's {side} .* are not the graph's")
    one_line(lambda: verify_export(bad, log=lambda _: None), "are not the graph's")


# --- signals during python -m export ---------------------------------------------------

@pytest.mark.parametrize("signum, code, line", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_during_export_removes_the_partial_folder(tmp_path: Path, signum: int,
                                                         code: int, line: str) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "gan_last.pt", embedding_dim=16)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "export", str(checkpoint), "--out",
                                str(out), "--no-tensorrt"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob(".out.*.partial")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.02)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code and stderr.strip().splitlines() == [line], stderr
    assert not list(tmp_path.glob(".out*")) and not out.exists()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc maps")
def test_ctrl_c_while_torch_is_imported_prints_no_traceback(tmp_path: Path) -> None:
    """Ctrl-C while torch was being imported (at module level, before ``run_cli``) was a
    traceback. The signal is sent once torch's libraries are mapped into the process (its
    import takes a while longer); an earlier one would hit Python's own start-up."""
    process = subprocess.Popen([sys.executable, "-m", "export", str(tmp_path / "none.pt")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    maps = Path(f"/proc/{process.pid}/maps")
    try:
        deadline = time.monotonic() + 120
        while "libtorch" not in maps.read_text():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "torch was never imported"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 130 and stderr.strip().splitlines() == ["interrupted"], stderr
