"""Shared fixtures: hand-built crystals and the optional ../shared/data folder."""

from pathlib import Path

import pytest
import torch
from pymatgen.core import Lattice, Structure

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The benchmark CSVs beside the project; tests using it skip cleanly where it is absent."""
    if not (SHARED_DATA / "perov_5").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny: one intra-op thread is as fast, and immune to OpenMP spin-waiting on a busy
    shared machine (10–100× slower with two threads there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def high_symmetry_crystals() -> dict:
    """Crystals whose neighbour shells are exactly tied at any cap: name → builder of a pymatgen Structure."""
    def spacegroup(group, lattice, species, coords):
        return lambda: Structure.from_spacegroup(group, lattice, species, coords)

    return {
        "rock_salt": rock_salt,
        "perovskite": perovskite,
        "diamond": spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]),
        "bcc_iron": spacegroup("Im-3m", Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]),
        "fcc_copper": spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]),
        "hcp_magnesium": spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]]),
        "cesium_chloride": lambda: Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "primitive_fcc": lambda: Structure(Lattice.from_parameters(2.55, 2.55, 2.55, 60, 60, 60), ["Cu"], [[0, 0, 0]]),
    }


def toy_structures() -> list[Structure]:
    """Six small crystals (3–8 atoms): the fixtures above plus two cubic BaTiO3 cells."""
    cubic = [Structure(Lattice.cubic(a), ["Ba", "Ti", "O", "O", "O"], perovskite().frac_coords) for a in (3.9, 4.1)]
    return [perovskite(), triclinic(), rock_salt(), *cubic, tiny_cell()]


def toy_dataset(root: Path):
    """Write :func:`toy_structures` as a custom dataset ``toy`` (train = all, val = first 3) under ``root``."""
    import pandas as pd

    from tvcsp.data import custom_dataset

    folder = root / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"material_id": f"m{i}", "cif": s.to(fmt="cif"), "e": float(i)} for i, s in enumerate(toy_structures())]
    pd.DataFrame(rows).to_csv(folder / "train.csv")
    pd.DataFrame(rows[:3]).to_csv(folder / "val.csv")
    return custom_dataset("toy", {"train": "train.csv", "val": "val.csv"}, prop="e")


def tiny_vae(root: Path, cache: Path, seed: int = 0, **decoder):
    """An untrained ``quick``-profile CrystalVAE (no scale-factor download) fitted to :func:`toy_dataset`;
    ``decoder`` replaces DecoderConfig fields.

    Returns (model, train split). ``cache`` is passed explicitly, so module-scoped fixtures may use it.
    """
    import dataclasses

    import torch

    from tvcsp.data import fit_scalers, load_split, load_stats
    from tvcsp.train import make_configs
    from tvcsp.vae import CrystalVAE

    info = toy_dataset(root)
    vae, _ = make_configs(info, "quick")
    vae = dataclasses.replace(vae, decoder=dataclasses.replace(vae.decoder, scale_factors="none", **decoder))
    train_set = load_split(info, "train", data_dir=root, cache=cache, progress=False)
    stats = load_stats(info, cutoff=6.0, max_neighbors=12, coordination_sample=None, data_dir=root, cache=cache,
                       progress=False)
    torch.manual_seed(seed)
    model = CrystalVAE(dataclasses.replace(vae, max_atoms=stats.max_atoms), stats, fit_scalers(train_set))
    return model.eval(), train_set
