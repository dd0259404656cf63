"""Training stages on tiny configurations: schedule, resume bit-for-bit, errors, torchrun."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig
from trainer.__main__ import main as trainer_main
from trainer.checkpoint import load_checkpoint
from trainer.data.demo_data import build_demo_store
from trainer.train.audio import AudioConfig, train_audio
from trainer.train.gan import GanConfig, d_turn, train_gan

TINY = {"width": 0.125, "batch_size": 8, "max_batches": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "demo"
    build_demo_store(path, n_per_class_train=5, n_val=2, n_test=2, seed=3, progress=False)
    return path


@pytest.fixture(scope="module")
def audio_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("audio")
    train_audio(AudioConfig(store=str(store), run_dir=str(run), embedding_dim=64, epochs=1,
                            probe_samples=20, **TINY))
    return run


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {f"{net}.{k}": v for net, sd in state["models"].items() for k, v in sd.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_audio_stage_writes_run_folder(audio_run: Path) -> None:
    state = load_checkpoint(audio_run / "checkpoints" / "audio_last.pt", stage="audio")
    assert state["embedding_dim"] == 64 and state["epoch"] == 1
    assert (audio_run / "config_audio.json").is_file()
    assert list((audio_run / "tensorboard").iterdir())
    assert (audio_run / "samples" / "audio_e0001.png").is_file()
    metrics = (audio_run / "metrics.json").read_text()
    assert "linear_probe_accuracy" in metrics and "val_mse" in metrics


def test_discriminator_schedule() -> None:
    epochs = GanConfig(n_gd=5, n_gd_unit="epoch")
    assert [e for e in range(1, 16) if d_turn(epochs, e, 1)] == [5, 10, 15]
    batches = GanConfig(n_gd=3, n_gd_unit="batch")
    assert [s for s in range(1, 10) if d_turn(batches, 1, s)] == [3, 6, 9]
    with pytest.raises(ValueError):
        GanConfig(n_gd_unit="week")


def test_gan_updates_d_once_per_n_gd_batches(store: Path, audio_run: Path,
                                             tmp_path: Path) -> None:
    cfg = GanConfig(store=str(store), encoder=str(audio_run), run_dir=str(tmp_path), epochs=3,
                    n_gd=3, n_gd_unit="batch", snapshot_every=3, **TINY)
    history = train_gan(cfg)
    assert [h["d_updates"] for h in history] == [0, 1, 1]   # steps 1..6: D at 3 and 6
    state = load_checkpoint(tmp_path, stage="gan")
    assert set(state["models"]) == {"encoder", "generator", "discriminator"}
    assert (tmp_path / "checkpoints" / "gan_e0003.pt").is_file()
    assert (tmp_path / "samples" / "gan_mc_e0003.png").is_file()
    assert all("rc_fake" in h and "pixel_loss" in h for h in history)


def test_paper_schedule_skips_the_two_epochs_after_each_d_update(store: Path, audio_run: Path,
                                                                 tmp_path: Path) -> None:
    """The paper preset snapshots every epoch, so the evaluation's "skip the 2 epochs after a D
    update" rule fires on a real run (D in epoch 5 -> snapshots 6 and 7 skipped); the run's
    metrics say what a D update was."""
    import json

    from trainer.evaluate.report import discriminator_update_epochs, skipped_after_d
    from trainer.evaluate.sample import list_snapshots
    from trainer.presets import apply_preset

    cfg = apply_preset(GanConfig(store=str(store), encoder=str(audio_run), run_dir=str(tmp_path)),
                       "paper")
    cfg = dataclasses.replace(cfg, epochs=7, **{**TINY, "max_batches": 1})
    history = train_gan(cfg)
    assert [h["d_updates"] > 0 for h in history] == [False] * 4 + [True, False, False]
    paths = list_snapshots(tmp_path)
    epochs = [load_checkpoint(p)["epoch"] for p in paths]
    assert epochs == list(range(1, 8))
    d_epochs, source = discriminator_update_epochs(load_checkpoint(paths[-1]), epochs, None)
    assert d_epochs == {5} and "5 generator epochs" in source
    skipped = skipped_after_d(epochs, d_epochs, 2)
    assert [e for e, s in zip(epochs, skipped, strict=True) if s] == [6, 7]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["gan"]
    assert metrics["d_update"]["unit"] == "epoch" and metrics["d_update"]["n_gd"] == 5
    assert metrics["preset"] == "paper"


def test_frozen_encoder_does_not_change(store: Path, audio_run: Path, tmp_path: Path) -> None:
    train_gan(GanConfig(store=str(store), encoder=str(audio_run), run_dir=str(tmp_path), epochs=1,
                        **TINY))
    before = load_checkpoint(audio_run / "checkpoints" / "audio_last.pt")["models"]["encoder"]
    after = load_checkpoint(tmp_path, stage="gan")["models"]["encoder"]
    assert_same(before, after)


def test_gan_resume_is_bit_for_bit(store: Path, audio_run: Path, tmp_path: Path) -> None:
    common = dict(store=str(store), encoder=str(audio_run), n_gd=2, n_gd_unit="epoch", **TINY)
    straight = tmp_path / "straight"
    train_gan(GanConfig(run_dir=str(straight), epochs=4, **common))
    split = tmp_path / "split"
    train_gan(GanConfig(run_dir=str(split), epochs=2, **common))
    train_gan(GanConfig(run_dir=str(split), epochs=4, **common), resume=True)
    assert_same(weights(straight / "checkpoints" / "gan_last.pt"),
                weights(split / "checkpoints" / "gan_last.pt"))


def test_gan_resume_after_snapshot_epochs_is_bit_for_bit(store: Path, audio_run: Path,
                                                          tmp_path: Path) -> None:
    # pictures are drawn after every epoch here: they must not shift the random draws
    common = dict(store=str(store), encoder=str(audio_run), snapshot_every=1, **TINY)
    train_gan(GanConfig(run_dir=str(tmp_path / "a"), epochs=2, **common))
    train_gan(GanConfig(run_dir=str(tmp_path / "b"), epochs=1, **common))
    train_gan(GanConfig(run_dir=str(tmp_path / "b"), epochs=2, **common), resume=True)
    assert_same(weights(tmp_path / "a" / "checkpoints" / "gan_last.pt"),
                weights(tmp_path / "b" / "checkpoints" / "gan_last.pt"))


def test_gan_resume_keeps_its_encoder_and_width(store: Path, tmp_path: Path) -> None:
    audio = AudioConfig(store=str(store), run_dir=str(tmp_path / "audio"), embedding_dim=64,
                        epochs=1, probe_samples=10, **TINY)
    train_audio(audio)
    gan = GanConfig(store=str(store), encoder=audio.run_dir, run_dir=str(tmp_path / "gan"),
                    epochs=1, **TINY)
    train_gan(gan)
    first = load_checkpoint(tmp_path / "gan", stage="gan")["models"]["encoder"]
    audio.epochs = 2
    train_audio(audio, resume=True)                       # the audio run trains on
    gan.epochs = 2
    train_gan(gan, resume=True)
    assert_same(first, load_checkpoint(tmp_path / "gan", stage="gan")["models"]["encoder"])
    wider = GanConfig(**{**gan.__dict__, "width": 0.25, "epochs": 3})
    with pytest.raises(S2IError, match="--width 0.125.*--width 0.25"):
        train_gan(wider, resume=True)


def test_audio_resume_is_bit_for_bit(store: Path, tmp_path: Path) -> None:
    common = dict(store=str(store), embedding_dim=64, probe_samples=10, **TINY)
    train_audio(AudioConfig(run_dir=str(tmp_path / "a"), epochs=2, **common))
    train_audio(AudioConfig(run_dir=str(tmp_path / "b"), epochs=1, **common))
    train_audio(AudioConfig(run_dir=str(tmp_path / "b"), epochs=2, **common), resume=True)
    assert_same(weights(tmp_path / "a" / "checkpoints" / "audio_last.pt"),
                weights(tmp_path / "b" / "checkpoints" / "audio_last.pt"))


def test_mismatched_embedding_size_is_one_clear_error(store: Path, audio_run: Path,
                                                      tmp_path: Path) -> None:
    cfg = GanConfig(store=str(store), encoder=str(audio_run), run_dir=str(tmp_path),
                    embedding_dim=128, epochs=1, **TINY)
    with pytest.raises(S2IError, match="D=64.*D=128"):
        train_gan(cfg)


def test_store_from_another_front_end_is_refused(audio_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_demo_store(other, n_per_class_train=2, n_val=1, n_test=1, progress=False,
                     front_end=FrontEndConfig(db_min=-70.0))
    cfg = GanConfig(store=str(other), encoder=str(audio_run), run_dir=str(tmp_path / "r"),
                    epochs=1, **TINY)
    with pytest.raises(S2IError, match=r"made with front end 'custom \w+', not 'default'.*"
                                       r"db_min.*--mix-front-ends"):
        train_gan(cfg)
    train_gan(dataclasses.replace(cfg, mix_front_ends=True, max_batches=1))   # asked for


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, timeout=120)


def run_main(capsys: pytest.CaptureFixture[str], *args: str
             ) -> subprocess.CompletedProcess[str]:
    """``python -m trainer *args`` through the same main() in this process."""
    capsys.readouterr()
    try:
        code = trainer_main(list(args))
    except SystemExit as exc:                                        # argparse's refusals
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_cli_errors_are_one_line(tmp_path: Path, audio_run: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    # the console entry point in a process of its own once; the other refusals through its
    # main() in this process (a process each cost a start-up importing torch)
    missing = run_cli("audio", "--store", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error: store not found")
    assert len(missing.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    not_store = run_main(capsys, "gan", "--store", str(empty), "--encoder", str(audio_run))
    assert not_store.returncode == 2 and "not a dataset store" in not_store.stderr
    no_resume = run_main(capsys, "audio", "--store", str(empty), "--run-dir",
                         str(tmp_path / "x"), "--resume")
    assert no_resume.returncode == 2 and "nothing to resume" in no_resume.stderr
    for bad, expected in ((["--embedding-dim", "130"], "multiple of 4"),
                          (["--batch-size", "0"], "--batch-size must be positive"),
                          (["--epochs", "0"], "--epochs must be positive"),
                          (["--device", "cuda:1"], "cuda:1"),
                          (["--device", "tpu"], "--device must be")):
        result = run_main(capsys, "audio", "--store", str(empty), *bad)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    window = run_main(capsys, "gan", "--store", str(empty), "--encoder", str(audio_run),
                      "--ma-window", "0")
    assert window.returncode == 2 and "--ma-window must be positive" in window.stderr


def test_torchrun_two_processes_gloo(store: Path, audio_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29581", "-m", "trainer", "gan", "--store", str(store), "--encoder",
         str(audio_run), "--run-dir", str(tmp_path), "--epochs", "2", "--width", "0.125",
         "--batch-size", "8", "--max-batches", "2", "--n-gd", "2"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(tmp_path, stage="gan")
    assert state["epoch"] == 2 and state["history"][1]["d_updates"] == 2


def test_run_folder_of_another_kind_is_refused(store: Path, tmp_path: Path) -> None:
    # a store (manifest.json) is not a run folder: training there would mix the two
    with pytest.raises(S2IError, match="not a training run"):
        train_audio(AudioConfig(store=str(store), run_dir=str(store), epochs=1, **TINY))


def test_audio_resume_converts_the_earlier_decoder(store: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint of the earlier decoder (convT12 (5,3) + output padding) resumes: its
    kernel and SGD momentum get the authors' (5,4) shape with a zero fourth column."""
    from trainer.checkpoint import save_checkpoint
    from trainer.models import AudioAutoencoder

    common = dict(store=str(store), embedding_dim=64, probe_samples=10, **TINY)
    train_audio(AudioConfig(run_dir=str(tmp_path), epochs=1, **common))
    path = tmp_path / "checkpoints" / "audio_last.pt"
    state = load_checkpoint(path)
    key = "decoder.convs.11.weight"
    index = [n for n, _ in AudioAutoencoder(64, 0.125).named_parameters()].index(key)
    state["models"]["autoencoder"][key] = state["models"]["autoencoder"][key][..., :3].clone()
    state["models"]["decoder"]["convs.11.weight"] = state["models"]["autoencoder"][key]
    momentum = state["optimizers"]["autoencoder"]["state"][index]
    momentum["momentum_buffer"] = momentum["momentum_buffer"][..., :3].clone()
    save_checkpoint(path, state)
    train_audio(AudioConfig(run_dir=str(tmp_path), epochs=2, **common), resume=True)
    assert "converted the earlier audio decoder" in capsys.readouterr().err
    resumed = load_checkpoint(path)
    assert resumed["epoch"] == 2
    assert resumed["models"]["autoencoder"][key].shape[-1] == 4
