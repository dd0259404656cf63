"""``python -m benchmarks COMMAND [options]``: run one benchmark, write benchmarks/results/."""

from __future__ import annotations

import sys

from runtime.cli import run_command

COMMANDS = {
    "store": ("benchmarks.store_bench", "build a store from train.tar.gz; load random batches"),
    "latency": ("benchmarks.latency", "per-window latency of the streaming translator"),
    "serve": ("benchmarks.serve_bench", "streams the real s2i-serve holds (batched, paced load)"),
    "host-path": ("benchmarks.host_path", "host CPU per audio message and per window, per "
                                          "stage (thread clocks; ingress, batching, ...)"),
    "cluster": ("benchmarks.cluster_bench", "the Ray hop and streams held with 1 and 2 "
                                             "replicas (= serve --cluster)"),
    "encodings": ("benchmarks.encodings", "CPU per frame, bytes and error of png/jpeg/raw "
                                          "(K = 1 and K = 8 + uncertainty)"),
    "newest-only": ("benchmarks.newest_only", "stale frames seen by a slow newest-only subscriber"),
    "gpu-check": ("benchmarks.gpu_check", "verify and time the GPU path in one command"),
    "web": ("benchmarks.web_bench", "per-window latency in the web page (ONNX Runtime Web, "
                                    "headless Chromium) and its download size"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"] and "--cluster" in argv:          # the same run, over Ray Serve
        argv = ["cluster", *argv[1:]]
        argv.remove("--cluster")
    # each benchmark's module is imported only when asked for (latency needs more)
    return run_command("python -m benchmarks", COMMANDS, argv, noun="benchmark")


if __name__ == "__main__":
    sys.exit(main())
