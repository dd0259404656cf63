"""``python -m benchmarks serve --quick``: the real server, a paced PUSH load process and a
counting subscriber process end to end (behaviour, not timings)."""

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
    (run,) = data["runs"]
    assert run["label"] == "after" and run["exit_code"] == 0
    assert [r["streams"] for r in run["rows"]] == [1, 3]
    for row in run["rows"]:
        # Every stream's frames are counted; the load process's CPU is recorded.
        assert row["expected_per_stream"] == 5 and row["delivered"] > 0
        assert row["load"]["cpu_s"] >= 0 and row["server_rss_mb"] > 0
        assert set(row["stage_mean_ms"]) >= {"features", "encoder", "generator", "encoding"}
    assert data["ceiling"]["streams"] >= 1 and "| after | 3 |" in result.stdout
