"""Installed models: a wheel of the package carries the shipped models, so ``pip install .`` (not editable) gives
``tvcsp.load_pretrained("perov_5")`` without a checkout, and leaves the training-resume checkpoints out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what the build reads: the package, the models it ships as tvcsp/pretrained_models, and the metadata files
BUILD_INPUTS = ["pyproject.toml", "README.md", "tvcsp", "models"]

CHECK_INSTALLED = """
import json, tvcsp
from tvcsp.pretrained import available_pretrained, pretrained_path
model = tvcsp.load_pretrained("perov_5")
path = pretrained_path("perov_5")
print(json.dumps({"tvcsp": tvcsp.__file__, "available": available_pretrained(), "path": str(path),
                  "prior": model.latent_prior is not None, "eval": not model.training,
                  "card": "Limitations" in path.with_suffix(".md").read_text()}))
"""


def test_pyproject_lists_every_subpackage():
    """pyproject.toml lists the packages (the models' mapping rules out ``packages.find``): none may be missing."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tvcsp").rglob("__init__.py")}
    assert listed == found | {"tvcsp.pretrained_models"}


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--no-cache-dir",
                           "--disable-pip-version-check", "--quiet"], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not (ROOT / "models" / "perov_5.pt").is_file(), reason="no shipped models/perov_5.pt here")
def test_wheel_ships_the_models_and_loads_them_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _pip("wheel", str(source), "--no-build-isolation", "-w", str(tmp_path / "dist"), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("tvcsp-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "resume" in n], "training-resume checkpoints must stay out of the wheel"
    shipped = {Path(n).name for n in names if n.startswith("tvcsp/pretrained_models/")}
    expected = {p.name for p in (ROOT / "models").iterdir()
                if p.is_file() and p.suffix in {".pt", ".md", ".json", ".csv"}}
    assert {"perov_5.pt", "perov_5.prior.pt", "perov_5.md"} <= expected == shipped
    assert wheel.stat().st_size < 20e6

    site = tmp_path / "site"
    _pip("install", "--target", str(site), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TVCSP_MODELS_DIR"}
    env |= {"PYTHONPATH": str(site), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}  # shadows the checkout
    done = subprocess.run([sys.executable, "-c", CHECK_INSTALLED], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["tvcsp"]).is_relative_to(site), got["tvcsp"]
    assert Path(got["path"]) == site / "tvcsp" / "pretrained_models" / "perov_5.pt"
    assert "perov_5" in got["available"] and got["prior"] and got["eval"] and got["card"]
