"""``python -m benchmarks serve --cluster`` (also ``python -m benchmarks cluster``): the Ray hop.

On a real two-node Ray cluster started on this machine (``ray.cluster_utils.Cluster``: a head
and a node whose ``s2i_worker`` resource holds the replicas), one run measures

1. the hop's added latency per window: the same batch (B windows, K = 1, same masks) through
   the local backend and through ``ClusterTranslator`` (front -> bridge -> Serve handle ->
   replica and back), calls interleaved, p50/p99 of each and of the difference;
2. the streams the real ``s2i-serve`` holds (``benchmarks.serve``'s paced load and counting
   subscriber) with its model in-process ("local") and with ``--cluster`` against 1 and 2
   replicas, side by side.

Every process shares this machine's cores (fronts, replicas, load, subscriber): on a small
CPU box the cluster rows measure the overhead, not what more machines would give.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.serve_bench import (
    DEFAULT_OUT,
    held,
    run_server,
    sensitive_export,
)
from runtime.config import config_json, parse_config

APP = "s2i"


def start_cluster(replica_cpus: int) -> Any:
    """Head + one worker node; returns the ``Cluster`` (caller shuts it down)."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=replica_cpus, resources={"s2i_worker": 8})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    serve.start(proxy_location="Disabled")
    return cluster


def deploy(export: Path, replicas: int, threads: int) -> None:
    from ray import serve

    from runtime.cluster.deployment import S2ITranslator

    app = S2ITranslator.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0, "resources": {"s2i_worker": 1}},
        user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.002},
    ).bind(str(export), "onnxruntime-cpu", "fp32", threads)
    serve.run(app, name=APP, route_prefix=None)


def hop_latency(export: Path, spec: str, batches: list[int], calls: int, threads: int
                ) -> list[dict[str, Any]]:
    """Local vs cluster translate of the same batch, interleaved call by call."""
    from runtime.cluster import open_cluster_translator
    from runtime.frontend import FrontEndConfig, log_mel_batch
    from runtime.model.backends import open_translator
    from runtime.model.masks import draw_masks

    local = open_translator(export, backend="onnxruntime-cpu", threads=threads)
    cfg = FrontEndConfig.from_dict(local.manifest["front_end"])
    rng = np.random.default_rng(0)
    rows = []
    with open_cluster_translator(spec) as remote:
        for b in batches:
            audio = (rng.standard_normal((b, cfg.n_samples)) * 0.3).astype(np.float32)
            spectrogram = log_mel_batch(audio, cfg)[:, None].astype(np.float32)
            masks = draw_masks(local.dropout, b, rng)
            times: dict[str, list[float]] = {"local": [], "cluster": []}
            for i in range(calls + 3):
                for name in ("local", "cluster") if i % 2 else ("cluster", "local"):
                    start = time.perf_counter()
                    if name == "local":
                        out_local = local.generate(local.encode(spectrogram), masks)
                    else:
                        out_remote = remote.translate_batch(spectrogram, masks, 1)[0]
                    if i >= 3:                                  # 3 warm-up calls each
                        times[name].append((time.perf_counter() - start) * 1000)
            error = float(np.abs(out_local - out_remote).max())
            diff = np.asarray(times["cluster"]) - np.asarray(times["local"])
            row = {"batch": b, "calls": calls,
                   "local_ms": report.summarize(times["local"]),
                   "cluster_ms": report.summarize(times["cluster"]),
                   "added_ms": report.summarize(diff.tolist()),
                   "added_per_window_ms_p50": round(float(np.median(diff)) / b, 3),
                   "max_abs_difference": error}
            rows.append(row)
            print(f"hop B={b}: local p50 {row['local_ms']['p50']:.1f} ms, cluster p50 "
                  f"{row['cluster_ms']['p50']:.1f} ms, added p50 {row['added_ms']['p50']:.1f} "
                  f"p99 {row['added_ms']['p99']:.1f} ms, max |diff| {error:.2g}",
                  file=sys.stderr, flush=True)
    return rows


def hop_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| windows per call | local p50 / p99 ms | cluster p50 / p99 ms | added p50 / p99 ms "
             "| added per window p50 ms | max abs diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, cl, ad = r["local_ms"], r["cluster_ms"], r["added_ms"]
        lines.append(f"| {r['batch']} | {lo['p50']:.1f} / {lo['p99']:.1f} | {cl['p50']:.1f} / "
                     f"{cl['p99']:.1f} | {ad['p50']:.1f} / {ad['p99']:.1f} | "
                     f"{r['added_per_window_ms_p50']:.2f} | {r['max_abs_difference']:.1e} |")
    return "\n".join(lines)


def streams_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| server | N | delivered | worst stream | e2e p50 ms | e2e p99 ms | front CPU s "
             "| held |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["rows"]:
            lines.append(f"| {run['label']} | {r['streams']} | {r['delivered_fraction']:.1%} | "
                         f"{r['min_stream_fraction']:.0%} | {r['e2e_p50_ms']:.0f} | "
                         f"{r['e2e_p99_ms']:.0f} | {r['server_cpu_s']:.1f} | "
                         f"{'yes' if r['held'] else 'no'} |")
    return "\n".join(lines)


def own_ray_token() -> None:
    """Ray reads these when imported: a token of this run's own (~/.ray/auth_token is shared
    by every local cluster of this user), inherited by the nodes, fronts and bridges."""
    if not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


QUICK = {"width": 0.125, "dim": 64, "seconds": 3.0, "calls": 10, "streams": (1, 2),
         "replicas": (1,), "batches": (1,)}


@dataclass
class ClusterBenchConfig:
    """``python -m benchmarks serve --cluster``'s settings (``--quick``: the ``QUICK`` preset
    under the flags given)."""

    export: Path | None = None
    work: Path = Path("/tmp/s2i-cluster-bench")
    width: float = 0.25
    dim: int = 128
    streams: tuple[int, ...] = field(default=(2, 4, 8, 16), metadata={
        "sep": ",", "help": "N values for the stream runs"})
    replicas: tuple[int, ...] = field(default=(1, 2), metadata={
        "sep": ",", "help": "replica counts to run"})
    seconds: float = field(default=8.0, metadata={"help": "load per N"})
    hop: float = 1.0
    calls: int = field(default=60, metadata={"help": "calls per hop measurement"})
    batches: tuple[int, ...] = field(default=(1, 8), metadata={
        "sep": ",", "help": "windows per call for the hop"})
    threads: int = field(default=1, metadata={"help": "ORT threads (both sides)"})
    quick: bool = field(default=False, metadata={
        "switch": True, "help": "smoke run: tiny model, N 1,2, 3-s loads, 10 calls"})
    out: Path = DEFAULT_OUT
    name: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_config(ClusterBenchConfig, sys.argv[1:] if argv is None else argv,
                        "python -m benchmarks serve --cluster", __doc__.split("\n\n")[0],
                        presets={"quick": QUICK})
    own_ray_token()
    export = args.export or sensitive_export(
        args.work / f"export-w{args.width:g}-d{args.dim}", args.width, args.dim)
    from runtime.frontend import FrontEndConfig
    from runtime.model.manifest import load_export_manifest

    rate = FrontEndConfig.from_dict(load_export_manifest(export)["front_end"]).sample_rate
    counts, replica_counts = list(args.streams), list(args.replicas)
    here = Path(__file__).resolve().parents[1]
    grace = 2.0 * args.hop + 1.0
    local_args = ["--threads", str(args.threads)]
    runs = [run_server("local", export, here, counts, args.seconds, args.hop, rate, None,
                       local_args, grace)]
    import ray
    from ray import serve

    cluster = start_cluster(replica_cpus=max(replica_counts) + 1)
    spec = f"{cluster.address}/{APP}"
    hops: list[dict[str, Any]] = []
    try:
        for replicas in replica_counts:
            deploy(export, replicas, args.threads)
            if not hops:
                hops = hop_latency(export, spec, list(args.batches),
                                   args.calls, args.threads)
            runs.append(run_server(f"cluster, {replicas} replica{'s' * (replicas > 1)}",
                                   export, here, counts, args.seconds, args.hop, rate, None,
                                   ["--cluster", spec], grace))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    import ray as ray_module

    result = {
        "benchmark": "serve --cluster", "machine": report.machine_info(),
        "versions": {**report.versions(), "ray": ray_module.__version__},
        "note": "the front, the replicas, the load and the subscriber share this machine's "
                "cores: compare rows of one run only (machine.load_average: the load when the "
                "run started)",
        "export": str(export), "width": args.width, "embedding_dim": args.dim,
        "hop_s": args.hop, "k": 1, "seconds_per_n": args.seconds, "threads": args.threads,
        "config": config_json(args), "hop_latency": hops, "runs": runs,
        "held": {run["label"]: held(run) for run in runs},
    }
    stem = args.name or ("cluster-quick" if args.quick
                         else f"cluster-{report.machine_slug(result['machine'])}")
    md = ("The Ray hop (same batch, same masks, calls interleaved):\n\n" + hop_table(hops)
          + "\n\nStreams held (>= 99% of frames to every stream, p99 <= "
          f"{args.hop * 1000:.0f} ms): " + ", ".join(f"{k} {v}" for k, v in
                                                   result["held"].items())
          + "\n\n" + streams_table(runs))
    report.write_result(args.out, stem, result, md)
    print(md)
    return 0
