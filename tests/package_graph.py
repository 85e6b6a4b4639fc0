"""megallm's package graph (a core stack, applications with declared edges) and the AST readers that
check imports against it: shared by tests/test_layering.py and tests/test_packaging.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "megallm"
# Bottom to top: a core package may import those before it.
CORE = ["errors", "extras", "files", "run_layout", "model", "parallel", "config", "optim", "metrics", "data", "engine",
        "checkpoint", "train"]
# Each application may import the whole core and the applications listed.
APPLICATIONS = {
    "inference": [],
    "evaluation": ["inference"],
    "finetune": ["evaluation"],  # its classification scores: accuracy, macro-F1
    "scaling": [],
    "sweep": [],
    "cli": ["inference", "evaluation", "finetune", "scaling", "sweep"],
}
REASON = re.compile(r"#.*\b(deferred|optional):")


def may_import(unit: str) -> set[str]:
    """The packages `unit` may import (besides itself)."""
    if unit in CORE:
        return set(CORE[:CORE.index(unit)])
    return set(CORE) | set(APPLICATIONS[unit])


def unit_of(path: Path) -> str:
    """The layer a module belongs to: its package under megallm/, or the top-level module's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, megallm unit) of every import of megallm in `tree`."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "megallm" else [f"megallm.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "megallm" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def function_local_imports(tree: ast.Module) -> list[int]:
    """Lines of the imports inside functions (module level, `if TYPE_CHECKING` and `try` blocks excluded)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines += [n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return sorted(set(lines))


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)
