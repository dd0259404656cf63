"""Property-based fuzzing (Hypothesis) of the artifact readers: whatever a manifest.json or a
checkpoint file holds, ``load_export_manifest``, ``open_translator``, ``read_state`` and
``load_checkpoint`` either accept it or raise ``S2IError``; no other exception escapes.

CI runs the ``ci`` profile (fixed seed, 200 examples per test, tests/conftest.py); set
``S2I_HYPOTHESIS_PROFILE=deep`` for 5,000 random examples each."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_export import make_tiny_export
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import S2IError
from runtime.model.backends import open_translator
from runtime.model.manifest import load_export_manifest
from trainer.checkpoint import load_checkpoint, read_state, save_checkpoint, seal

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")   # crafted zips
# one fixture per module, reused by every example (Hypothesis forbids function-scoped ones)
SLOW = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=20), st.sampled_from(["", "batch", "../x", "\0", "mask0"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)


def only_s2i_errors(call: Callable[[], Any]) -> bool:
    """True if ``call`` passed, False if it raised S2IError; anything else fails the test."""
    try:
        call()
    except S2IError as exc:
        assert "\n" not in str(exc)
        return False
    return True


# --- manifest.json ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_export(tmp_path_factory.mktemp("fuzz") / "export", embedding_dim=16)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (where a fuzzed value can be put)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def replaced(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    if not path:
        return new
    value = json.loads(json.dumps(value))
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return value


def check_manifest(export: Path, text: bytes) -> None:
    (export / "manifest.json").write_bytes(text)
    if only_s2i_errors(lambda: load_export_manifest(export, verify_hashes=False)) \
            and only_s2i_errors(lambda: load_export_manifest(export)):
        only_s2i_errors(lambda: open_translator(export, "onnxruntime-cpu", threads=1))


@pytest.fixture(scope="module")
def fuzz_dir(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the export whose manifest.json every example overwrites."""
    import shutil

    folder = tmp_path_factory.mktemp("fuzzed") / "export"
    shutil.copytree(export, folder)
    return folder


@SLOW
@given(data=st.data())
def test_fuzzed_manifest_values(export: Path, fuzz_dir: Path, data: st.DataObject) -> None:
    manifest = json.loads((export / "manifest.json").read_text())
    path = data.draw(st.sampled_from(paths(manifest)), label="path")
    delete = bool(path) and data.draw(st.booleans(), label="delete")
    new = None if delete else data.draw(json_values, label="value")
    fuzzed = replaced(manifest, path, new, delete)
    check_manifest(fuzz_dir, json.dumps(fuzzed).encode())


@SLOW
@given(data=st.data())
def test_fuzzed_manifest_bytes(export: Path, fuzz_dir: Path, data: st.DataObject) -> None:
    text = (export / "manifest.json").read_bytes()
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(text)), label="at")
        cut = data.draw(st.integers(0, 8), label="cut")
        insert = data.draw(st.one_of(st.binary(max_size=8), st.sampled_from(
            [b"[" * 5000, b"9" * 5000, b"\\u0000", b"\\ud800", b"NaN", b"1e999", b'"'])),
            label="insert")
        text = text[:at] + insert + text[at + cut:]
    check_manifest(fuzz_dir, text)


# --- checkpoints -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """torch.save bytes of a small plain checkpoint (unsealed)."""
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    save_checkpoint(path, {"stage": "gan", "embedding_dim": 16, "width": 0.125,
                           "front_end": {}, "classes": ["a", "b"], "epoch": 1,
                           "models": {"w": torch.arange(6.0).reshape(2, 3)}})
    data = path.read_bytes()
    return data[:-2 - len(data.split(b"s2i-sha256:")[-1]) - len(b"s2i-sha256:")] + b"\0\0"


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed-ckpt")


def check_checkpoint(folder: Path, data: bytes) -> None:
    path = folder / "c.pt"
    path.write_bytes(data)
    only_s2i_errors(lambda: read_state(path))
    try:
        path.write_bytes(seal(data))
    except RuntimeError:            # no plain zip at the end: load it unsealed
        pass
    only_s2i_errors(lambda: load_checkpoint(path))


@SLOW
@given(data=st.data())
def test_fuzzed_checkpoint_bytes(saved: bytes, ckpt_dir: Path, data: st.DataObject) -> None:
    raw = data.draw(st.booleans(), label="raw")
    if raw:
        blob = data.draw(st.binary(max_size=512), label="bytes")
    else:                            # a real archive with a few bytes changed
        blob = saved
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            at = data.draw(st.integers(0, len(blob) - 23), label="at")
            value = data.draw(st.binary(min_size=1, max_size=4), label="value")
            blob = blob[:at] + value + blob[at + len(value):]
    check_checkpoint(ckpt_dir, blob)


@SLOW
@given(data=st.data())
def test_fuzzed_checkpoint_zip_structure(saved: bytes, ckpt_dir: Path,
                                         data: st.DataObject) -> None:
    with zipfile.ZipFile(io.BytesIO(saved)) as archive:
        real = {info.filename: archive.read(info) for info in archive.infolist()}
    names = st.one_of(st.sampled_from(sorted(real)), st.text(max_size=20),
                      st.sampled_from(["archive/../x", "/archive/data.pkl", "other/data.pkl",
                                       "archive/data/99"]))
    entries = data.draw(st.lists(st.tuples(
        names, st.one_of(st.sampled_from(list(real.values())), st.binary(max_size=64)),
        st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
        st.integers(0, 7)), max_size=10), label="entries")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content, method, grow in entries:
            if grow == 7:            # a small bomb: 2 MiB of zeros, deflated to 2 kB
                content, method = bytes(2 << 20), zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(name or "x")
            try:
                archive.writestr(info, content, compress_type=method)
            except (ValueError, UnicodeEncodeError):   # a name zipfile cannot write
                pass
    check_checkpoint(ckpt_dir, buffer.getvalue())


checkpoint_fields = st.fixed_dictionaries({}, optional={
    "stage": st.one_of(st.sampled_from(["gan", "audio"]), json_values),
    "embedding_dim": st.one_of(st.integers(-5, 10**30), json_values),
    "width": st.one_of(st.floats(), json_values),
    "encoder_width": json_values,
    "front_end": st.one_of(st.just({}), st.dictionaries(
        st.sampled_from(["version", "sample_rate", "n_fft", "hop_ms", "n_mels", "fmin", "fmax",
                         "db_min", "window_seconds", "amin"]), scalars, max_size=3),
        json_values),
    "classes": json_values, "epoch": json_values, "step": json_values,
    "models": st.one_of(json_values, st.just({"encoder": {}, "generator": {}})),
    "config": json_values, "generator_transitions": json_values,
})


@SLOW
@given(state=checkpoint_fields)
def test_fuzzed_checkpoint_contents(ckpt_dir: Path, state: dict[str, Any]) -> None:
    path = ckpt_dir / "fields.pt"
    save_checkpoint(path, state)
    only_s2i_errors(lambda: load_checkpoint(path))
    only_s2i_errors(lambda: load_checkpoint(path, stage="gan", embedding_dim=16, width=0.125))
