"""``python -m trainer prepare`` from every source, on data each test makes itself
(real mp4 files written by real encoders, JPG folders and archives, binary batches), and
on the real s2i_data validation archive when it is present."""

from __future__ import annotations

import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.frontend import FrontEndConfig
from trainer.__main__ import main as trainer_main
from trainer.data.prepare import main as prepare_main
from trainer.data.store import Store

REAL_VAL = Path(__file__).resolve().parents[2] / "shared/data/vegas-spectrograms/val.tar.gz"
SECOND_COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]


# ------------------------------------------------------------------ making test data

def write_mp4(path: Path, seconds: float, freq: float | None, with_video: bool = True,
              rate: int = 22050, fps: int = 10) -> None:
    """A real mp4: H.264 video whose colour changes every second + stereo AAC audio.

    ``freq=None`` writes no audio track; ``freq=0`` writes an all-zero (silent) track.
    """
    import av

    with av.open(str(path), "w") as container:
        video = None
        if with_video:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = 80, 48, "yuv420p"
            video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=rate, layout="stereo") if freq is not None \
            else None
        if video is not None:
            for i in range(int(seconds * fps)):
                colour = SECOND_COLOURS[int(i / fps) % len(SECOND_COLOURS)]
                frame_rgb = np.empty((48, 80, 3), np.uint8)
                frame_rgb[:] = colour
                frame_rgb[:, :8] = 0                     # cropped away by the centre square
                frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in video.encode(frame):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
        if audio is not None:
            n = int(seconds * rate)
            t = np.arange(n) / rate
            tone = 0.4 * np.sin(2 * np.pi * freq * t) if freq else np.zeros(n)
            samples = np.stack([tone, 0.5 * tone]).astype(np.float32)
            step = 1024
            for start in range(0, n, step):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start:start + step]), format="fltp",
                    layout="stereo")
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, freq in (("Dog", 700.0), ("Baby cry", 450.0), ("Water flowing", 2500.0)):
        folder = root / name
        folder.mkdir()
        for v in range(4):
            write_mp4(folder / f"{name[:3].lower()}{v}.mp4", 3.3 + 0.2 * (v % 2),
                      freq * (1 + 0.05 * v))
    write_mp4(root / "Dog" / "silent.mp4", 2.2, 0.0)
    write_mp4(root / "Dog" / "mute.mp4", 2.2, None)
    (root / "Baby cry" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    return root


def write_jpg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, quality=95)


def smooth_spectrogram(k: int, video: int, window: int) -> np.ndarray:
    rows = np.linspace(0, 1, 128)[:, None]
    cols = np.linspace(0, 1, 100)[None]
    return np.clip(40 * k + 60 * rows + 30 * cols + 5 * window + video % 7, 0, 255).astype(
        np.uint8)


@pytest.fixture(scope="module")
def jpg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpgs") / "spectrograms"
    for split, videos in (("train", range(1, 5)), ("val", range(10, 12))):
        for k in (1, 2, 3, 4, 5):
            for video in videos:
                for window in range(3):
                    write_jpg(root / split / f"c{k:03d}_s{video:05d}_w{window:03d}.jpg",
                              smooth_spectrogram(k, video, window))
    (root / "train" / "c001_s00099_w000.jpg").write_bytes(b"not a jpeg at all")
    write_jpg(root / "train" / "c002_s00098_w000.jpg", np.zeros((64, 64), np.uint8))
    write_jpg(root / "train" / "holiday.jpg", np.zeros((128, 100), np.uint8))
    return root


# ------------------------------------------------------------------ demo

def test_prepare_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    preview = tmp_path / "preview.png"
    assert prepare_main(["demo", "--out", str(out), "--demo-train", "10", "--demo-val", "5",
                         "--demo-test", "5", "--demo-windows", "5", "--quiet",
                         "--preview", str(preview)]) == 0
    store = Store(out, verify_checksums=True)
    with Image.open(preview) as picture:
        assert picture.size[1] == 5 * (128 + 4)                    # one row per class
    assert store.has_images and store.manifest["source"]["kind"] == "demo"
    assert [store.count(s) for s in ("train", "val", "test")] == [50, 25, 25]
    # exists already: refused without --overwrite, replaced with it
    assert trainer_main(["prepare", "demo", "--out", str(out), "--quiet"]) == 2
    assert prepare_main(["demo", "--out", str(out), "--demo-train", "5", "--demo-val", "0",
                         "--demo-test", "0", "--overwrite", "--quiet"]) == 0
    assert Store(out).splits == ["train"]


# ------------------------------------------------------------------ videos

def test_prepare_videos(video_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "videos"
    assert prepare_main([str(video_root), "--out", str(out), "--fractions", "0.5", "0.25",
                         "0.25", "--workers", "2", "--quiet", "--no-balance"]) == 0
    store = Store(out, verify_checksums=True)
    assert "balanced" not in store.manifest                          # opted out
    assert store.classes == ["Baby cry", "Dog", "Water flowing"]   # paper order first
    assert store.has_images
    skipped = store.manifest["skipped"]
    assert skipped["no audio track"] == 1
    assert skipped["silent audio (all samples zero)"] == 1
    assert skipped["unreadable video file"] == 1
    assert sum(store.count(s) for s in store.splits) == 3 * 4 * 3   # 3 classes, 4 videos, 3 s
    seen_videos: dict[int, str] = {}
    for name in store.splits:
        split = store.split(name)
        assert split.images is not None
        for i in range(len(split)):
            video = int(split.videos[i])
            assert seen_videos.setdefault(video, name) == name      # never in two splits
            window = int(split.ids[i][-3:])
            # the centre frame of second w is drawn in that second's colour
            mean_colour = split.images[i].reshape(-1, 3).mean(axis=0)
            assert np.abs(mean_colour - SECOND_COLOURS[window]).max() < 25
            # the tone is heard: well above the floor somewhere, floor not everywhere
            assert split.spectrograms[i].max() > 200
    assert set(store.splits) == {"train", "val", "test"}


def test_prepare_videos_balanced(video_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "balanced"
    # balanced by default (the paper's equal segments per class)
    assert prepare_main([str(video_root), "--out", str(out), "--max-seconds", "2",
                         "--classes", "Dog", "Water flowing", "--workers", "1", "--quiet"]) == 0
    store = Store(out)
    assert "balanced" in store.manifest
    assert store.classes == ["Dog", "Water flowing"]
    for name in store.splits:
        counts = store.manifest["splits"][name]["per_class"]
        assert counts[0] == counts[1] > 0
    assert max(int(i[-3:]) for i in store.split("train").ids) == 1     # 2 s per video at most


def test_prepare_videos_clip_level(video_root: Path, tmp_path: Path) -> None:
    """--front-end s2i-official-clip: every video's segments are scaled together to that
    video's maximum (255 somewhere in each video, 0 somewhere)."""
    out = tmp_path / "clip"
    assert prepare_main([str(video_root), "--out", str(out), "--classes", "Dog",
                         "--front-end", "s2i-official-clip", "--workers", "1", "--quiet",
                         "--no-balance"]) == 0
    store = Store(out)
    assert store.front_end.name() == "s2i-official-clip"
    videos = 0
    for name in store.splits:
        split = store.split(name)
        for video in set(split.videos.tolist()):
            pixels = np.asarray(split.spectrograms)[split.videos == video]
            assert pixels.max() == 255 and pixels.min() == 0
            videos += 1
    assert videos == 4


# ------------------------------------------------------------------ JPG folders and archives

def test_prepare_jpg_folder_and_archive(jpg_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "jpg"
    assert prepare_main([str(jpg_root), "--out", str(out), "--quiet"]) == 0
    store = Store(out, verify_checksums=True)
    assert not store.has_images and store.classes[0] == "Baby cry"
    assert store.front_end.name() == "s2i-official-clip"      # the authors' spectrograms
    assert store.count("train") == 5 * 4 * 3 and store.count("val") == 5 * 2 * 3
    assert store.manifest["skipped"] == {
        "file name not c00K_sNNNNN_wMMM.jpg": 1, "unreadable JPG": 1,
        "wrong spectrogram size (expected 100x128 pixels)": 1}
    train = store.split("train")
    i = train.ids.index("c003_s00002_w001")
    assert train.labels[i] == 2 and train.videos[i] == 2 * 100_000 + 2
    expected = smooth_spectrogram(3, 2, 1).astype(int)
    assert np.abs(train.spectrograms[i].astype(int) - expected).max() <= 6   # JPEG is lossy

    archive = tmp_path / "spectrograms.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(jpg_root, arcname="spectrograms")
    from_archive = tmp_path / "from_archive"
    assert prepare_main([str(archive), "--out", str(from_archive), "--quiet"]) == 0
    other = Store(from_archive)
    assert other.manifest["source"]["inputs"][0]["sha256"]
    a, b = other.split("train"), store.split("train")
    order = [a.ids.index(x) for x in b.ids]
    assert np.array_equal(np.asarray(a.spectrograms)[order], np.asarray(b.spectrograms))


def test_prepare_jpg_resplit_and_forced_split(jpg_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "resplit"
    assert prepare_main([str(jpg_root / "train"), "--out", str(out), "--resplit", "--fractions",
                         "0.5", "0.5", "0", "--quiet"]) == 0
    store = Store(out)
    train, val = store.split("train"), store.split("val")
    assert not set(train.videos.tolist()) & set(val.videos.tolist())
    assert store.count("train") + store.count("val") == 60
    assert all(n > 0 for name in ("train", "val")
               for n in store.manifest["splits"][name]["per_class"])
    forced = tmp_path / "forced"
    assert prepare_main([str(jpg_root / "val"), "--out", str(forced), "--split", "test",
                         "--quiet"]) == 0
    assert Store(forced).splits == ["test"]


# ------------------------------------------------------------------ binary batches

def test_prepare_audio_bin(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "batches"
    folder.mkdir()
    records = {}
    for name, n in (("data_batch_001", 7), ("val_batch_001", 4)):
        labels = np.arange(n) % 5
        specs = rng.integers(0, 256, (n, 12800), dtype=np.uint8)
        records[name] = (labels, specs)
        data = np.concatenate([labels[:, None].astype(np.uint8), specs], axis=1).tobytes()
        if name.startswith("data"):
            data += bytes(100)                                  # a truncated last record
        (folder / f"{name}.bin").write_bytes(data)
    out = tmp_path / "store"
    assert prepare_main([str(folder), "--out", str(out), "--quiet"]) == 0
    store = Store(out, verify_checksums=True)
    assert store.splits == ["train", "val"] and not store.has_images
    assert store.manifest["skipped"] == {
        "wrong-sized record (file size not a multiple of 12801 bytes)": 1}
    train = store.split("train")
    labels, specs = records["data_batch_001"]
    assert train.labels.tolist() == labels.tolist()
    assert np.array_equal(np.asarray(train.spectrograms).reshape(7, -1), specs)


def test_prepare_audio_visual_bin(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [b"00100012003", b"00200012000", b"00500777009", b"0x5garbage!"]
    specs = rng.integers(0, 256, (4, 12800), dtype=np.uint8)
    images = rng.integers(0, 256, (4, 27648), dtype=np.uint8)
    blob = b"".join(i + s.tobytes() + im.tobytes() for i, s, im in
                    zip(ids, specs, images, strict=True))
    path = tmp_path / "audio_visual" / "test_batch_001.bin"
    path.parent.mkdir()
    path.write_bytes(blob)
    out = tmp_path / "store"
    assert prepare_main([str(path), "--out", str(out), "--quiet"]) == 0
    store = Store(out)
    assert store.has_images and store.splits == ["test"]
    assert store.manifest["skipped"] == {"unreadable record id": 1}
    test = store.split("test")
    assert test.ids == ["c001_s00012_w003", "c002_s00012_w000", "c005_s00777_w009"]
    assert test.labels.tolist() == [0, 1, 4]
    assert test.videos.tolist() == [12, 100_012, 400_777]
    assert test.images is not None
    assert np.array_equal(np.asarray(test.images).reshape(3, -1), images[:3])
    assert np.array_equal(np.asarray(test.spectrograms).reshape(3, -1), specs[:3])


# ------------------------------------------------------------------ errors and real data

def test_prepare_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert trainer_main(["prepare", str(tmp_path / "nothing"), "--out",
                         str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source not found") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert trainer_main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "s")]) == 2
    assert "holds no videos" in capsys.readouterr().err
    bad = tmp_path / "x.bin"
    bad.write_bytes(bytes(50))
    assert trainer_main(["prepare", str(bad), "--out", str(tmp_path / "s"), "--split",
                         "train", "--quiet"]) == 2
    assert "nothing to store" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_prepare_real_val_archive(tmp_path: Path) -> None:
    if not REAL_VAL.is_file():
        pytest.skip(f"real s2i_data spectrograms not present at {REAL_VAL}")
    out = tmp_path / "val"
    assert prepare_main([str(REAL_VAL), "--out", str(out), "--quiet"]) == 0
    store = Store(out)
    val = store.split("val")
    assert len(val) == 5635 and store.manifest["splits"]["val"]["videos"] == 860
    assert store.manifest["splits"]["val"]["per_class"] == [1127] * 5
    assert store.manifest["skipped"] == {}
    # the official 8-bit convention: floor at 0, a level per video, per-image maxima vary
    maxima = np.asarray(val.spectrograms[:500]).reshape(500, -1).max(axis=1)
    assert 150 < maxima.mean() < 250 and maxima.std() > 5
    # stamped with the authors' front end (estimated), not ours
    assert store.front_end == FrontEndConfig.preset("s2i-official-clip")


def test_store_benchmark_runs(jpg_root: Path, tmp_path: Path) -> None:
    import json

    from benchmarks.__main__ import main as benchmarks_main

    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(jpg_root / "train", arcname="train")
    results = tmp_path / "store.json"
    assert benchmarks_main(["store", "--archive", str(archive), "--batches", "5",
                            "--batch-size", "8", "--results", str(results), "--quiet"]) == 0
    data = json.loads(results.read_text())
    assert data["build"]["files"] == 63 and data["build"]["items"] == 60
    assert data["load"]["gather"]["count"] == 5 and data["load"]["gather"]["mean_ms"] > 0
    assert data["machine"]["cores"] >= 1
