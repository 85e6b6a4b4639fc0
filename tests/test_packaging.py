"""What a core install brings and what each application's extra adds (pyproject.toml, megallm.extras).

The core packages import, at module level, only libraries of the core install, so
`pip install megallm` pretrains; an application's module-level imports come from the core and
its own extras; any other third-party import is function-local and marked optional, and every
third-party library megallm imports is declared somewhere. megallm.extras (which tells a user
the pip command) lists exactly pyproject.toml's extras.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from megallm.extras import EXTRAS
from tests.helpers import REPO
from tests.package_graph import APPLICATIONS, CORE, function_local_imports, modules, unit_of

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (megallm supports 3.10; its CI runs 3.11)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# The extras each application's modules may import at module level (the harness is lm-eval's plug-in).
APPLICATION_EXTRAS = {"inference": [], "evaluation": ["eval", "harness"], "finetune": ["eval"],
                      "scaling": ["scaling"], "sweep": [], "cli": []}


def distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("scikit-learn>=1.3" -> "scikit-learn")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


CORE_DISTRIBUTIONS = {distribution(r) for r in PYPROJECT["dependencies"]}
EXTRA_DISTRIBUTIONS = {extra: {distribution(r) for r in requirements}
                       for extra, requirements in PYPROJECT["optional-dependencies"].items()}


def third_party_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level module, imported at module level) of each third-party import of `path`."""
    tree = ast.parse(path.read_text())
    local = set(function_local_imports(tree))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("megallm", "__future__"):
                found.append((node.lineno, top, node.lineno not in local))
    return found


def provider(module: str) -> set[str]:
    """The distributions that provide `module`: installed ones, else what megallm.extras says."""
    installed = {distribution(d) for d in packages_distributions().get(module, [])}
    declared = {distribution(dist) for modules_ in EXTRAS.values() for m, dist in modules_.items() if m == module}
    return installed | declared


def test_extras_module_lists_pyprojects_extras():
    listed = {extra: {distribution(d) for d in modules_.values()} for extra, modules_ in EXTRAS.items()}
    assert listed == {extra: dists for extra, dists in EXTRA_DISTRIBUTIONS.items() if extra != "test"}


def test_applications_and_their_extras_leave_the_core_install_lean():
    heavy = {"scipy", "matplotlib", "scikit-learn", "sacrebleu", "rouge-score", "bm25s", "lm-eval", "transformers"}
    assert not heavy & CORE_DISTRIBUTIONS


def test_every_import_comes_from_a_declared_distribution():
    problems = []
    declared_anywhere = CORE_DISTRIBUTIONS.union(*EXTRA_DISTRIBUTIONS.values())
    for path in modules():
        unit = unit_of(path)
        allowed = CORE_DISTRIBUTIONS.union(*(EXTRA_DISTRIBUTIONS[e] for e in APPLICATION_EXTRAS.get(unit, [])))
        for line, module, at_module_level in third_party_imports(path):
            where = f"{path.relative_to(REPO)}:{line}: {module}"
            dists = provider(module)
            if not dists & declared_anywhere:
                problems.append(f"{where} comes from {sorted(dists) or 'nothing installed'}, declared nowhere")
            elif at_module_level and not dists & allowed:
                kind = "a core package" if unit in CORE else f"application {unit}"
                problems.append(f"{where} is imported at module level by {kind}, but {sorted(dists)} is not "
                                "in what it may assume installed (import it where needed, # optional:)")
    assert not problems, "\n".join(problems)


def test_every_application_names_its_extras():
    assert set(APPLICATION_EXTRAS) == set(APPLICATIONS)
    assert all(extra in EXTRAS for extras in APPLICATION_EXTRAS.values() for extra in extras)
