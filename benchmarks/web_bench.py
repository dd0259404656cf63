"""``python -m benchmarks web``: the translator's per-window latency in the web page (ONNX
Runtime Web in headless Chromium) and the page's download size (docs/WEB.md).

For every execution provider (WebAssembly; WebGPU when ``--webgpu`` and the browser has
an adapter), thread count and K, a fresh page is opened (``?ep=&threads=``) and its
``s2i.benchmark(k, runs)`` times ``session.run`` in the worker on windows of noise with
fresh masks, after one warm-up call. Writes ``OUT/web-<machine>.json`` and ``.md``.

    python -m benchmarks web                              # the shipped demo model
    python -m benchmarks web --export runs/demo/export --k 1 8 --threads 1 2 --webgpu
    python -m benchmarks web --quick                      # smoke test: 3 runs, K=1, 1 thread
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.browser import WEBGPU, BrowserMissing, start_chromium
from runtime.config import config_json, parse_config
from runtime.errors import S2IError
from runtime.model.shipped import default_export
from runtime.web.app import build_page, page_size, serving

DEFAULT_OUT = Path(__file__).parent / "results"
READY_JS = """const done = arguments[arguments.length - 1];
s2i.ready.then((info) => done({ok: true, info}), (e) => done({ok: false, error: String(e)}));"""
BENCH_JS = """const done = arguments[arguments.length - 1];
s2i.benchmark(arguments[0], arguments[1]).then((r) => done({ok: true, ...r}),
                                                 (e) => done({ok: false, error: String(e)}));"""


def measure(driver: Any, url: str, ep: str, threads: int, k: int, runs: int,
            timeout_s: float) -> dict[str, Any]:
    """One row: the page opened for ``ep``/``threads``, ``runs`` windows at K = ``k``."""
    driver.set_script_timeout(timeout_s)
    driver.get(f"{url}?ep={ep}&threads={threads}")
    ready = driver.execute_async_script(READY_JS)
    if not ready["ok"]:
        return {"ep": ep, "threads": threads, "k": k, "skipped": ready["error"]}
    result = driver.execute_async_script(BENCH_JS, k, runs)
    if not result["ok"]:
        return {"ep": ep, "threads": threads, "k": k, "skipped": result["error"]}
    return {"ep": ep, "threads": result["info"]["threads"], "threads_asked": threads, "k": k,
            "cross_origin_isolated": result["crossOriginIsolated"],
            "webgpu_adapter": result["info"].get("adapter"),
            "latency_ms": report.summarize(result["times"])}


def markdown(results: dict[str, Any]) -> str:
    lines = ["| backend | threads | K | p50 ms | p95 ms | mean ms |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['ep']} | {row['threads']} | {row['k']} | skipped: "
                         f"{row['skipped']} | | |")
            continue
        lat = row["latency_ms"]
        lines.append(f"| onnxruntime-web {row['ep']} | {row['threads']} | {row['k']} | "
                     f"{lat['p50']:.1f} | {lat['p95']:.1f} | {lat['mean']:.1f} |")
    size = results["download_bytes"]
    lines += ["", "| download | page | ONNX Runtime Web | model | total |", "|---|---|---|---|---|"]
    for ep, s in size.items():
        lines.append(f"| {ep} | {s['page'] / 1e3:.0f} kB | {s['onnxruntime_web'] / 1e6:.1f} MB"
                     f" | {s['model'] / 1e6:.2f} MB | {s['total'] / 1e6:.1f} MB |")
    return "\n".join(lines)


QUICK = {"runs": 3, "k": (1,), "threads": (1,)}


@dataclass
class WebBenchConfig:
    """``python -m benchmarks web``'s settings (``--quick``: the ``QUICK`` preset under the
    flags given)."""

    export: str | None = field(default=None, metadata={
        "help": "export with an audio-in translator (default: runs/demo/export when it "
                "exists, else the shipped demo model)"})
    precision: str = field(default="auto", metadata={
        "choices": ["auto", "int8", "fp16", "fp32"]})
    runs: int = field(default=30, metadata={"help": "timed windows per row"})
    k: tuple[int, ...] = field(default=(1, 8), metadata={"help": "K values"})
    threads: tuple[int, ...] = field(default=(1, 2), metadata={
        "help": "WebAssembly thread counts"})
    webgpu: bool = field(default=False, metadata={
        "switch": True, "help": "also WebGPU rows (Chromium with --enable-unsafe-webgpu; "
                                "skipped with the reason when the browser has no adapter)"})
    timeout: float = field(default=600.0, metadata={"help": "seconds per row"})
    out: Path = DEFAULT_OUT
    quick: bool = field(default=False, metadata={"switch": True,
                                                 "help": "3 runs, K=1, 1 thread"})

    def __post_init__(self) -> None:
        if self.runs < 1 or min(self.k) < 1 or min(self.threads) < 1:
            raise ValueError("--runs, --k and --threads must be at least 1")


def web_main(argv: list[str] | None = None) -> int:
    args = parse_config(WebBenchConfig, sys.argv[1:] if argv is None else argv,
                        "python -m benchmarks web", __doc__, presets={"quick": QUICK})
    export = args.export or default_export()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s2i-web-bench-") as tmp:
        root = build_page(export, Path(tmp) / "page", args.precision)
        sizes = {ep: page_size(root, ep) for ep in ("wasm", "webgpu")}
        plan = [("wasm", t, k) for t in args.threads for k in args.k]
        if args.webgpu:
            plan += [("webgpu", 1, k) for k in args.k]
        with serving(root) as url:
            for gpu in sorted({ep == "webgpu" for ep, _, _ in plan}):
                try:
                    driver = start_chromium(Path(tmp) / f"profile-{gpu}",
                                            WEBGPU if gpu else (), gpu=gpu)
                except BrowserMissing as exc:
                    raise S2IError(str(exc)) from exc
                try:
                    for ep, threads, k in plan:
                        if (ep == "webgpu") != gpu:
                            continue
                        row = measure(driver, url, ep, threads, k, args.runs, args.timeout)
                        rows.append(row)
                        lat = row.get("latency_ms")
                        print(f"{ep} threads={threads} K={k}: " + (
                            f"p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms" if lat
                            else f"skipped: {row['skipped']}"), flush=True)
                finally:
                    driver.quit()
    config = json.loads((Path(export) / "manifest.json").read_text())
    results = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": report.machine_info(), "browser": "headless Chromium (Selenium)",
               "config": config_json(args),
               "export": str(export), "embedding_dim": config.get("embedding_dim"),
               "width": config.get("width"), "runs": args.runs, "rows": rows,
               "download_bytes": sizes,
               "timing": "session.run in the page's worker (performance.now), noise "
                         "windows, fresh masks, one warm-up call per page"}
    stem = f"web-{results['machine']['name']}{'-quick' if args.quick else ''}"
    report.write_result(args.out, stem, results, markdown(results))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


def main(argv: list[str] | None = None) -> int:
    return web_main(argv)
