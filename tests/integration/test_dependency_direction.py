"""House rule (style §4.2): leaf packages never import each other or the umbrella; only `sana` composes them.

Checked on the source with `ast`, so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))
LEAVES = [p for p in PACKAGES if p != "sana"]


def _imported_top_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_imports_no_sibling(leaf: str) -> None:
    forbidden = set(PACKAGES) - {leaf}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_names(path) & forbidden)
        for path in (ROOT / "packages" / leaf).rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{leaf} imports sibling packages: {offenders}"


@pytest.mark.parametrize("package", PACKAGES)
def test_public_api_is_documented(package: str) -> None:
    """Style §4.3: each package starts with a docstring and exports an explicit, non-empty __all__."""
    module = __import__(package)
    assert module.__doc__ and len(module.__doc__.strip()) > 40, f"{package} lacks a package docstring"
    assert isinstance(module.__all__, tuple) and module.__all__, f"{package}.__all__ must be a non-empty tuple"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names missing attributes: {missing}"
