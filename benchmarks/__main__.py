"""``python -m benchmarks COMMAND [options]``: run one benchmark, write benchmarks/results/."""

from __future__ import annotations

import importlib
import sys

from runtime.errors import run_cli

COMMANDS = {
    "store": ("benchmarks.store_bench", "build a store from train.tar.gz; load random batches"),
    "latency": ("benchmarks.latency", "per-window latency of the streaming translator"),
    "serve": ("benchmarks.serve_bench", "streams the real s2i-serve holds (batched, paced load)"),
    "cluster": ("benchmarks.cluster_bench", "the Ray hop and streams held with 1 and 2 "
                                             "replicas (= serve --cluster)"),
    "newest-only": ("benchmarks.newest_only", "stale frames seen by a slow newest-only subscriber"),
    "gpu-check": ("benchmarks.gpu_check", "verify and time the GPU path in one command"),
}


def usage() -> str:
    lines = ["usage: python -m benchmarks COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`python -m benchmarks COMMAND --help` for options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"error: unknown benchmark '{command}'; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if command == "serve" and "--cluster" in argv:           # the same run, over Ray Serve
        command = "cluster"
        argv.remove("--cluster")
    module = importlib.import_module(COMMANDS[command][0])   # lazily: latency needs more
    return run_cli(lambda: module.main(argv))


if __name__ == "__main__":
    sys.exit(main())
