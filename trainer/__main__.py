"""``python -m trainer [command] [options]``; with no command, the built-in demo."""

from __future__ import annotations

import importlib
import sys

from runtime.errors import run_cli

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


def usage() -> str:
    lines = ["usage: python -m trainer [command] [options]", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "With no command, runs `demo`. `python -m trainer COMMAND --help` for options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "demo"
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return run_cli(lambda: module.main(argv))


if __name__ == "__main__":
    sys.exit(main())
