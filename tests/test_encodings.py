"""Frame encodings (png with a compression level, lossy jpeg with a quality, raw): every one
round-trips through a real PUB socket into ``runtime.wire.client.Subscriber`` and ``s2i-view``;
bad knobs and mislabelled payloads are one-line errors; the encodings benchmark runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI
from PIL import Image

from benchmarks.encodings import main as encodings_main
from benchmarks.encodings import synthetic_images
from runtime.errors import S2IError
from runtime.wire.client import Subscriber
from runtime.wire.protocol import (
    ENCODINGS,
    Publisher,
    decode_frame,
    encode_frame,
    encoding_level_of,
    images_to_uint8,
    uncertainty_map,
)

SETTINGS = [("png", None), ("png", 0), ("png", 9), ("raw", None), ("jpeg", None),
            ("jpeg", 95), ("jpeg", 30)]


def pictures(k: int) -> tuple[np.ndarray, np.ndarray]:
    images = synthetic_images(k, seed=k)
    return images_to_uint8(images), uncertainty_map(images)


def check_decoded(encoding: str, frame, images: np.ndarray, unc: np.ndarray | None) -> None:
    got = np.stack(frame.images)
    assert got.shape == images.shape and got.dtype == np.uint8
    if encoding == "jpeg":        # lossy: close, not equal (smooth pictures)
        assert np.abs(got.astype(int) - images).mean() < 12
    else:
        assert np.array_equal(got, images)
    if unc is not None:
        assert frame.uncertainty.shape == unc.shape
        assert encoding == "jpeg" or np.array_equal(frame.uncertainty, unc)


@pytest.mark.parametrize("encoding,level", SETTINGS)
def test_every_encoding_round_trips_through_the_subscriber(encoding: str, level) -> None:
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i",
                          {"backend": "test", "encoding": encoding})
    subscriber = Subscriber(publisher.address, ctx=ctx)
    try:
        sent = {1: pictures(1), 8: pictures(8)}
        frames = {}
        deadline = time.monotonic() + 30
        while len(frames) < 2 and time.monotonic() < deadline:   # the slow joiner
            publisher.poll_subscriptions(50)
            for seq, (images, unc) in sent.items():
                publisher.publish(encode_frame("s2i", {"seq": seq, "stream": "enc"}, images,
                                               unc if seq == 8 else None, encoding, level))
            frame = subscriber.receive(0.2)
            if frame is not None:
                frames[frame.seq] = frame
        assert sorted(frames) == [1, 8]
        for seq, frame in frames.items():
            images, unc = sent[seq]
            assert frame.header["encoding"] == encoding
            assert frame.header["encoding_level"] == encoding_level_of(encoding, level)
            check_decoded(encoding, frame, images, unc if seq == 8 else None)
    finally:
        subscriber.close()
        publisher.close()
        ctx.term()


def test_s2i_view_writes_every_encoding(tmp_path: Path) -> None:
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"})
    out = tmp_path / "out"
    view = CLI("s2i-view", "--connect", publisher.address, "--out", str(out), "--count",
               str(len(ENCODINGS)))
    sent = {}
    try:
        messages = []
        for seq, encoding in enumerate(ENCODINGS):
            images, unc = pictures(2)
            sent[seq] = (encoding, images, unc)
            messages.append(encode_frame("s2i", {"seq": seq, "stream": encoding}, images, unc,
                                         encoding))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "received" not in view.stderr():
            publisher.poll_subscriptions(50)
            for parts in messages:
                publisher.publish(parts)
            time.sleep(0.05)
        assert view.wait(20) == 0, view.stderr()
    finally:
        view.kill()
        publisher.close()
        ctx.term()
    assert "Traceback" not in view.stderr() and "bad frame" not in view.stderr()
    for seq, (encoding, images, _) in sent.items():
        header = json.loads((out / f"{encoding}_{seq:06d}.json").read_text())
        assert header["encoding"] == encoding
        for k in range(2):
            with Image.open(out / f"{encoding}_{seq:06d}_{k}.png") as png:
                written = np.asarray(png)
            diff = np.abs(written.astype(int) - images[k])
            assert diff.mean() < 12 if encoding == "jpeg" else diff.max() == 0
        assert (out / f"{encoding}_{seq:06d}_uncertainty.png").is_file()


def test_bad_levels_and_mislabelled_payloads_are_one_line_errors() -> None:
    images, _ = pictures(1)
    for encoding, level, words in [("jpeg", 0, r"jpeg quality must be an integer in \[1, 95\]"),
                                   ("jpeg", 96, "quality"), ("png", 10, "compress level"),
                                   ("png", 1.5, "compress level"), ("webp", None, "unknown")]:
        with pytest.raises(S2IError, match=words) as info:
            encode_frame("s2i", {"seq": 0}, images, None, encoding, level)
        assert "\n" not in str(info.value)
    png = encode_frame("s2i", {"seq": 2}, images, None, "png")
    jpeg = encode_frame("s2i", {"seq": 2}, images, None, "jpeg")
    as_jpeg = [png[0], json.dumps(dict(json.loads(png[1]), encoding="jpeg")).encode(), png[2]]
    as_png = [jpeg[0], json.dumps(dict(json.loads(jpeg[1]), encoding="png")).encode(), jpeg[2]]
    with pytest.raises(S2IError, match="S2I frame 2 image 0: jpeg payload does not decode"):
        decode_frame(as_jpeg)
    with pytest.raises(S2IError, match="S2I frame 2 image 0: png payload does not decode"):
        decode_frame(as_png)
    assert encoding_level_of("raw", None) is None
    assert encoding_level_of("png") == 1 and encoding_level_of("jpeg") == 85


def test_encodings_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "encodings.json"
    assert encodings_main(["--frames", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert {(r["encoding"], r["k"]) for r in rows} >= {("jpeg", 1), ("jpeg", 8), ("png", 8),
                                                      ("raw", 1)}
    for row in rows:
        assert row["encode_cpu_ms"]["count"] == 2 and row["bytes_per_frame"] > 0
        if row["encoding"] != "jpeg":
            assert row["grey_levels_max_error"] == 0
    raw8 = next(r for r in rows if r["encoding"] == "raw" and r["k"] == 8)
    assert raw8["bytes_per_frame"] == 8 * 96 * 96 * 3 + 96 * 96
    assert "| 8 + map | jpeg |" in out.with_suffix(".md").read_text()
