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


@pytest.mark.slow
def test_make_run_notebooks_train_reconstruct_and_generate(tmp_path, shared_data, monkeypatch):
    """`make run` in miniature: 03 trains the quick profile for one epoch, 05 reconstructs and 06 generates with
    its model under a short sampler (5 noise levels, 1 step each), everything written under ``tmp_path``.

    The types are the decoder's argmax (``keep_composition=False``): the one-epoch composition head is nearly
    uniform, and keeping its composition gives crystals of 15+ elements, whose SMACT validity check (an
    enumeration of oxidation states) runs for hours. Every cell is limited to 10 minutes, so a hang fails.

    Skips without ../shared/data. The perov_5 split caches of the developer's cache are copied into the test's
    own cache folder when they are there (else the splits are parsed again: minutes).
    """
    import shutil

    papermill = pytest.importorskip("papermill")
    from tvcsp.data import home_dir

    cache = tmp_path / "cache"
    mine = home_dir() / "data" / "cache" / "perov_5"
    if mine.is_dir():
        shutil.copytree(mine, cache / "perov_5", ignore=shutil.ignore_patterns("stats_*"))
    monkeypatch.setenv("TVCSP_CACHE_DIR", str(cache))
    monkeypatch.setenv("TVCSP_DATA_DIR", str(shared_data))
    figures, run = tmp_path / "figures", tmp_path / "perov_5_quick_seed0"
    sampler = {"n_step_each": 1, "num_levels": 5, "update": "ancestral", "keep_composition": False, "workers": 1,
               "gallery": 2}
    runs = {
        "03_train": {"dataset": "perov_5", "profile": "quick", "max_epochs": 1, "device": "cpu", "run_dir": str(run),
                     "figures_dir": str(figures / "train")},
        "05_reconstruction": {"dataset": "perov_5", "checkpoint": str(run / "model.pt"), "limit": 8, "curve_limit": 0,
                              "best_of": 2,
                              "csp_limit": 4,
                              "out_dir": str(tmp_path / "reconstruction"),
                              "figures_dir": str(figures / "reconstruction"), **sampler},
        "06_generation": {"dataset": "perov_5", "checkpoint": str(run / "model.pt"), "n_generate": 8,
                          "batch_size": 8, "reference_limit": 16, "energy": False,
                          "out_dir": str(tmp_path / "generation"), "figures_dir": str(figures / "generation"),
                          **sampler},
    }
    for name, parameters in runs.items():
        papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                                   parameters=parameters, kernel_name="python3", cwd=str(REPO), progress_bar=False,
                                   execution_timeout=600)
    assert (run / "model.pt").is_file() and (figures / "train" / "perov_5_quick_summary.json").is_file()
    recon = json.loads((tmp_path / "reconstruction" / "metrics.json").read_text())
    assert recon["labels"]["n"] == 8 and recon["labels"]["decoder_calls_per_crystal"] == 5
    gen = json.loads((tmp_path / "generation" / "metrics.json").read_text())
    assert gen["labels"]["n_generated"] == 8 and gen["labels"]["prior"] == "normal"  # the quick model has none
    assert gen["labels"]["sampled_on"] and gen["labels"]["sampled_on"][0].startswith("cpu")
    drawn = {p.name for p in (figures / "generation").iterdir()}
    assert {"perov_5_quick_seed0_normal_prior_samples.png", "perov_5_quick_seed0_normal_gallery.png"} <= drawn
