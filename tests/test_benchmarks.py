"""The benchmark scripts keep working as the package moves: every name they import from geomed_ssl exists.

They are not run here (they are long); a moved module once left ``benchmarks/dense_pixels.py`` failing at import.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def library_imports() -> list[tuple[str, str, str | None]]:
    """(script, module, name or None) for every ``import geomed_ssl...`` / ``from geomed_ssl... import name``."""
    found = []
    for script in sorted(BENCHMARKS.rglob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "geomed_ssl":
                found += [(script.relative_to(BENCHMARKS).as_posix(), node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(script.relative_to(BENCHMARKS).as_posix(), a.name, None) for a in node.names
                          if a.name.split(".")[0] == "geomed_ssl"]
    return found


def test_the_benchmarks_import_from_the_library() -> None:
    assert len({script for script, _, _ in library_imports()}) >= 10


@pytest.mark.parametrize("script,module,name", library_imports(), ids=lambda v: str(v))
def test_every_library_name_a_benchmark_imports_exists(script: str, module: str, name: str | None) -> None:
    mod = importlib.import_module(module)
    if name is not None and not hasattr(mod, name):
        importlib.import_module(f"{module}.{name}")  # a submodule imported by name
