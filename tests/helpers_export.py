"""Build a tiny freshly initialised translator, save it as a GAN checkpoint and export it.

Used by the export, backend, runtime and benchmark tests::

    from helpers_export import make_tiny_export   # tests/ is on sys.path under pytest
    export_dir = make_tiny_export(tmp_path / "export")

A test file that only reads its export takes the session's shared one instead
(``shared_export(tmp_path_factory, embedding_dim=16, fused=True)``): each set of options is
built once per pytest session, whichever file asks first (an export costs 5-20 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data.prepare_common import VEGAS_CLASSES

CLASSES = list(VEGAS_CLASSES)


def make_tiny_checkpoint(path: str | Path, width: float = 0.125, embedding_dim: int = 512,
                         seed: int = 0, randomize_batchnorm: bool = True,
                         input_sensitive: bool = False) -> Path:
    """A GAN checkpoint (ARCHITECTURE.md layout) of a freshly initialised translator.

    ``randomize_batchnorm`` gives every BatchNorm non-trivial running statistics and
    affine parameters, so that folding them is really exercised. ``input_sensitive``
    instead calibrates them on synthetic sounds (``trainer.calibrate``): the images then
    change with the audio and with the masks by tens of grey levels, as a data-flow test needs.
    """
    from trainer.calibrate import calibrate_batchnorm
    from trainer.checkpoint import save_untrained_translator
    from trainer.models import AudioEncoder, DenseGenerator

    torch.manual_seed(seed)
    encoder = AudioEncoder(embedding_dim, width)
    generator = DenseGenerator(embedding_dim, width)
    if input_sensitive:
        calibrate_batchnorm(encoder, generator, seed)
    elif randomize_batchnorm:
        for module in [*encoder.modules(), *generator.modules()]:
            if isinstance(module, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.uniform_(0.8, 1.2)
                    module.bias.uniform_(-0.1, 0.1)
    return save_untrained_translator(path, encoder, generator, embedding_dim, width,
                                     "tests.helpers_export: freshly initialised", CLASSES)


def make_tiny_export(out_dir: str | Path, width: float = 0.125, embedding_dim: int = 512,
                     fp16: bool = False, seed: int = 0, fused: bool = False,
                     input_sensitive: bool = False) -> Path:
    """Checkpoint + export into ``out_dir`` (the checkpoint goes to ``<out_dir>.ckpt.pt``);
    returns the export folder. About 5 s at width 0.125 (+5 s with ``fp16``)."""
    from export.translator import ExportConfig, export_translator

    out_dir = Path(out_dir)
    checkpoint = make_tiny_checkpoint(out_dir.parent / f"{out_dir.name}.ckpt.pt", width,
                                      embedding_dim, seed, input_sensitive=input_sensitive)
    return export_translator(ExportConfig(checkpoint, out_dir, fp16=fp16, fused=fused,
                                          tensorrt=False))


def shared_export(tmp_path_factory, **options) -> Path:
    """``make_tiny_export(**options)`` built once per pytest session and shared by every test
    file asking for the same options (its checkpoint beside it, as ``make_tiny_export``
    writes it). Read only: a test that edits an export edits a copy (``shutil.copytree``)."""
    name = "-".join(f"{key}={value}" for key, value in sorted(options.items()))
    export = tmp_path_factory.getbasetemp() / f"shared-export-{name or 'default'}"
    if not (export / "manifest.json").is_file():
        make_tiny_export(export, **options)
    return export
