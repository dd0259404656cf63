"""The latency benchmark runs end to end (real export, runtime loop, ZeroMQ, subscriber
process) and writes valid results. Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import latency, report

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("bench")
    real_open, real_write = latency.open_backend, report.write_json
    writes: list[tuple[bool, int]] = []    # (partial, rows so far) at each write

    def open_backend(name: str, precision: str, *args, **kwargs):
        if precision == "fp16":    # stands in for a GPU backend running out of memory
            raise RuntimeError("CUDA failure 2: out of memory ; GPU=0\nmore")
        return real_open(name, precision, *args, **kwargs)

    def write_json(path, results) -> None:
        writes.append((bool(results.get("partial")), len(results["latency"])))
        real_write(path, results)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency, "open_backend", open_backend)
        patch.setattr(report, "write_json", write_json)
        assert latency.main(["--quick", "--windows", "12", "--out", str(out), "--backends",
                             "pytorch-eager", "onnxruntime-cpu:fp32",
                             "onnxruntime-cpu:fp16"]) == 0
    # written after every row (partial), then once complete
    assert [rows for partial, rows in writes if partial][:2] == [1, 2]
    assert writes[-1] == (False, 4)
    files = sorted(out.glob("latency-*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text()), out


def test_quick_run_writes_json_markdown_and_plot(quick_results: tuple[dict, object]) -> None:
    results, out = quick_results
    assert results["format"] == report.RESULTS_FORMAT
    for key in ("machine", "versions", "settings", "latency", "skipped", "throughput",
                "targets"):
        assert key in results
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert results["versions"]["numpy"] and results["versions"]["pyzmq"]
    assert results["settings"]["windows"] == 12 and results["settings"]["k"] == [1, 2]
    ran = {(r["backend"], r["k"]) for r in results["latency"]}
    skipped = {s["backend"] for s in results["skipped"]}
    # every requested row either ran for each K or was skipped with a reason
    for backend in ("pytorch-eager", "onnxruntime-cpu"):
        assert {(backend, 1), (backend, 2)} <= ran or backend in skipped
    assert all(s["reason"] for s in results["skipped"])
    md = (out / "latency.md").read_text()
    assert "| backend |" in md and "pytorch-eager" in md
    png = next(out.glob("latency-*.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_row_has_windows_stages_and_consistent_stats(
        quick_results: tuple[dict, object]) -> None:
    results, _ = quick_results
    assert results["latency"], "no backend ran"
    for row in results["latency"]:
        e2e = row["end_to_end_ms"]
        assert row["windows"] == 12 == e2e["count"] == len(row["samples_ms"]["end_to_end"])
        assert 0 < e2e["min"] <= e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
        assert set(row["stages_ms"]) == {*report.STAGES, "other"}
        for stage in report.STAGES:
            assert row["stages_ms"][stage]["count"] == 12
            assert row["stages_ms"][stage]["min"] >= 0
        # the stages cannot add up to more than the window's end-to-end time
        staged = sum(row["stages_ms"][s]["p50"] for s in report.STAGES)
        assert staged <= e2e["max"] * 1.01
        if row["backend"] != "pytorch-eager":
            ratio = row["speedup_vs_eager"]
            assert ratio["baseline"] == "pytorch-eager" and math.isfinite(ratio["p50"])


def test_throughput_curve_is_searched_within_the_limit(
        quick_results: tuple[dict, object]) -> None:
    results, _ = quick_results
    assert len(results["throughput"]) == len(results["latency"])
    for row in results["throughput"]:
        sizes = [p["streams"] for p in row["curve"]]
        assert sizes == sorted(sizes) and sizes[0] == 1 and max(sizes) <= 8
        assert 0 <= row["streams"] <= 8
        fits = [p["streams"] for p in row["curve"] if p["ok"]]
        assert row["streams"] == (max(fits) if fits else 0)
        for point in row["curve"]:   # CPU rows: model and features share the cores
            assert not row["pipelined"]
            assert point["step_p99_ms"] == pytest.approx(point["p99_ms"]
                                                         + point["features_p99_ms"], abs=2e-3)
            assert point["ok"] == (point["step_p99_ms"] <= row["budget_ms"])


def test_out_of_memory_is_a_skipped_row_with_its_reason(
        quick_results: tuple[dict, object]) -> None:
    results, _ = quick_results
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in results["skipped"]}
    reason = skipped[("onnxruntime-cpu", "fp16")]
    assert reason.startswith("out of memory: RuntimeError: CUDA failure 2") and "\n" not in reason
    assert {(r["backend"], r["precision"]) for r in results["latency"]} == {
        ("pytorch-eager", "fp32"), ("onnxruntime-cpu", "fp32")}


def test_isolation_helpers() -> None:
    from benchmarks.isolation import is_out_of_memory, release_memory, skip_reason

    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: cudaErrorMemoryAllocation"))
    assert not is_out_of_memory(ValueError("bad shape"))
    assert skip_reason(ValueError("bad shape\nmore")) == "failed: ValueError: bad shape"
    release_memory()


def test_unknown_backend_is_a_clear_error() -> None:
    from runtime.errors import S2IError

    with pytest.raises(S2IError, match="unknown backend row 'onnx-magic'"):
        latency.plan_rows(["onnx-magic"])


def test_summary_percentiles() -> None:
    stats = report.summarize(list(range(1, 101)))
    assert stats["count"] == 100 and stats["max"] == 100 and stats["min"] == 1
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    from runtime.errors import S2IError

    with pytest.raises(S2IError, match="--k"):
        latency.main(["--quick", "--k", "0", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("latency-*"))
