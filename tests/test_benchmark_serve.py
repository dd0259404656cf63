"""``python -m benchmarks serve --quick``: the real server, paced PUSH load processes and a
counting subscriber process end to end, then the same server with its model replaced by the
constant-time stand-in (the host-only row); behaviour, not timings. The run checked is the
one ``gpu-check --quick`` makes in its streams step (tests/test_gpu_check.py: the same
command on gpu-check's own export, 3-s loads at the default 1-s hop), so that the suite runs
the serve benchmark once."""

from __future__ import annotations

import json

from test_gpu_check import quick_gpu_check


def test_serve_benchmark_quick(tmp_path_factory):
    check = quick_gpu_check(tmp_path_factory)
    (result,) = check.serves
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.args and "--export" in result.args
    data = json.loads((check.serve_out / "serve.json").read_text())
    assert (data["seconds_per_n"], data["hop_s"]) == (3.0, 1.0)
    run, host_only, host_two = data["runs"]
    assert run["label"] == "after" and run["exit_code"] == 0 and run["standin_ms"] is None
    assert [r["streams"] for r in run["rows"]] == [1, 3]
    # The host-only runs are the real server with the stand-in model, and say so everywhere;
    # the second splits the streams between two server processes (both deliver).
    for host in (host_only, host_two):
        assert "constant-time stand-in" in host["label"] and host["exit_code"] == 0
        assert "standin_serve.py" in host["command"] and host["standin_ms"] == 2.0
        assert [r["streams"] for r in host["rows"]] == [4]
        assert host["label"] in data["targets"]
    assert (host_only["servers"], host_two["servers"]) == (1, 2)
    assert host_two["rows"][0]["min_stream_fraction"] > 0
    assert "speedup_vs_1_process" in data["targets"][host_two["label"]]
    assert "stand-in" in result.stdout
    for row in run["rows"] + host_only["rows"] + host_two["rows"]:
        # Every stream's frames are counted; the load processes' CPU is recorded.
        assert row["expected_per_stream"] == 3 and row["delivered"] > 0    # windows at 1, 2, 3 s
        assert row["load"]["cpu_s"] >= 0 and row["server_rss_mb"] > 0
        assert row["load"]["processes"] == min(2, row["streams"])
        assert set(row["stage_mean_ms"]) >= {"features", "encoder", "generator", "encoding"}
        # Host CPU per window per stage, from the server's thread clocks (--stats-file).
        per_window = row["host_cpu"]["ms_per_window"]
        assert set(per_window) >= {"ingress", "batching", "features", "model", "split",
                                   "encode", "publish", "other", "host"}
        assert row["host_cpu"]["frames"] > 0 and per_window["host"] > 0
    assert data["ceiling"]["streams"] >= 1 and "| after | 3 |" in result.stdout
