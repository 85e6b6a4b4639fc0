"""The package graph that the README's layout section writes down: a core, and applications on it.

The core (errors up to train) is a stack: each package imports only core packages below it.
The applications (inference, evaluation, finetune, scaling, sweep, and cli, the entry logic)
import the core and only the applications they declare here; the core imports no application,
so a pretraining install needs none of their libraries (megallm.extras). There is no import
cycle between packages, and each reads, and tests, with only what it may import. Every import
counts, function-local and type-checking ones included. A function-local import must say why
it is local (a comment with "deferred:" or "optional:" on its line or just above it): such
imports are for start-up time or optional dependencies only, and would otherwise hide cycles.
"""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO
from tests.package_graph import (
    APPLICATIONS,
    CORE,
    REASON,
    function_local_imports,
    imported_units,
    may_import,
    modules,
    unit_of,
)


def test_every_package_has_a_place():
    units = {unit_of(p) for p in modules()}
    placed = set(CORE) | set(APPLICATIONS)
    assert units == placed, f"place {sorted(units - placed)} in CORE or APPLICATIONS (and the README's layout)"


def test_the_graph_has_no_cycle():
    """The applications' declared imports form no cycle (the core's order has none by construction)."""
    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt}))
                   for nxt in APPLICATIONS[start])
    assert not [app for app in APPLICATIONS if reaches(app, app, {app})]


def test_each_package_imports_only_what_the_graph_allows():
    violations = []
    for path in modules():
        unit = unit_of(path)
        for line, imported in imported_units(ast.parse(path.read_text())):
            if imported != unit and imported not in may_import(unit):
                kind = "the core" if unit in CORE and imported in APPLICATIONS else unit
                violations.append(f"{path.relative_to(REPO)}:{line}: {unit} imports {imported} ({kind} may not)")
    assert not violations, "\n".join(violations)


def test_the_check_catches_an_arrow_from_the_core_to_an_application(tmp_path):
    """The graph check on a module that breaks it: a core package importing an application, and one
    application importing another it did not declare."""
    tree = ast.parse("from megallm.evaluation.model import EvalModel\nimport megallm.sweep.plan\n")
    found = imported_units(tree)
    assert found == [(1, "evaluation"), (2, "sweep")]
    assert "evaluation" not in may_import("train") and "sweep" not in may_import("scaling")
    assert "evaluation" in may_import("finetune") and "train" in may_import("scaling")


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


def test_the_readme_shows_the_graph():
    """The README's two tables: applications with what they may import besides the core, then the core
    top-down."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    applications, core = section.split("### Applications", 1)[1].split("### Core", 1)
    rows = re.findall(r"^\| `megallm/(\w+)(?:/|\.py)` \|.*\| (.*) \|$", applications, flags=re.M)
    listed = {unit: sorted(re.findall(r"`(\w+)`", allowed)) for unit, allowed in rows}
    assert listed == {unit: sorted(apps) for unit, apps in APPLICATIONS.items()}
    assert re.findall(r"^\| `megallm/(\w+)(?:/|\.py)`", core, flags=re.M) == CORE[::-1]


# Tools that are not library code: a data-preparation script with its module beside it (Python puts a
# script's folder on sys.path); they use the library like any user script, and nothing imports them.
STANDALONE_TOOLS = {"make_eval_data.py", "eval_sources.py"}


def test_entry_points_are_thin_and_find_the_installed_package():
    """launch/ and tools/ scripts call megallm.cli; none edits sys.path."""
    for script in [*REPO.glob("launch/*.py"), *REPO.glob("tools/*.py"), *REPO.glob("bench/*.py")]:
        text = script.read_text()
        assert "sys.path" not in text, script
        if script.parent.name != "bench" and script.name not in STANDALONE_TOOLS:
            assert re.search(r"^from megallm\.cli\.\w+ import main$", text, flags=re.M), script
            body = ast.parse(text).body  # docstring, import sys, import main, if __name__ == "__main__"
            assert len(body) <= 4, script
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in body), script
