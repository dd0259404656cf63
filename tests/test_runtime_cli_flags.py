"""Every runtime command keeps its flags: the option strings of each console script (and of
``python -m runtime.cluster.local``), whether each takes a value, and its choices, as they were
before the commands moved to runtime.config's dataclass style (issue 24); the commands share
their option groups as types; a group's values are checked with one line."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import pytest

COMMANDS = {"s2i-serve": "runtime.apps.serve", "s2i-stream": "runtime.apps.stream",
            "s2i-capture": "runtime.apps.capture", "s2i-view": "runtime.apps.view",
            "s2i-keys": "runtime.apps.keys", "s2i-web": "runtime.web.app",
            "cluster.local": "runtime.cluster.local"}


class _Caught(BaseException):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def flags_of(module: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``{option or positional: (takes a value, sorted choices or None)}`` of the parser a
    command's ``main`` builds (caught at its ``parse_args``, before anything runs)."""
    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Caught) as caught:
        importlib.import_module(module).main(["--help"])
    flags: dict[str, Any] = {}
    for action in caught.value.parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        choices = sorted(action.choices) if action.choices else None
        for name in action.option_strings or [action.dest]:
            flags[name] = (action.nargs != 0, choices)
    return flags


SOURCE = {"--mic": (False, None), "--file": (True, None), "--stdin": (False, None),
          "--list-devices": (False, None), "--device": (True, None),
          "--realtime": (False, None), "--loop": (False, None), "--rate": (True, None),
          "--channels": (True, None), "--format": (True, ["f32", "s16"])}
MODEL = {"--export": (True, None), "--backend": (True, None),
         "--precision": (True, ["fp16", "fp32", "int8"]),
         "--features": (True, ["auto", "graph", "host"]), "--hop": (True, None),
         "--samples": (True, None), "--uncertainty": (False, None),
         "--encoding": (True, ["jpeg", "png", "raw"]), "--encoding-level": (True, None),
         "--seed": (True, None), "--threads": (True, None), "--cluster": (True, None),
         "--pub": (True, None), "--topic": (True, None), "--wait-subscribers": (True, None)}
BATCHING = {"--max-batch": (True, None), "--max-wait-ms": (True, None),
            "--encode-threads": (True, None)}
SERVER_SECURITY = {"--curve-secret": (True, None), "--allow-subscribers": (True, None)}
CLIENT_SECURITY = {"--curve-secret": (True, None), "--server-key": (True, None),
                   "--retry": (False, None)}

EXPECTED = {
    "s2i-serve": {"--bind": (True, None), "--max-streams": (True, None),
                  "--idle-expiry": (True, None), "--stats-file": (True, None),
                  "--workers": (True, None),
                  **MODEL, **BATCHING, **SERVER_SECURITY, "--allow-nodes": (True, None)},
    "s2i-stream": {**SOURCE, **MODEL, **SERVER_SECURITY, "--stream-id": (True, None)},
    "s2i-capture": {**SOURCE, "--connect": (True, None), "--send-rate": (True, None),
                    "--stream-id": (True, None), "--block-ms": (True, None),
                    **CLIENT_SECURITY},
    "s2i-view": {"--connect": (True, None), "--topic": (True, None), "--out": (True, None),
                 "--web": (True, None), "--host": (True, None), "--count": (True, None),
                 "--newest-only": (False, None), **CLIENT_SECURITY},
    "s2i-keys": {"name": (True, None), "--dir": (True, None)},
    "s2i-web": {"--export": (True, None),
                "--precision": (True, ["auto", "fp16", "fp32", "int8"]),
                "--out": (True, None), "--build-only": (False, None), "--ort": (True, None),
                "--host": (True, None), "--port": (True, None)},
    "cluster.local": {"command": (True, ["deploy", "env", "start", "status", "stop"]),
                      "--dir": (True, None), "--worker-cpus": (True, None),
                      "--worker-gpus": (True, None), "--timeout": (True, None),
                      "--export": (True, None), "--replicas": (True, None),
                      "--backend": (True, None), "--threads": (True, None),
                      "--app": (True, None)},
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_keeps_its_flags(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert flags_of(COMMANDS[command], monkeypatch) == EXPECTED[command]


def test_commands_share_option_groups_as_types() -> None:
    import dataclasses
    import typing

    from runtime.apps.capture import CaptureConfig
    from runtime.apps.serve import ServeConfig
    from runtime.apps.stream import StreamConfig
    from runtime.apps.view import ViewConfig

    def groups(cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)
                if dataclasses.is_dataclass(hints[f.name])}

    serve, stream = groups(ServeConfig), groups(StreamConfig)
    assert [serve[g] for g in ("model", "publish")] == [stream[g] for g in ("model", "publish")]
    assert issubclass(serve["security"], stream["security"])   # plus --allow-nodes
    assert groups(CaptureConfig)["security"] is groups(ViewConfig)["security"]
    assert groups(CaptureConfig)["source"] is stream["source"]


def test_group_values_are_checked_with_one_line() -> None:
    import zmq

    from runtime.errors import S2IError
    from runtime.serve.options import BatchingOptions, batching
    from runtime.wire.security import ClientCurve, NodeServerCurve, ServerCurve

    assert batching(BatchingOptions(), "onnxruntime-cpu") == (64, 0.01)
    assert batching(BatchingOptions(max_wait_ms=0), "tensorrt") == (512, 0.0)
    with pytest.raises(S2IError, match="--max-batch must be at least 1, got 0"):
        batching(BatchingOptions(max_batch=0), "onnxruntime-cpu")
    ctx = zmq.Context()
    try:
        assert ServerCurve().open(ctx) is None
        with pytest.raises(S2IError, match="^--allow-subscribers needs --curve-secret"):
            ServerCurve(allow_subscribers="subs").open(ctx)
        with pytest.raises(S2IError, match="^--curve-secret needs --allow-nodes"):
            NodeServerCurve(curve_secret="server.key_secret", allow_subscribers="subs").open(ctx)
    finally:
        ctx.term()
    assert ClientCurve().keys() is None
    with pytest.raises(S2IError, match="^CURVE needs both --curve-secret"):
        ClientCurve(server_key="server.key").keys()


def test_a_bad_value_is_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.apps.capture import main

    assert main(["--stdin", "--block-ms", "5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --block-ms must be between 10 and 1000, got 5"]
    with pytest.raises(SystemExit) as exited:           # argparse's own: a wrong choice
        main(["--stdin", "--format", "s24"])
    assert exited.value.code == 2 and "invalid choice: 's24'" in capsys.readouterr().err
