"""``python -m benchmarks serve --quick``: the real server, paced PUSH load processes and a
counting subscriber process end to end, then the same server with its model replaced by the
constant-time stand-in (the host-only row); behaviour, not timings."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers_runtime import tiny_export


def test_serve_benchmark_quick(tmp_path_factory, tmp_path):
    export = tiny_export(tmp_path_factory)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "serve", "--quick", "--export", str(export),
         "--out", str(tmp_path), "--hop", "0.5"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "serve-quick.json").read_text())
    run, host_only = data["runs"]
    assert run["label"] == "after" and run["exit_code"] == 0 and run["standin_ms"] is None
    assert [r["streams"] for r in run["rows"]] == [1, 3]
    # The host-only run is the real server with the stand-in model, and says so everywhere.
    assert "constant-time stand-in" in host_only["label"] and host_only["exit_code"] == 0
    assert "standin_serve.py" in host_only["command"] and host_only["standin_ms"] == 2.0
    assert [r["streams"] for r in host_only["rows"]] == [4]
    assert host_only["label"] in data["targets"] and "stand-in" in result.stdout
    for row in run["rows"] + host_only["rows"]:
        # Every stream's frames are counted; the load processes' CPU is recorded.
        assert row["expected_per_stream"] == 5 and row["delivered"] > 0
        assert row["load"]["cpu_s"] >= 0 and row["server_rss_mb"] > 0
        assert row["load"]["processes"] == min(2, row["streams"])
        assert set(row["stage_mean_ms"]) >= {"features", "encoder", "generator", "encoding"}
        # Host CPU per window per stage, from the server's thread clocks (--stats-file).
        per_window = row["host_cpu"]["ms_per_window"]
        assert set(per_window) >= {"ingress", "batching", "features", "model", "split",
                                   "encode", "publish", "other", "host"}
        assert row["host_cpu"]["frames"] > 0 and per_window["host"] > 0
    assert data["ceiling"]["streams"] >= 1 and "| after | 3 |" in result.stdout
