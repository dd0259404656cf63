"""docs/ARCHITECTURE.md is the complete map: every module of trainer/, export/, runtime/ and
benchmarks/ is named in it (by path, ``runtime/serve/ingress.py``, or dotted,
``runtime.serve.ingress``), and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "export", "runtime", "benchmarks")
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py"))


def test_every_module_is_named_in_the_architecture_map() -> None:
    text = DOC.read_text()
    missing = [str(p) for p in modules()
               if str(p) not in text and ".".join(p.with_suffix("").parts) not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {', '.join(missing)}"


def test_every_module_path_in_the_map_exists() -> None:
    pattern = r"\b((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)\b"
    named = set(re.findall(pattern, DOC.read_text()))
    gone = sorted(p for p in named if not (ROOT / p).is_file())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {', '.join(gone)}"
