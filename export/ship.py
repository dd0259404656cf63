"""``python -m export.ship EXPORT --keys KEY ... --out DIR``: a smaller copy of an export
holding only the chosen model files, its manifest's ``models`` cut to them (every other
field kept, ``shipped`` added), checked on both sides by ``load_export_manifest``. Used to
make the demo model shipped in the package (``runtime/model/demo_export``, docs/WEB.md).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runtime.artifacts import atomic_dir, atomic_write_json
from runtime.config import parse_config
from runtime.errors import S2IError, run_cli
from runtime.model.manifest import load_export_manifest


def ship_export(export_dir: str | Path, keys: list[str], out_dir: str | Path) -> Path:
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    manifest = load_export_manifest(export_dir)
    missing = [key for key in keys if key not in manifest["models"]]
    if missing:
        raise S2IError(f"{export_dir}/manifest.json has no model {', '.join(missing)}; it has "
                       f"{', '.join(sorted(manifest['models']))}")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise S2IError(f"{out_dir} is not empty and not an export; give a new or empty folder")
    models = {key: manifest["models"][key] for key in keys}
    shipped = {**manifest, "models": models,
               "shipped": {"from": str(export_dir), "models": list(keys),
                           "all_models": sorted(manifest["models"])}}
    with atomic_dir(out_dir) as tmp:
        for entry in models.values():
            target = tmp / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(export_dir / entry["file"], target)
        atomic_write_json(tmp / "manifest.json", shipped)
        load_export_manifest(tmp)
    return out_dir


@dataclass
class ShipConfig:
    export: Path = field(metadata={"positional": True, "help": "the export to copy from"})
    keys: list[str] = field(metadata={"help": "manifest model keys to keep"})
    out: Path = field(metadata={"help": "the folder to write (new, empty or an export)"})


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        args = parse_config(ShipConfig, sys.argv[1:] if argv is None else argv,
                            "python -m export.ship", __doc__)
        out = ship_export(args.export, args.keys, args.out)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"wrote {out} ({size / 1e6:.2f} MB: {', '.join(args.keys)})")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
