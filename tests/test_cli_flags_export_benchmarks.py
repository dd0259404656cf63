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
        "--host-only-wait-ms", "--host-only-processes", "--workers", "--standin-ms", "--quick",
        "--out", "--name"},
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
    "host-path": {"-h", "--help", "--streams", "--messages", "--block-ms", "--direct"},
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
                             "newest-only", "gpu-check", "web", "host-path"}


@pytest.mark.parametrize(("argv", "message"), [
    (["--bf16"], "--bf16: "),
    (["--batch-sizes", "4", "8"], "--batch-sizes must include 1"),
    (["--int8", "--int8-calibration", "bogus"], "--int8-calibration must be auto"),
])
def test_export_settings_are_checked_first_in_one_line(
        argv: list[str], message: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from export.__main__ import main
    from runtime.errors import run_cli

    assert run_cli(lambda: main([str(tmp_path / "missing.pt"), *argv])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("serve", ["--host-only", "lots"], "--host-only must be auto, none or N values"),
    ("serve", ["--load-processes", "0"], "--load-processes must be at least 1"),
    ("serve", ["--streams", "4,x"], "invalid ','-separated int list value: '4,x'"),
    ("cluster", ["--replicas", "1,two"], "invalid ','-separated int list value"),
    ("web", ["--quick", "--runs", "0"], "--runs, --k and --threads must be at least 1"),
    ("latency", ["--quick", "--k", "0"], "--k and --threads must be at least 1"),
])
def test_benchmark_settings_are_one_line_errors_before_any_work(
        command: str, argv: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.__main__ import main

    try:
        code = main([command, *argv])
    except SystemExit as exc:           # argparse's own line: usage, then the error
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith(
        ("error: ", "python -m benchmarks")), err


def test_serve_cluster_is_the_cluster_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    from benchmarks.__main__ import main

    with pytest.raises(Caught) as info:
        main(["serve", "--cluster", "--quick"])
    assert option_strings(info.value.parser) == SNAPSHOT["cluster"]
