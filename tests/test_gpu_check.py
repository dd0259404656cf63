"""``python -m benchmarks gpu-check --quick`` runs end to end on a CPU machine: every GPU row
is skipped with its reason, the CPU rows run, the JSON and the table are written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import gpu_check
from runtime.model.backends import list_backends

GPU_ROWS = {("onnxruntime-cuda", "fp32"), ("onnxruntime-cuda", "fp16"), ("tensorrt", "fp32"),
            ("tensorrt", "fp16")}
_SESSION: dict[str, SimpleNamespace] = {}


def quick_gpu_check(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``gpu-check --quick``, run once per session. Its streams step runs the real
    ``python -m benchmarks serve --quick`` (a subprocess): that run's results folder (copied
    before gpu-check's temporary folder goes) and its output are kept, for
    test_benchmark_serve.py to check in detail (the suite runs the serve benchmark once)."""
    if "run" not in _SESSION:
        out = tmp_path_factory.mktemp("gpu-check")
        real_run, serves = subprocess.run, []

        def run(*args, **kwargs):                # the real subprocess.run, watched
            done = real_run(*args, **kwargs)
            command = [str(a) for a in done.args] if isinstance(done.args, list) else []
            if command[1:4] == ["-m", "benchmarks", "serve"]:
                results = Path(command[command.index("--out") + 1])
                if results.is_dir():
                    shutil.copytree(results, out / "serve")
                serves.append(done)
            return done

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gpu_check.subprocess, "run", run)
            code = gpu_check.main(["--quick", "--out", str(out)])
        (path,) = out.glob("gpu-check-*.json")
        _SESSION["run"] = SimpleNamespace(code=code, results=json.loads(path.read_text()),
                                          out=out, serves=serves, serve_out=out / "serve")
    return _SESSION["run"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    run = quick_gpu_check(tmp_path_factory)
    return run.code, run.results, run.out


def test_quick_check_runs_every_step_and_writes_json_and_table(checked) -> None:
    code, results, out = checked
    assert code == 0, results["steps"]
    assert results["format"] == "s2i-gpu-check"
    assert set(results["steps"]) == {"environment", "export", "parity", "model latency",
                                     "end-to-end png", "end-to-end raw", "streams"}
    assert all(s["status"] == "ok" for s in results["steps"].values()), results["steps"]
    env = results["environment"]
    assert env["onnxruntime_builds"] and "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert "tensorrt_unavailable" in env and "driver_cuda" in env
    table = next(out.glob("gpu-check-*.md")).read_text()
    assert "| step | status |" in table and "Parity against ONNX Runtime CPU FP32" in table


def test_parity_rows_cover_chunking_and_can_fail(checked) -> None:
    _, results, _ = checked
    cpu16 = [r for r in results["parity"] if r["backend"] == "onnxruntime-cpu"]
    assert [r["k"] for r in cpu16] == [1, 8, 64, 100]       # 100 > the profile max of 64
    assert all(r["ok"] and r["rms_relative_error"] <= r["limit_rms"] for r in cpu16)
    # the reference's images differ across the batch far more than the limit
    assert min(results["reference_sensitivity"].values()) > 0.3


def test_gpu_rows_are_skipped_with_reasons_where_unavailable(checked) -> None:
    _, results, _ = checked
    unavailable = {r["name"] for r in list_backends() if not r["available"]}
    if not unavailable:
        pytest.skip("every GPU backend is available here")
    steps = ("parity", "model latency", "end-to-end png", "end-to-end raw")
    skipped = {(s["step"], s["backend"], s["precision"]): s["reason"]
               for s in results["skipped"] if "backend" in s}
    for step in steps:
        for backend, precision in GPU_ROWS:
            if backend in unavailable:
                reason = skipped[(step, backend, precision)]
                assert reason and "\n" not in reason
    assert any(r["backend"] == "onnxruntime-cpu" for r in results["model_latency"])
    e2e = {(r["backend"], r["k"], r["encoding"]) for r in results["end_to_end"]}
    assert {("onnxruntime-cpu", k, e) for k in (1, 8) for e in ("png", "raw")} <= e2e
    streams = [s for s in results["skipped"] if s.get("step") == "streams"]
    assert results["streams"] or (streams and streams[0]["reason"])
