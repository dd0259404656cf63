"""Dataset stores (write, read, atomicity, clear errors) and the built-in demo set."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile

from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, from_uint8
from trainer.data.demo_data import (
    DEMO_CLASSES,
    build_demo_store,
    clip_params,
    demo_audio,
    demo_clip,
    render_scene,
    write_demo_wav,
)
from trainer.data.store import Store, StoreWriter

CFG = FrontEndConfig()


def write_small_store(path: Path, n: int = 12, capacity: int | None = None,
                      images: bool = True) -> None:
    rng = np.random.default_rng(0)
    with StoreWriter(path, ["a", "b", "c"], CFG, has_images=images,
                     source={"kind": "test"}) as writer:
        for split, count in (("train", n), ("val", 3)):
            out = writer.open_split(split, capacity or count)
            for i in range(count):
                spec = np.full((128, 100), i, np.uint8)
                image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) if images else None
                out.append(spec, i % 3, i // 2, f"{split}{i}", image)
        writer.skip("broken input", "x")
        writer.skip("broken input", "y")


def test_round_trip_with_shrink(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_small_store(path, n=10, capacity=25)             # fewer items than reserved
    store = Store(path, verify_checksums=True)
    assert store.classes == ["a", "b", "c"] and store.has_images and store.front_end == CFG
    assert store.splits == ["train", "val"]
    train = store.split("train")
    assert len(train) == 10
    assert isinstance(train.spectrograms, np.memmap) and train.spectrograms.shape == (10, 128, 100)
    assert train.spectrograms.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.images is not None and train.images.shape == (10, 96, 96, 3)
    assert [int(train.spectrograms[i, 5, 5]) for i in range(10)] == list(range(10))
    assert train.labels.tolist() == [i % 3 for i in range(10)]
    assert train.videos.tolist() == [i // 2 for i in range(10)]
    assert train.ids[3] == "train3"
    info = store.manifest["splits"]["train"]
    assert info["count"] == 10 and info["per_class"] == [4, 3, 3] and info["videos"] == 5
    assert store.manifest["skipped"] == {"broken input": 2}
    assert set(store.manifest["checksums"]) >= {"train/spectrograms.npy", "val/ids.json"}
    assert "train: 10 items" in store.describe()
    assert len(store.fingerprint) == 16
    copy = pickle.loads(pickle.dumps(store))                # small: memmaps reopened lazily
    assert len(pickle.dumps(store)) < 20_000 and len(copy.split("train")) == 10


def test_audio_only_store(tmp_path: Path) -> None:
    write_small_store(tmp_path / "s", images=False)
    split = Store(tmp_path / "s").split("train")
    assert split.images is None and len(split) == 12
    assert not (tmp_path / "s" / "train" / "images.npy").exists()


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="midway"):
        with StoreWriter(path, ["a"], CFG, has_images=False, source={}) as writer:
            out = writer.open_split("train", 5)
            out.append(np.zeros((128, 100), np.uint8), 0, 0, "x")
            raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_old_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_small_store(path)
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(S2IError, match="empty"):
        with StoreWriter(path, ["a"], CFG, has_images=False, source={}) as writer:
            writer.open_split("train", 5)                   # nothing appended: empty split
    assert (path / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    Store(path, verify_checksums=True)


def test_writer_rejects_bad_items(tmp_path: Path) -> None:
    with pytest.raises(S2IError, match="uint8"):
        with StoreWriter(tmp_path / "s", ["a"], CFG, has_images=False, source={}) as writer:
            writer.open_split("train", 2).append(np.zeros((128, 99), np.uint8), 0, 0, "x")
    with pytest.raises(S2IError, match="reserved"):
        with StoreWriter(tmp_path / "s", ["a"], CFG, has_images=False, source={}) as writer:
            out = writer.open_split("train", 1)
            for _ in range(2):
                out.append(np.zeros((128, 100), np.uint8), 0, 0, "x")
    assert not (tmp_path / "s").exists()


def test_balance_keeps_equal_counts(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s", ["a", "b"], CFG, has_images=False, source={}) as writer:
        out = writer.open_split("train", 10)
        for i in range(10):
            out.append(np.full((128, 100), i, np.uint8), int(i >= 7), i, f"i{i}")
        assert writer.balance(seed=1) == {"train": 4}
    split = Store(tmp_path / "s").split("train")
    assert np.bincount(split.labels).tolist() == [3, 3]
    # rows stay paired with their labels/ids after compaction
    for i in range(len(split)):
        assert split.ids[i] == f"i{int(split.spectrograms[i, 0, 0])}"


def test_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(S2IError, match="store not found"):
        Store(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(S2IError, match="not a dataset store"):
        Store(tmp_path / "plain")
    path = tmp_path / "store"
    write_small_store(path)
    manifest = json.loads((path / "manifest.json").read_text())
    with pytest.raises(S2IError, match="no split 'test'"):
        Store(path).split("test")

    (path / "manifest.json").write_text("{not json")
    with pytest.raises(S2IError, match="not valid JSON"):
        Store(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(S2IError, match="not an S2I store"):
        Store(path)
    broken = dict(manifest)
    del broken["classes"]
    (path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(S2IError, match="damaged.*classes"):
        Store(path)
    empty = json.loads(json.dumps(manifest))
    empty["splits"]["val"]["count"] = 0
    (path / "manifest.json").write_text(json.dumps(empty))
    with pytest.raises(S2IError, match="empty"):
        Store(path).split("val")

    (path / "manifest.json").write_text(json.dumps(manifest))
    np.save(path / "val" / "labels.npy", np.zeros(2, np.int64))          # wrong length
    with pytest.raises(S2IError, match="labels.npy"):
        Store(path).split("val")
    with pytest.raises(S2IError, match="sha256"):
        Store(path, verify_checksums=True)
    (path / "train" / "spectrograms.npy").unlink()
    with pytest.raises(S2IError, match="missing"):
        Store(path).split("train")


# ----------------------------------------------------------------------------- demo set

def test_demo_clip_is_deterministic_and_well_formed() -> None:
    audio, image = demo_clip(2, seed=5)
    again_audio, again_image = demo_clip(2, seed=5)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
    assert np.array_equal(audio, again_audio) and np.array_equal(image, again_image)
    other_audio, other_image = demo_clip(2, seed=6)
    assert not np.array_equal(audio, other_audio) and not np.array_equal(image, other_image)
    assert 0.3 < np.abs(audio).max() <= 0.9 + 1e-6


def test_demo_scene_follows_the_sound() -> None:
    """Within a class, what is heard changes what is drawn (one factor at a time)."""
    dog = clip_params(1, seed=3)
    dog.values["barks"] = 1
    one = render_scene(dog)
    dog.values["barks"] = 4
    four = render_scene(dog)
    assert not np.array_equal(one, four)
    baby = clip_params(0, seed=3)
    heights = []
    for pitch in (320.0, 620.0):
        baby.values["pitch"] = pitch
        skin = np.all(np.abs(render_scene(baby).astype(int) - [255, 214, 176]) < 40, axis=-1)
        heights.append(np.argwhere(skin)[:, 0].mean())
    assert heights[1] < heights[0] - 10                     # higher pitch: head drawn higher


def test_demo_store_is_learnable_and_split_by_video(tmp_path: Path) -> None:
    path = build_demo_store(tmp_path / "demo", n_per_class_train=30, n_val=10, n_test=10,
                            seed=0, progress=False)
    store = Store(path, verify_checksums=True)
    assert store.classes == list(DEMO_CLASSES) and store.has_images
    assert store.manifest["splits"]["train"]["per_class"] == [30] * 5
    train, test = store.split("train"), store.split("test")
    assert not set(train.videos.tolist()) & set(test.videos.tolist())
    # across classes: nearest class mean of the band profiles recognises the test set
    def profile(specs: np.ndarray) -> np.ndarray:
        x = from_uint8(specs)
        x = x - x.mean(axis=(1, 2), keepdims=True)          # level aside: loudness varies
        return np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)

    feats = profile(train.spectrograms)
    means = np.stack([feats[train.labels == k].mean(0) for k in range(5)])
    test_feats = profile(test.spectrograms)
    guess = np.argmin(((test_feats[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(guess == test.labels) > 0.8                 # chance: 0.2
    # within each class: louder sound, brighter scene
    assert train.images is not None
    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x))

    follow = []
    for k in range(5):
        rows = train.labels == k
        level = np.percentile(from_uint8(train.spectrograms[rows]).reshape(30, -1), 99, axis=1)
        brightness = train.images[rows].mean(axis=(1, 2, 3))
        follow.append(np.corrcoef(ranks(level), ranks(brightness))[0, 1])
    assert min(follow) > 0.25 and np.mean(follow) > 0.5, f"rank correlations {follow}"
    # same seed, same bytes
    again = build_demo_store(tmp_path / "again", n_per_class_train=30, n_val=10, n_test=10,
                             seed=0, progress=False)
    assert Store(again).manifest["checksums"] == store.manifest["checksums"]


def test_demo_wav(tmp_path: Path) -> None:
    labels = write_demo_wav(tmp_path / "demo.wav", seconds=3.5, seed=1)
    audio, rate = soundfile.read(tmp_path / "demo.wav", dtype="float32")
    assert rate == 16000 and audio.shape == (56000,) and labels == [0, 1, 2, 3]
    raw, _ = demo_audio(3.5, seed=1)
    assert np.abs(audio - raw).max() < 1e-3
