"""`python -m trainer` with no command: the built-in demo, in a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.__main__ import main as trainer_main
from trainer.checkpoint import load_checkpoint

TINY = ["--width", "0.125", "--embedding-dim", "64", "--train-per-class", "6",
        "--val-per-class", "2", "--test-per-class", "2", "--audio-epochs", "1",
        "--gan-epochs", "2", "--mc-samples", "2"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("demo") / "run"
    assert trainer_main(["--run-dir", str(run), *TINY]) == 0      # no command: the demo
    return run


def test_demo_writes_a_complete_run_folder(demo_run: Path) -> None:
    assert (demo_run / "store" / "manifest.json").is_file()
    for name in ("config_demo.json", "config_audio.json", "config_gan.json"):
        assert json.loads((demo_run / name).read_text())
    gan = load_checkpoint(demo_run / "checkpoints" / "gan_last.pt", stage="gan")
    assert gan["epoch"] == 2 and gan["embedding_dim"] == 64
    assert load_checkpoint(demo_run / "checkpoints" / "audio_last.pt", stage="audio")["epoch"] == 1
    sheet = demo_run / "samples" / "demo_test_translations.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((demo_run / "samples").glob("gan_held_out_e*.png"))
    assert list((demo_run / "tensorboard").glob("events.out.tfevents.*"))

    metrics = json.loads((demo_run / "metrics.json").read_text())
    coherence = metrics["coherence"]
    assert coherence["chance"] == pytest.approx(0.2) and coherence["mc_samples"] == 2
    assert 0.0 <= coherence["accuracy_on_generated"] <= 1.0
    assert set(coherence["per_class"]) == set(gan["classes"])
    assert 0.0 <= metrics["audio"]["linear_probe_accuracy"] <= 1.0


def test_demo_rerun_keeps_finished_stages(demo_run: Path) -> None:
    last = demo_run / "checkpoints" / "gan_last.pt"
    before = last.stat().st_mtime_ns
    assert trainer_main(["demo", "--run-dir", str(demo_run), *TINY]) == 0
    assert last.stat().st_mtime_ns == before                      # nothing retrained


def test_demo_rerun_with_more_epochs_resumes(demo_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    assert trainer_main(["demo", "--run-dir", str(run), *TINY, "--gan-epochs", "3"]) == 0
    state = load_checkpoint(run / "checkpoints" / "gan_last.pt", stage="gan")
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_demo_bad_settings_are_one_line_errors(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert trainer_main(["--run-dir", str(tmp_path / "r"), "--gan-epochs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gan-epochs" in err[0]
