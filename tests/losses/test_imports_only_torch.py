"""ARCHITECTURE.md: ``losses/`` imports nothing but torch (and the standard library)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import simprune.losses

LOSSES = Path(simprune.losses.__file__).parent


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mod = node.module
            roots.add("simprune.losses" if mod.startswith("simprune.losses") else mod.split(".")[0])
    return roots


def test_losses_import_only_torch_and_stdlib():
    files = sorted(LOSSES.glob("*.py"))
    assert files
    allowed = {"torch", "__future__", "simprune.losses"} | set(sys.stdlib_module_names)
    for path in files:
        bad = _imported_roots(path) - allowed
        assert not bad, f"{path.name} imports {sorted(bad)}; losses may import only torch"
