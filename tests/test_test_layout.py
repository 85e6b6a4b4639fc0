"""The suite's own layout: no module under tests/ imports from a test module or a conftest.py.

A test module that imports another (`from tests.evaluation.test_model import trained_model`) runs
that module's import-time code, ties the two together, and hides what is shared. Shared fixtures
live in a conftest.py (pytest finds them by name; never imported), shared code and data in plain
modules: tests/helpers.py, tests/llama_families.py, tests/wandb_offline.py, tests/<area>/inputs.py,
tests/evaluation/trained.py.
"""

from __future__ import annotations

import ast

from tests.helpers import REPO

TESTS = REPO / "tests"


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every module `tree` imports, function-local ones and the modules of
    `from package import name` included; relative imports resolved against `package`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest")


def test_no_module_imports_a_test_module_or_a_conftest():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parent.parts)
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)), package):
            if is_test_module(name):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "shared fixtures belong in a conftest.py, shared code in a helper module:\n" + "\n".join(
        offenders)


def test_the_check_sees_every_kind_of_import():
    source = ("from tests.model.test_document_masking import CFG\n"
              "def f():\n    from tests.train.test_wandb import OfflineRun\n"
              "from tests.evaluation import test_model\n"
              "from .test_model import trained_model\n"
              "import tests.scaling.conftest\n"
              "from tests.helpers import REPO\nfrom tests.scaling.inputs import CHINCHILLA_CSV\n")
    flagged = sorted({line for line, name in imported_modules(ast.parse(source), "tests.evaluation")
                      if is_test_module(name)})
    assert flagged == [1, 3, 4, 5, 6]
