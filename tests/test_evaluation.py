"""The evaluation workflow end to end on a tiny demo setup:
sample -> label (real page in headless Chromium + automatic labels) -> informativity ->
evaluate, plus the series arithmetic and the one-line errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_browser import browser_errors, chromium_driver
from PIL import Image

from runtime.errors import S2IError
from runtime.frontend import from_uint8
from trainer.__main__ import main as trainer_main
from trainer.checkpoint import save_checkpoint
from trainer.data.demo_data import build_demo_store
from trainer.data.store import Store
from trainer.evaluate.label import LabelServer
from trainer.evaluate.report import (
    discriminator_update_epochs,
    moving_average,
    range_average,
    replace_skipped,
    skipped_after_d,
)
from trainer.evaluate.sample_files import LABELS_FILE, read_labels
from trainer.models import AudioEncoder, DenseGenerator

WIDTH = 0.125


def fit_run(store: Store, run: Path, embedding_dim: int, epochs: int, seed: int = 0) -> None:
    """A tiny stand-in for `trainer gan`: a random frozen encoder (BatchNorm statistics
    taken on the train split) and a generator fitted by pixel loss, with one snapshot per
    epoch in the documented checkpoint layout (D updated every 3 epochs, per the config)."""
    torch.manual_seed(seed)
    train = store.split("train")
    spec = torch.from_numpy(from_uint8(np.asarray(train.spectrograms)))[:, None]
    images = torch.from_numpy(np.array(train.images)).float().permute(0, 3, 1, 2) / 127.5 - 1
    encoder, generator = AudioEncoder(embedding_dim, WIDTH), DenseGenerator(embedding_dim, WIDTH)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative statistics over the one pass below
    with torch.no_grad():
        encoder(spec)
        encoder.eval()
        z = encoder(spec)
    optimizer = torch.optim.Adam(generator.parameters(), 1e-3)
    history: dict[str, list[float]] = {"pixel_loss": [], "d_updates": []}
    for epoch in range(1, epochs + 1):
        generator.train()
        order, total = torch.randperm(len(z)), 0.0
        for start in range(0, len(z), 4):
            idx = order[start:start + 4]
            loss = F.mse_loss(generator(z[idx]), images[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history["pixel_loss"].append(total / len(z))
        history["d_updates"].append(int(epoch % 3 == 0))
        state = {"stage": "gan", "embedding_dim": embedding_dim, "width": WIDTH,
                 "generator_transitions": generator.transition_widths,
                 "front_end": store.front_end.to_dict(), "classes": store.classes,
                 "config": {"n_gd": 3, "n_gd_unit": "epoch"}, "epoch": epoch,
                 "step": epoch * 50,
                 "models": {"encoder": encoder.state_dict(),
                            "generator": generator.state_dict()},
                 "history": {k: list(v) for k, v in history.items()},
                 "store": {"path": str(store.path), "fingerprint": store.fingerprint}}
        save_checkpoint(run / "checkpoints" / f"gan_e{epoch:04d}.pt", state)
    save_checkpoint(run / "checkpoints" / "gan_last.pt", state)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny networks: one thread is faster than two fighting other jobs for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    store_path = build_demo_store(root / "store", 40, 10, 8, progress=False)
    store = Store(store_path)
    fit_run(store, root / "run_d32", 32, epochs=8)
    fit_run(store, root / "run_d16", 16, epochs=3, seed=1)
    return {"root": root, "store": store_path, "run": root / "run_d32",
            "run2": root / "run_d16"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def wait_for(driver, position: int) -> None:  # noqa: ANN001 - selenium driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> bool:  # noqa: ANN001
        body = d.find_element(By.TAG_NAME, "body")
        return (body.get_attribute("data-busy") == "0"
                and body.get_attribute("data-position") == str(position))
    WebDriverWait(driver, 15).until(ready)


def press(driver, key: str, then_position: int) -> None:  # noqa: ANN001
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).send_keys(key).perform()
    wait_for(driver, then_position)


def test_workflow_end_to_end(setup: dict[str, Path], tmp_path: Path) -> None:
    store, run = setup["store"], setup["run"]
    labels_dir = tmp_path / "to_label"
    snapshots = [str(run / "checkpoints" / f"gan_e{e:04d}.pt") for e in (2, 4, 6, 8)]
    # 1. sample: the val sounds through four snapshots, 2 MC-dropout samples each
    assert trainer_main(["sample", *snapshots, "--store", str(store), "--split", "val",
                         "--samples", "2", "--out", str(labels_dir)]) == 0
    index = json.loads((labels_dir / "index.json").read_text())
    items = index["items"]
    assert len(items) == 4 * 50 * 2
    assert {it["epoch"] for it in items} == {2, 4, 6, 8}
    assert all((labels_dir / it["file"]).is_file() and (labels_dir / it["real"]).is_file()
               for it in items)
    assert png_size(labels_dir / items[0]["file"]) == (96, 96)
    csv_lines = (labels_dir / "index.csv").read_text().splitlines()
    assert csv_lines[0].startswith("file,sound_id,class") and len(csv_lines) == len(items) + 1
    # the two MC samples of a sound differ (dropout on at test time)
    a, b = (np.asarray(Image.open(labels_dir / items[k]["file"])) for k in (0, 1))
    assert items[0]["sound_id"] == items[1]["sound_id"] and not np.array_equal(a, b)

    # 2a. label a few through the real page in headless Chromium; restart; it resumes
    keys = ["i", "n", "ArrowRight", "n", "u", "ArrowLeft"]
    with chromium_driver(tmp_path) as driver:
        from selenium.webdriver.common.keys import Keys
        keymap = {"ArrowRight": Keys.ARROW_RIGHT, "ArrowLeft": Keys.ARROW_LEFT}
        with LabelServer(labels_dir) as server:
            driver.get(server.url)
            wait_for(driver, 0)
            position = 0
            for key in keys:
                position = position - 1 if key == "u" else position + 1
                press(driver, keymap.get(key, key), position)
            driver.save_screenshot(str(tmp_path / "label_page.png"))
            assert browser_errors(driver) == []
        labels = read_labels(labels_dir)
        expected = ["informative", "non-informative", "informative", "non-informative"]
        assert [labels[items[k]["file"]]["label"] for k in range(4)] == expected
        assert all(e["by"] == "person" for e in labels.values()) and len(labels) == 4
        with LabelServer(labels_dir) as server:  # a new server on the same folder
            driver.get(server.url)
            wait_for(driver, 4)  # resumes at the first unlabelled image
            text = driver.find_element("id", "progress").text
            assert text.startswith(f"4 / {len(items)} labelled")
            assert driver.find_element("id", "sound-class").text == items[4]["class"]
            press(driver, "i", 5)
            assert browser_errors(driver) == []
        assert read_labels(labels_dir)[items[4]["file"]]["label"] == "informative"
    assert png_size(tmp_path / "label_page.png")[0] >= 800

    # 2b. automatic labels for the rest; the person's five stay as given
    assert trainer_main(["label", str(labels_dir), "--auto", "--store", str(store)]) == 0
    labels = read_labels(labels_dir)
    assert len(labels) == len(items)
    assert sum(e["by"] == "person" for e in labels.values()) == 5
    assert labels[items[1]["file"]]["label"] == "non-informative"
    assert all(0 <= e["score"] <= 1 for e in labels.values() if e["by"] == "auto")

    # 3. informativity classifiers
    classifiers = tmp_path / "classifiers"
    assert trainer_main(["informativity", str(labels_dir), "--out", str(classifiers),
                         "--epochs", "12"]) == 0
    manifest = json.loads((classifiers / "manifest.json").read_text())
    trained = {c: r for c, r in manifest["per_class"].items() if "file" in r}
    assert trained, manifest["per_class"]
    for name, r in manifest["per_class"].items():
        if "file" in r:
            assert 0 <= r["accuracy"] <= 1 and 0 <= r["balanced_accuracy"] <= 1
            assert (classifiers / r["file"]).stat().st_size > 1000
        else:  # a class with too few labels of one kind is skipped, and says why
            assert "need" in r["skipped"], name

    # 4. evaluate two runs (two embedding sizes), short runs: window shrinks to fit
    report_dir = tmp_path / "report"
    assert trainer_main(["evaluate", str(run), str(setup["run2"]), "--classifiers",
                         str(classifiers), "--store", str(store), "--out", str(report_dir),
                         "--window", "50"]) == 0
    report = json.loads((report_dir / "informativity.json").read_text())
    by_dim = {r["embedding_dim"]: r for r in report["runs"]}
    assert set(by_dim) == {16, 32}
    main_run = by_dim[32]
    assert main_run["epochs"] == list(range(1, 9))
    # D updated at epochs 3 and 6 (config: every 3 epochs); the 2 epochs after are replaced
    assert main_run["d_update_epochs"] == [3, 6]
    assert main_run["skipped_epochs"] == [4, 5, 7, 8]
    assert set(main_run["per_class"]) == set(trained)
    for curve in [*main_run["per_class"].values(), main_run["average"]]:
        assert all(0 <= v <= 1 for v in curve["raw"])
        assert 0 <= curve["average"] <= 1 and 0 <= curve["max_moving_average"] <= 1
        assert curve["moving_average"]["window"] == 8  # 50 shrunk to the 8-epoch run
        assert curve["used"][3] == pytest.approx(np.mean(curve["used"][:3]))  # epoch 4
    assert main_run["pixel_loss"]["values"][-1] < main_run["pixel_loss"]["values"][0]
    rows = (report_dir / "informativity.csv").read_text().splitlines()
    assert len(rows) == 1 + (8 + 3) * (len(trained) + 1)
    assert (report_dir / "summary.csv").read_text().count("\n") == 1 + 2 * (len(trained) + 1)
    for name in ("informativity_run_d32.png", "informativity_run_d16.png",
                 "embedding_sizes.png", "pixel_loss.png"):
        width, height = png_size(report_dir / name)
        assert width >= 600 and height >= 350, (name, width, height)
        assert (report_dir / name).stat().st_size > 15_000  # drawn, not blank


def test_sample_picks_snapshots(setup: dict[str, Path], tmp_path: Path) -> None:
    from trainer.evaluate.sample import SampleConfig, write_samples
    common = {"split": "test", "per_class": 1, "progress": False}
    def sample(run: Path, out: Path, **options: object) -> dict:
        return write_samples(SampleConfig([run], setup["store"], out, **options))  # type: ignore[arg-type]

    index = sample(setup["run"], tmp_path / "last", **common)
    assert [m["epoch"] for m in index["models"]] == [8]  # a run folder -> gan_last.pt
    index = sample(setup["run"], tmp_path / "spread", snapshots="3", **common)
    assert [m["epoch"] for m in index["models"]] == [1, 5, 8]
    assert len(index["items"]) == 3 * 5 and all(it["sample"] == 0 for it in index["items"])
    # dropout off: the same sound gives the same image, whatever the seed
    fixed = {"split": "test", "limit": 3, "progress": False, "snapshots": "all",
             "mc_dropout": False}
    index = sample(setup["run2"], tmp_path / "all", seed=0, **fixed)
    assert [m["epoch"] for m in index["models"]] == [1, 2, 3]
    again = sample(setup["run2"], tmp_path / "again", seed=5, **fixed)
    assert [it["file"] for it in again["items"]] == [it["file"] for it in index["items"]]
    for it in index["items"]:
        first, second = (np.asarray(Image.open(folder / it["file"]))
                         for folder in (tmp_path / "all", tmp_path / "again"))
        assert np.array_equal(first, second)


def test_evaluate_auto_runs_the_whole_chain(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "auto"
    assert trainer_main(["evaluate", str(setup["run"]), "--store", str(setup["store"]),
                         "--auto", "--auto-snapshots", "2", "--auto-epochs", "4",
                         "--per-class", "4", "--out", str(out)]) == 0
    labels = read_labels(out / "labels")
    index = json.loads((out / "labels" / "index.json").read_text())
    assert index["split"] == "val" and [m["epoch"] for m in index["models"]] == [1, 8]
    assert len(labels) == len(index["items"]) == 2 * 50 * 2
    assert all(e["by"] == "auto" for e in labels.values())
    report = json.loads((out / "informativity.json").read_text())
    run = report["runs"][0]
    assert run["epochs"] == list(range(1, 9)) and run["per_class"]
    assert all(0 <= v <= 1 for c in run["per_class"].values() for v in c["raw"])
    assert png_size(out / "informativity_run_d32.png")[0] >= 600

    # the real trainer's checkpoints (`trainer audio` + `trainer gan`) evaluate the same way
    store, audio_run, gan_run = setup["store"], tmp_path / "audio", tmp_path / "gan"
    assert trainer_main(["audio", "--store", str(store), "--run", str(audio_run),
                         "--embedding-dim", "16", "--width", str(WIDTH), "--epochs", "1",
                         "--max-batches", "2", "--val-max-batches", "1",
                         "--probe-samples", "20"]) == 0
    assert trainer_main(["gan", "--store", str(store), "--encoder", str(audio_run), "--run",
                         str(gan_run), "--width", str(WIDTH), "--epochs", "3",
                         "--max-batches", "2", "--n-gd", "2", "--snapshot-every", "1",
                         "--grid-sounds", "2", "--grid-mc-samples", "2"]) == 0
    assert trainer_main(["evaluate", str(gan_run), "--classifiers", str(out / "classifiers"),
                         "--store", str(store), "--per-class", "2"]) == 0
    report = json.loads((gan_run / "evaluation" / "informativity.json").read_text())
    run = report["runs"][0]
    assert run["embedding_dim"] == 16 and run["epochs"] == [1, 2, 3]
    assert run["d_update_epochs"] == [2] and run["skipped_epochs"] == [3]
    assert run["pixel_loss"]["key"] == "pixel_loss" and len(run["pixel_loss"]["values"]) == 3


def test_store_without_images(setup: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.data.store import StoreWriter
    demo = Store(setup["store"])
    test = demo.split("test")
    with StoreWriter(tmp_path / "spectrograms_only", demo.classes, demo.front_end,
                     has_images=False, source={"kind": "test"}) as writer:
        split = writer.open_split("test", len(test))
        split.append_batch(np.asarray(test.spectrograms), test.labels, test.videos, test.ids)
    out = tmp_path / "samples"
    assert trainer_main(["sample", str(setup["run"]), "--store",
                         str(tmp_path / "spectrograms_only"), "--limit", "3", "--out",
                         str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert len(index["items"]) == 3 and all(it["real"] is None for it in index["items"])
    assert not (out / "real").exists()
    capsys.readouterr()
    assert trainer_main(["label", str(out), "--auto", "--store",
                         str(tmp_path / "spectrograms_only")]) == 2
    assert "has no real images" in capsys.readouterr().err


def test_series_arithmetic() -> None:
    # a skipped epoch takes the mean of up to five kept epochs before it
    used = replace_skipped([0.1, 0.2, 0.3, 0.9, 0.8, 0.4], [False, False, False, True, True,
                                                           False])
    assert used[3] == pytest.approx(0.2) and used[4] == pytest.approx(0.2) and used[5] == 0.4
    assert replace_skipped([0.5, 0.1], [True, False]) == [None, 0.1]
    # moving average over epochs; the window shrinks to the run's span
    ends, means, width = moving_average([1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0], window=2)
    assert width == 2 and ends == [2, 3, 4] and means == [0.5, 1.5, 2.5]
    ends, means, width = moving_average([5, 10, 15], [1.0, 2.0, 3.0], window=50)
    assert width == 11 and ends == [15] and means == [2.0]
    # the paper's range (500..4000); a short run falls back to all its epochs
    assert range_average([1, 2, 3], [0.1, 0.2, 0.3], 500, 4000) == (pytest.approx(0.2), [1, 3])
    assert range_average([400, 500, 600], [1.0, 0.2, 0.4], 500, 4000)[0] == pytest.approx(0.3)


def test_discriminator_update_sources() -> None:
    epochs = list(range(1, 11))
    by_config = {"config": {"n_gd": 5, "n_gd_unit": "epoch"}}
    assert discriminator_update_epochs(by_config, epochs, None)[0] == {5, 10}
    assert discriminator_update_epochs(by_config, epochs, 4)[0] == {4, 8}
    by_history = {"config": {}, "history": {"d_updates": [0, 1, 0, 0, 1]}}
    assert discriminator_update_epochs(by_history, epochs, None)[0] == {2, 5}
    every_epoch = {"config": {"n_gd": 5, "n_gd_unit": "batch"},
                   "history": {"d_updates": [40, 40, 40]}}
    updated, source = discriminator_update_epochs(every_epoch, epochs, None)
    assert updated == set() and "every epoch" in source
    assert discriminator_update_epochs({"config": {}}, epochs, None)[1].startswith("unknown")


def test_d_updates_between_snapshots_still_skip_the_next_snapshots() -> None:
    # snapshots every 2 epochs, D every 5: D at 5 and 10 are not snapshot epochs, yet the
    # snapshots at 6 (5+1) and 12 (10+2) come right after a D update and are skipped
    snapshots = [2, 4, 6, 8, 10, 12, 14]
    by_config = {"config": {"n_gd": 5, "n_gd_unit": "epoch"}}
    for d_every in (None, 5):
        d_epochs = discriminator_update_epochs(by_config, snapshots, d_every)[0]
        assert d_epochs == {5, 10}
        skipped = skipped_after_d(snapshots, d_epochs, 2)
        assert [e for e, s in zip(snapshots, skipped, strict=True) if s] == [6, 12]
    assert not any(skipped_after_d(snapshots, {5, 10}, 0))


def test_clear_errors(setup: dict[str, Path], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    store, run = setup["store"], setup["run"]
    cases = [
        (["sample", str(run), "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
         "store not found"),
        (["sample", str(tmp_path), "--store", str(store), "--out", str(tmp_path / "o")],
         "no 'gan' checkpoint"),
        (["label", str(tmp_path)], "samples index not found"),
        (["informativity", str(tmp_path), "--out", str(tmp_path / "c")],
         "samples index not found"),
        (["evaluate", str(run), "--classifiers", str(tmp_path / "none"), "--store",
          str(store)], "classifiers folder not found"),
    ]
    for argv, expected in cases:
        assert trainer_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err
    # a folder holding labels.json is never replaced by `sample`
    folder = tmp_path / "labelled"
    folder.mkdir()
    (folder / LABELS_FILE).write_text("{}")
    with pytest.raises(S2IError, match="labels.json"):
        from trainer.evaluate.sample import SampleConfig, write_samples
        write_samples(SampleConfig([run], store, folder, overwrite=True, progress=False))
    assert (folder / LABELS_FILE).read_text() == "{}"


def test_informativity_out_never_replaces_labels_or_other_folders(tmp_path: Path) -> None:
    from trainer.evaluate.informativity import InformativityConfig, train_classifiers

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "index.json").write_text("{}")
    (labels / LABELS_FILE).write_text("{}")
    (labels / "s0.png").write_bytes(b"image")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "s2i-store"}')
    (other / "train.bin").write_bytes(b"data")
    for out, expected in [(labels, "holds labels.json"), (other, "no informativity")]:
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(S2IError, match=expected) as info:
            train_classifiers([labels], out, InformativityConfig(), progress=False)
        assert "\n" not in str(info.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (labels / LABELS_FILE).unlink()
    with pytest.raises(S2IError, match="holds index.json"):
        train_classifiers([labels], labels, InformativityConfig(), progress=False)


def test_damaged_classifier_file_is_one_clear_error(tmp_path: Path) -> None:
    from trainer.evaluate.informativity import (
        CLASSIFIERS_FORMAT,
        CLASSIFIERS_VERSION,
        load_classifiers,
    )

    folder = tmp_path / "classifiers"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "format": CLASSIFIERS_FORMAT, "version": CLASSIFIERS_VERSION, "classes": ["Dog"],
        "per_class": {"Dog": {"file": "class_0.pt"}}, "config": {"width": WIDTH}}))
    for junk in (b"\x00junk bytes\xff" * 10, b"PK\x03\x04 not a zip"):
        (folder / "class_0.pt").write_bytes(junk)
        with pytest.raises(S2IError, match="class_0.pt carries no S2I sha256 seal") as info:
            load_classifiers(folder)
        assert "\n" not in str(info.value)
    import io

    from trainer.checkpoint import seal
    from trainer.models import InformativityClassifier
    buffer = io.BytesIO()
    torch.save(InformativityClassifier(WIDTH, "ours").state_dict(), buffer)
    (folder / "class_0.pt").write_bytes(seal(buffer.getvalue()))
    assert set(load_classifiers(folder)[1]) == {0}
    data = bytearray((folder / "class_0.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "class_0.pt").write_bytes(bytes(data))
    with pytest.raises(S2IError, match=r"classifier .*class_0.pt is damaged: .* retrain"):
        load_classifiers(folder)
    (folder / "class_0.pt").unlink()
    with pytest.raises(S2IError, match="class_0.pt is missing, damaged"):
        load_classifiers(folder)


def test_broken_gan_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    from helpers_export import make_tiny_checkpoint

    from trainer.checkpoint import load_translator

    good = make_tiny_checkpoint(tmp_path / "good.pt", width=WIDTH, embedding_dim=16)
    state = {k: v for k, v in torch.load(good, weights_only=True).items()
             if k not in ("format", "version")}
    broken = {"no_dim": {k: v for k, v in state.items() if k != "embedding_dim"},
              "bad_dim": {**state, "embedding_dim": "sixteen"},
              "negative_dim": {**state, "embedding_dim": -3},
              "wrong_dim": {**state, "embedding_dim": 32},
              "bad_weights": {**state, "models": {"encoder": 1, "generator": 2}}}
    for name, content in broken.items():
        save_checkpoint(tmp_path / f"{name}.pt", content)
        with pytest.raises(S2IError, match=f"{name}.pt") as info:
            load_translator(tmp_path / f"{name}.pt")
        assert "\n" not in str(info.value), name


def test_failed_label_write_changes_nothing_in_memory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.evaluate.sample_files as label
    from trainer.evaluate.sample_files import SAMPLES_FORMAT, SAMPLES_VERSION

    items = [{"file": f"s{i}.png", "real": None, "class_index": 0} for i in range(2)]
    (tmp_path / "index.json").write_text(json.dumps({
        "format": SAMPLES_FORMAT, "version": SAMPLES_VERSION, "classes": ["Dog"],
        "items": items}))
    book = label.LabelBook(tmp_path)
    book.set("s0.png", label.INFORMATIVE)

    def disk_full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(label, "atomic_write_json", disk_full)
    with pytest.raises(OSError):
        book.update({"s0.png": None, "s1.png": {"label": label.NON_INFORMATIVE}})
    with pytest.raises(S2IError):   # an invalid change half-way applies nothing either
        book.update({"s1.png": {"label": label.INFORMATIVE}, "s9.png": None})
    assert set(book.labels) == {"s0.png"} and book.labels == read_labels(tmp_path)


def test_evaluate_checks_out_before_scoring(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker, blocker / "reports"):
        argv = ["evaluate", str(tmp_path / "no_run"), "--classifiers", str(tmp_path / "none"),
                "--store", str(tmp_path / "no_store"), "--out", str(out)]
        assert trainer_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot write the reports") and "\n" not in err, err


def test_labelling_page_starts_without_torch() -> None:
    # the page (and the samples index / labels files it reads) must not pull in PyTorch
    code = ("import sys, trainer.evaluate.label, trainer.evaluate.sample_files, trainer.run; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_classifier_architecture_is_saved_and_a_mismatch_refused(tmp_path: Path) -> None:
    import io

    from trainer.checkpoint import seal
    from trainer.evaluate.informativity import (
        CLASSIFIERS_FORMAT,
        CLASSIFIERS_VERSION,
        load_classifiers,
    )
    from trainer.models import InformativityClassifier

    folder = tmp_path / "classifiers"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save(InformativityClassifier(WIDTH, "official").state_dict(), buffer)
    (folder / "class_0.pt").write_bytes(seal(buffer.getvalue()))

    def manifest(architecture: str) -> None:
        (folder / "manifest.json").write_text(json.dumps({
            "format": CLASSIFIERS_FORMAT, "version": CLASSIFIERS_VERSION,
            "architecture": architecture, "classes": ["Dog"],
            "per_class": {"Dog": {"file": "class_0.pt"}}, "config": {"width": WIDTH}}))

    manifest("official")
    assert load_classifiers(folder)[1][0].architecture == "official"
    assert load_classifiers(folder, "official")[1][0].architecture == "official"
    with pytest.raises(S2IError, match="architecture 'official', not the 'paper'"):
        load_classifiers(folder, "paper")
    for saved, expected in (("paper", "not of the manifest's architecture 'paper'"),
                            ("ours", "not of the manifest's architecture 'ours'"),
                            ("wide", "classifier architecture must be one of")):
        manifest(saved)
        with pytest.raises(S2IError, match=expected) as info:
            load_classifiers(folder)
        assert "\n" not in str(info.value)
