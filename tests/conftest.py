"""Shared fixtures: hand-built crystals and the optional ../shared/data folder."""

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The benchmark CSVs beside the project; tests using it skip cleanly where it is absent."""
    if not (SHARED_DATA / "perov_5").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes processed caches to a fresh folder, never to the developer's data/cache."""
    monkeypatch.setenv("TVCSP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def perovskite() -> Structure:
    """Cubic SrTiO3, 5 atoms, a = 3.905 Å."""
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def triclinic() -> Structure:
    """A skewed 3-atom cell with unwrapped fractional coordinates."""
    return Structure(
        Lattice.from_parameters(3.0, 3.2, 4.1, 70, 80, 110),
        ["Na", "Cl", "Cl"],
        [[0, 0, 0], [0.5, 0.4, 0.6], [1.2, -0.3, 0.1]],
    )


def tiny_cell() -> Structure:
    """A 1-atom 1.6 Å cell: a 10 Å cutoff reaches far beyond the 27 nearest images."""
    return Structure(Lattice.from_parameters(1.6, 1.7, 1.9, 80, 95, 100), ["C"], [[0.1, 0.2, 0.3]])


def rock_salt() -> Structure:
    """Conventional NaCl, 8 atoms, every atom 6-coordinated."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
