"""Every numbered notebook imports only what the core install provides: the standard library, tvcsp and the
distributions that ``pip install tvcsp`` brings (its dependencies and theirs, extras left out)."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from importlib import metadata

import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def core_distributions() -> set[str]:
    """The project's dependencies and, transitively, theirs (requirements behind an ``extra`` marker left out)."""
    todo = [_name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r.replace('"', "").replace("'", "")]
    return seen


def notebook_imports(path) -> set[str]:
    """Top-level modules imported by the notebook's code cells (IPython magics and shell lines skipped)."""
    modules = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        tree = ast.parse("\n".join(line for line in lines if not line.lstrip().startswith(("%", "!"))))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_come_with_the_core_install(path):
    core, owners = core_distributions(), metadata.packages_distributions()
    outside = sorted(m for m in notebook_imports(path) - set(sys.stdlib_module_names) - {"tvcsp"}
                     if not {d.lower().replace("_", "-") for d in owners.get(m, [])} & core)
    assert not outside, f"{path.name} imports {outside}, which only an extra installs"


def test_the_check_sees_an_extra():
    assert "umap-learn" not in core_distributions() and "pymatgen" in core_distributions()
    assert not {d.lower() for d in metadata.packages_distributions().get("umap", [])} & core_distributions()
