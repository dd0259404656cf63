"""runtime.config: one dataclass -> command-line flags -> saved JSON, with presets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.config import (
    config_from_dict,
    config_parser,
    dataclass_from_args,
    parse_config,
    save_config,
    switch,
)
from runtime.errors import S2IError


@dataclass
class Toy:
    inputs: list[str] = field(metadata={"positional": True, "help": "files"})
    out: str = field(metadata={"help": "where"})
    width: float = 0.125
    epochs: int = 2
    fractions: tuple[float, float] = (0.5, 0.5)
    verbose: bool = True
    limit: int | None = None
    kind: str = field(default="a", metadata={"choices": ("a", "b")})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def test_flags_come_from_the_fields(tmp_path: Path) -> None:
    cfg = parse_config(Toy, ["x.wav", "y.wav", "--out", "o", "--epochs",
                             "3", "--fractions", "0.25", "0.75", "--no-verbose"], "toy")
    assert cfg == Toy(["x.wav", "y.wav"], "o", epochs=3, fractions=(0.25, 0.75), verbose=False)
    assert "--limit" in config_parser(Toy, "toy").format_help()
    save_config(cfg, tmp_path / "config_toy.json")
    assert config_from_dict(Toy, json.loads((tmp_path / "config_toy.json").read_text())) == cfg


def test_a_base_sits_between_defaults_and_flags() -> None:
    # a preset or a saved config (--resume) is a base: the flags given still win
    args = config_parser(Toy, "toy").parse_args(["x", "--out", "o", "--epochs", "5"])
    cfg = dataclass_from_args(Toy, args, width=1.0, epochs=40)
    assert (cfg.width, cfg.epochs) == (1.0, 5)


def test_bad_values_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(S2IError, match="epochs must be >= 1"):
        parse_config(Toy, ["x", "--out", "o", "--epochs", "0"], "toy")
    with pytest.raises(SystemExit):
        parse_config(Toy, ["x", "--kind", "c", "--out", "o"], "toy")
    with pytest.raises(SystemExit):     # a field without a default is a required flag
        parse_config(Toy, ["x"], "toy")
    with pytest.raises(S2IError, match="no settings"):
        config_from_dict(Toy, {"inputs": [], "out": "o", "colour": "red"})


@dataclass
class Model:
    export: str = "runs/demo/export"
    threads: int | None = None


@dataclass
class Serve:
    model: Model = field(default_factory=Model, metadata={"title": "the model"})
    port: int = 5556


def test_a_dataclass_field_is_a_titled_flag_group(tmp_path: Path) -> None:
    parser = config_parser(Serve, "serve")
    assert "the model:" in parser.format_help()
    cfg = parse_config(Serve, ["--export", "x", "--port", "7"], "serve")
    assert cfg == Serve(Model("x", None), 7)
    save_config(cfg, tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved == {"model": {"export": "x", "threads": None}, "port": 7}
    assert config_from_dict(Serve, saved) == cfg
    base = dataclass_from_args(Serve, parser.parse_args(["--threads", "2"]), **saved)
    assert base == Serve(Model("x", 2), 7)


@dataclass
class Switches:
    out: str = field(default_factory=lambda: "machine-" + "default")
    realtime: bool = switch("play at the pace of a clock")
    verbose: bool = field(default=False, metadata={"help": "more lines (default: quiet)"})


def test_switches_machine_defaults_and_default_help() -> None:
    parser = config_parser(Switches, "toy")
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--realtime", "--verbose", "--no-verbose"} <= flags and "--no-realtime" not in flags
    assert parse_config(Switches, [], "toy") == Switches("machine-default", False, False)
    assert parse_config(Switches, ["--realtime"], "toy").realtime is True
    text = " ".join(parser.format_help().split())
    assert "(default: machine-default)" in text     # a default_factory, shown as resolved
    assert "more lines (default: quiet)" in text and "quiet) (default" not in text
    assert "clock (default" not in text                 # a switch is off unless given


@dataclass
class Bench:
    source: str = field(default="runs/demo", metadata={"positional": True})
    streams: tuple[int, ...] = field(default=(), metadata={"sep": ","})
    fused: bool = field(default=True, metadata={"switch": True})
    fp16: bool = field(default=False, metadata={"switch": True})
    per_channel: bool = field(default=True, metadata={"switch": True, "flag": "--per-tensor"})
    quick: bool = field(default=False, metadata={"switch": True})
    seconds: float = 12.0


def test_switches_comma_lists_optional_positionals_and_a_preset_flag() -> None:
    options = {o for a in config_parser(Bench, "b")._actions for o in a.option_strings}
    assert options == {"-h", "--help", "--streams", "--no-fused", "--fp16", "--per-tensor",
                       "--quick", "--seconds"}
    assert parse_config(Bench, [], "b") == Bench()
    cfg = parse_config(Bench, ["x", "--streams", "4,8", "--no-fused", "--fp16", "--per-tensor"],
                       "b")
    assert cfg == Bench("x", (4, 8), fused=False, fp16=True, per_channel=False)
    quick = {"seconds": 3.0, "streams": [1, 3]}
    assert parse_config(Bench, ["--quick"], "b", presets={"quick": quick}) == \
        Bench(streams=(1, 3), quick=True, seconds=3.0)
    assert parse_config(Bench, ["--quick", "--seconds", "5"], "b",      # a flag beats the preset
                        presets={"quick": quick}).seconds == 5.0
    with pytest.raises(SystemExit):     # argparse's one line: invalid ','-separated int list
        parse_config(Bench, ["--streams", "4,x"], "b")
