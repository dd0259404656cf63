"""The option strings of ``python -m export`` and every ``python -m benchmarks`` command, as a
snapshot: moving a command to the dataclass config style (runtime/config.py) keeps every flag's
name (issue 24). Each command's parser is caught where it parses, through the real dispatch."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

SNAPSHOT: dict[str, set[str]] = {
    "export": {
        "source", "-h", "--help", "--out", "--fp16", "--opset", "--batch-sizes", "--no-fused",
        "--no-audio-in", "--no-tensorrt", "--timing-cache", "--verify", "--checkpoint",
        "--no-conv-rewrite", "--int8", "--calibration-store", "--calibration-windows",
        "--int8-calibration", "--int8-format", "--int8-per-tensor", "--no-int8-gates", "--bf16"},
    "latency": {
        "-h", "--help", "--export", "--width", "--embedding-dim", "--windows", "--warmup", "--k",
        "--backends", "--threads", "--encoding", "--features", "--audio", "--realtime",
        "--no-throughput", "--max-streams", "--throughput-reps", "--throughput-cap", "--out",
        "--quick"},
    "serve": {
        "-h", "--help", "--export", "--work", "--width", "--dim", "--streams", "--seconds",
        "--hop", "--before", "--before-protocol", "--precision", "--encoding", "--server-args",
        "--ceiling-cap", "--block-ms", "--load-processes", "--host-only",
        "--host-only-processes", "--standin-ms", "--quick", "--out", "--name"},
    "cluster": {
        "-h", "--help", "--export", "--work", "--width", "--dim", "--streams", "--replicas",
        "--seconds", "--hop", "--calls", "--batches", "--threads", "--quick", "--out", "--name"},
    "web": {
        "-h", "--help", "--export", "--precision", "--runs", "--k", "--threads", "--webgpu",
        "--timeout", "--out", "--quick"},
    "store": {
        "-h", "--help", "--archive", "--store", "--limit", "--batches", "--batch-size", "--seed",
        "--results", "--quiet", "--no-quiet"},
    "encodings": {"-h", "--help", "--frames", "--export", "--out"},
    "newest-only": {"-h", "--help", "--consumer", "--hop", "--frames", "--out"},
    "gpu-check": {
        "-h", "--help", "--quick", "--no-quick", "--export", "--windows", "--reps",
        "--budget-s", "--out"},
}
CHOICES: dict[str, dict[str, Any]] = {
    "export": {"--int8-format": ["qoperator", "qdq"]},
    "latency": {"--encoding": ["png", "raw", "jpeg"], "--features": ["auto", "graph", "host"]},
    "web": {"--precision": ["auto", "int8", "fp16", "fp32"]},
}


class Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def caught_parser(monkeypatch: pytest.MonkeyPatch, command: str) -> argparse.ArgumentParser:
    """The parser ``command`` builds, caught at its ``parse_args`` (nothing runs)."""
    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    if command == "export":
        from export.__main__ import main
    else:
        from benchmarks.__main__ import main
    with pytest.raises(Caught) as info:
        main([] if command == "export" else [command])
    return info.value.parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions
            for name in (action.option_strings or [action.dest])}


@pytest.mark.parametrize("command", sorted(SNAPSHOT))
def test_every_flag_keeps_its_name(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    parser = caught_parser(monkeypatch, command)
    assert option_strings(parser) == SNAPSHOT[command]
    for action in parser._actions:
        for name in action.option_strings:
            if name in CHOICES.get(command, {}):
                assert list(action.choices or []) == CHOICES[command][name], name


def test_the_dispatch_names_every_benchmark() -> None:
    from benchmarks.__main__ import COMMANDS

    assert set(COMMANDS) == {"store", "latency", "serve", "cluster", "encodings",
                             "newest-only", "gpu-check", "web"}
