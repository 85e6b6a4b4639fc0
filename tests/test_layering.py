"""The package layering that the README's layout section writes down.

megallm's packages form a stack: each imports only packages below it in LAYERS, never
one above, so there is no import cycle between packages and each can be read (and
tested) with only what is below it. Every import counts, function-local and
type-checking ones included. A function-local import must say why it is local (a
comment with "deferred:" or "optional:" on its line or just above it): such imports
are for start-up time or optional dependencies only, and would otherwise hide cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "megallm"
# Bottom to top: a package may import those before it.
LAYERS = ["errors", "files", "model", "parallel", "config", "optim", "metrics", "data", "engine", "checkpoint",
          "inference", "train", "evaluation", "finetune", "scaling", "sweep", "cli"]
REASON = re.compile(r"#.*\b(deferred|optional):")


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


def test_every_package_has_a_layer():
    units = {unit_of(p) for p in modules()}
    assert units == set(LAYERS), f"place {sorted(units - set(LAYERS))} in LAYERS (and the README's layout)"


def test_each_package_imports_only_packages_below_it():
    violations = []
    for path in modules():
        unit = unit_of(path)
        for line, imported in imported_units(ast.parse(path.read_text())):
            if imported != unit and LAYERS.index(imported) > LAYERS.index(unit):
                violations.append(f"{path.relative_to(REPO)}:{line}: {unit} imports {imported}, a layer above it")
    assert not violations, "\n".join(violations)


def test_function_local_imports_give_their_reason():
    unexplained = []
    for path in modules():
        source = path.read_text().splitlines()
        for line in function_local_imports(ast.parse("\n".join(source))):
            above = line - 1
            while above > 0 and (not source[above - 1].strip()  # one block of imports, blank lines between groups
                                  or source[above - 1].strip().startswith(("from ", "import ", ")"))):
                above -= 1
            window = source[max(0, above - 1):line]
            if not any(REASON.search(text) for text in window):
                unexplained.append(f"{path.relative_to(REPO)}:{line}: {source[line - 1].strip()}")
    assert not unexplained, "say why these imports are local (# deferred: ... / # optional: ...):\n" + \
        "\n".join(unexplained)


def test_the_readme_lists_the_layers_in_order():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `megallm/(\w+)(?:/|\.py)`", section, flags=re.M)
    assert listed == LAYERS[::-1], listed  # the README reads top-down


def test_entry_points_are_thin_and_find_the_installed_package():
    """launch/ and tools/ scripts call megallm.cli; none edits sys.path."""
    for script in [*REPO.glob("launch/*.py"), *REPO.glob("tools/*.py"), *REPO.glob("bench/*.py")]:
        text = script.read_text()
        assert "sys.path" not in text, script
        if script.parent.name != "bench":
            assert re.search(r"^from megallm\.cli\.\w+ import main$", text, flags=re.M), script
            body = ast.parse(text).body  # docstring, import sys, import main, if __name__ == "__main__"
            assert len(body) <= 4, script
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in body), script
