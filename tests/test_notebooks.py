"""Every numbered notebook: committed without outputs, with a ``parameters`` cell papermill reads cleanly."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import REPO
from papermill.translators import PythonTranslator

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_all_six_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_parses_without_warnings(path, caplog):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    source = "".join(cells[0]["source"])
    with caplog.at_level(logging.WARNING, logger="papermill"):
        inferred = PythonTranslator.inspect({"source": source})
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assigned = [line.split("=")[0].split(":")[0].strip() for line in source.splitlines()
                if "=" in line.split("#")[0] and not line.startswith((" ", "#"))]
    assert [p.name for p in inferred] == assigned
