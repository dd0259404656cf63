"""``python -m trainer [command] [options]``; with no command, the built-in demo."""

from __future__ import annotations

import sys

from runtime.cli import run_command

COMMANDS = {
    "demo": ("trainer.demo", "build the demo set, train a small translator, write a run folder"),
    "prepare": ("trainer.data.prepare", "build a dataset store (videos, s2i_data JPG/bin, demo)"),
    "audio": ("trainer.train.audio", "train the audio autoencoder"),
    "gan": ("trainer.train.gan", "train the generator and discriminator on a frozen encoder"),
    "sample": ("trainer.evaluate.sample", "translate the sounds of a split into images"),
    "label": ("trainer.evaluate.label", "serve the labelling page for generated images"),
    "informativity": ("trainer.evaluate.informativity", "train the per-class informativity "
                      "classifiers"),
    "evaluate": ("trainer.evaluate.report",
                 "score a run's checkpoints and write the paper's reports"),
}


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m trainer", COMMANDS, argv, default="demo")


if __name__ == "__main__":
    sys.exit(main())
