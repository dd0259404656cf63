"""``python -m export [RUN_OR_CHECKPOINT] [--fp16] [--out DIR] [--opset N] [--batch-sizes ...]``

Exports a trained translator (a run folder's newest GAN checkpoint, or a checkpoint file)
to ONNX (+FP16 with ``--fp16``), checks ONNX Runtime against PyTorch, builds TensorRT
engines where TensorRT and a GPU exist, and writes the manifest the runtime loads.
``python -m export --verify EXPORT_DIR`` re-runs parity of every file of an existing export
against its checkpoint (exit 1 on any mismatch).

The options are ``export.translator.ExportConfig``'s fields (runtime/config.py); the resolved
config is saved in the manifest (``manifest["config"]``).
"""

from __future__ import annotations

import sys

from runtime.cli import raise_on_signals
from runtime.config import parse_config
from runtime.errors import S2IError, run_cli


def main(argv: list[str] | None = None) -> int:
    """SIGINT/SIGTERM at any moment: the half-written export is removed, one line, exit
    130/143 (``runtime.cli.raise_on_signals``)."""
    with raise_on_signals():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    # torch: imported under raise_on_signals
    from export.translator import DEFAULT_RUN, ExportConfig, export_translator

    config = parse_config(ExportConfig, list(sys.argv[1:] if argv is None else argv),
                          "python -m export", __doc__.split("\n\n")[1])
    if config.verify is not None:
        from export.verify import verify_export

        return 0 if verify_export(config.verify, config.checkpoint) else 1
    if not config.source.exists():
        hint = " (train the demo first: python -m trainer)" if config.source == DEFAULT_RUN \
            else ""
        raise S2IError(f"{config.source} not found: expected a run folder or a GAN "
                       f"checkpoint{hint}")
    export_translator(config, log=print)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
