"""Latent-space tools (tvcsp.latent) on the untrained tiny model, and notebook 04 run headless (slow)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_DATA, perovskite, rock_salt, tiny_vae, toy_dataset
from pymatgen.core import Lattice, Structure

from tvcsp.latent import (
    available_projections,
    crystal_labels,
    crystal_valid,
    decode_latents,
    encode_posterior,
    encode_split,
    fit_pca,
    interpolate,
    neighbourhood,
    optimize_property,
    project,
    success_rates,
)
from tvcsp.sampling import SamplerSettings
from tvcsp.train import read_metrics, train
from tvcsp.vae import CrystalVAE

ONE_STEP = SamplerSettings(n_step_each=1, min_sigma=1.0)  # a few decoder calls: enough to compare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model with the property head on, toy split, its latent means)."""
    root = tmp_path_factory.mktemp("toy")
    model, crystals = tiny_vae(root, root / "cache")
    torch.manual_seed(1)
    model = CrystalVAE(dataclasses.replace(model.config, predict_property=True), model.stats, model.scalers).eval()
    return model, crystals, encode_split(model, crystals)


def same_structures(a, b) -> bool:
    return all(
        x.lattice == y.lattice and x.atomic_numbers == y.atomic_numbers and np.array_equal(x.frac_coords, y.frac_coords)
        for x, y in zip(a, b, strict=True)
    )


def test_property_head_switch_logs_train_property(tmp_path):
    info = toy_dataset(tmp_path)
    train(info, "quick", tmp_path / "run", data_dir=tmp_path, progress=False, predict_property=True, max_epochs=1,
          batch_size=6, val_batch_size=3, train_subset=None, val_subset=None, coordination_sample=None,
          accelerator="cpu", devices=1)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["train_property"].notna().any() and metrics["val_property"].notna().any()


def test_encode_split_gives_means_or_seeded_samples(tiny):
    model, crystals, mu = tiny
    assert mu.shape == (len(crystals), model.config.latent_dim)
    assert torch.allclose(encode_split(model, crystals, batch_size=4), mu, atol=1e-5)  # batching does not matter
    z = encode_split(model, crystals, sample=True, seed=2)
    assert torch.equal(z, encode_split(model, crystals, sample=True, seed=2)) and not torch.allclose(z, mu)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_endpoints_are_the_encoded_latents(tiny, method):
    model, _, mu = tiny
    path = interpolate(mu[0], mu[2], 5, method)
    assert path.shape == (5, mu.shape[1])
    assert torch.equal(path[0], mu[0]) and torch.equal(path[-1], mu[2])
    assert torch.equal(interpolate(mu[0], mu[2], [0.5, 1.0], method), path[2:5:2])
    if method == "slerp":  # the middle point is on the great circle: its norm interpolates the sines
        assert not torch.allclose(path[2], (mu[0] + mu[2]) / 2)


def test_decoding_the_endpoints_gives_the_crystals_of_the_latents(tiny):
    model, _, mu = tiny
    path = interpolate(mu[0], mu[2], 4, "slerp")
    ends = decode_latents(model, path[[0, -1]], ONE_STEP, seed=5)
    assert same_structures(ends, decode_latents(model, torch.stack([mu[0], mu[2]]), ONE_STEP, seed=5))
    assert same_structures(ends[:1], decode_latents(model, mu[:1], ONE_STEP, seed=5))  # shared noise: z alone


def test_projections_are_deterministic_with_a_seed():
    x = np.random.default_rng(0).normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 0.5, 0.1])
    pca = project(x, "pca")
    assert pca.shape == (40, 2) and np.array_equal(pca, project(torch.tensor(x), "pca"))
    assert np.allclose(pca.mean(0), 0.0) and pca[:, 0].var() > pca[:, 1].var()
    from sklearn.decomposition import PCA

    assert np.allclose(np.abs(pca), np.abs(PCA(2).fit_transform(x)))
    tsne = project(x[:25], "tsne", seed=3)
    assert tsne.shape == (25, 2) and np.array_equal(tsne, project(x[:25], "tsne", seed=3))
    threads = torch.get_num_threads()
    umap = project(x[:30], "umap", seed=3)
    assert torch.get_num_threads() == threads  # numba's OpenMP layer does not leave torch on more threads
    assert umap.shape == (30, 2) and np.isfinite(umap).all() and np.array_equal(umap, project(x[:30], "umap", 3))
    with pytest.raises(ValueError, match="unknown projection"):
        project(x, "isomap")


def test_available_projections_leave_out_umap_without_umap_learn(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else find_spec(name, *a))
    assert available_projections() == (["pca", "tsne"], None)  # the default asks for nothing: no note
    chosen, note = available_projections(["umap", "pca", "umap"])
    assert chosen == ["pca"] and "umap-learn is not installed" in note and "\n" not in note
    assert available_projections(["umap"])[0] == ["pca"]  # nothing left: PCA
    assert available_projections(["tsne"]) == (["tsne"], None)
    with pytest.raises(ValueError, match="unknown projection"):
        available_projections(["isomap"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert available_projections() == (["pca", "tsne", "umap"], None)


def test_fit_pca_maps_new_points_onto_the_map_of_the_fitted_ones(tiny):
    x = np.random.default_rng(1).normal(size=(60, 5)) * np.array([4.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
    pca = fit_pca(x)
    assert np.array_equal(pca.transform(x), project(x, "pca"))
    assert np.allclose(pca.axes @ pca.axes.T, np.eye(2)) and 0.8 < pca.explained < 1.0
    assert np.allclose(pca.transform(x.mean(0, keepdims=True)), 0.0)  # the mean sits at the origin
    new = np.random.default_rng(2).normal(size=(7, 5))
    assert np.allclose(pca.transform(torch.tensor(new)), (new - x.mean(0)) @ pca.axes.T)
    model, crystals, mu = tiny
    mean, logvar = encode_posterior(model, crystals)
    assert torch.allclose(mean, mu, atol=1e-6) and logvar.shape == mu.shape and not mean.requires_grad


def test_neighbourhood_is_seeded_and_centred(tiny):
    z = tiny[2][0]
    points = neighbourhood(z, 200, radius=0.1, seed=4)
    assert points.shape == (200, z.numel()) and torch.equal(points, neighbourhood(z, 200, radius=0.1, seed=4))
    assert (points - z).std().item() == pytest.approx(0.1, rel=0.1)


def test_optimisation_lowers_the_predicted_property(tiny):
    model, _, mu = tiny
    before = [p.clone() for p in model.parameters()]
    result = optimize_property(model, mu[:4], steps=50, lr=1e-3, decode_every=20, decode_sets=False, progress=False)
    assert result.predicted.shape == (51, 4) and result.decode_steps == [0, 20, 40, 49]
    assert result.z.shape == (4, 4, mu.shape[1]) and result.structures == []
    assert (result.predicted[-1] < result.predicted[0]).all()
    assert all(torch.equal(a, b) and b.requires_grad for a, b in zip(before, model.parameters(), strict=True))


def test_optimisation_decodes_every_saved_step(tiny):
    model, _, mu = tiny
    result = optimize_property(model, mu[:2], steps=3, decode_every=2, sampler=ONE_STEP, progress=False)
    assert result.decode_steps == [0, 2] and [len(s) for s in result.structures] == [2, 2]


def cubic_srtio3(a: float) -> Structure:
    return Structure(Lattice.cubic(a), perovskite().species, perovskite().frac_coords)


def test_success_rates_use_the_best_valid_crystal_per_starting_point():
    overlapping = Structure(Lattice.cubic(3.0), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.01, 0, 0]])
    sets = [[cubic_srtio3(4.6), cubic_srtio3(4.2), None, overlapping],
            [cubic_srtio3(3.9), overlapping, cubic_srtio3(4.6), None]]
    seen = []

    def fake_predictor(structures):  # perov thresholds 0.439 / 0.612 / 0.736 eV/atom
        seen.extend(structures)
        return np.array([s.lattice.a - 3.5 for s in structures])

    result = success_rates(sets, fake_predictor, "perov_5")
    assert not crystal_valid(overlapping) and len(seen) == 4
    assert result.rates == pytest.approx({"SR5": 0.25, "SR10": 0.25, "SR15": 0.5}) and result.valid_fraction == 0.5
    assert np.allclose(result.properties, [[1.1, 0.7, np.nan, np.nan], [0.4, np.nan, 1.1, np.nan]], equal_nan=True)
    assert success_rates([[None, None]], fake_predictor, "perov_5").rates["SR15"] == 0.0


def test_crystal_labels_of_hand_built_structures_and_a_split(tiny):
    labels = crystal_labels([rock_salt(), perovskite()], elements=["O", "Na"])
    assert labels["spacegroup"].tolist() == ["Fm-3m", "Pm-3m"]
    assert labels["spacegroup_number"].tolist() == [225, 221] and set(labels["crystal_system"]) == {"cubic"}
    assert labels["formula"].tolist() == ["NaCl", "SrTiO3"] and labels["num_atoms"].tolist() == [8, 5]
    assert labels["has_O"].tolist() == [False, True] and labels["has_Na"].tolist() == [True, False]
    split = crystal_labels(tiny[1])
    assert split["id"].tolist() == [f"m{i}" for i in range(6)] and split["property"].tolist() == list(range(6))


@pytest.mark.slow
def test_notebook_04_runs_headless(tmp_path):
    """Notebook 04 under papermill on perov_5 with tiny settings (trains quick models if none exist: minutes)."""
    if not (SHARED_DATA / "perov_5").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    figures = tmp_path / "figures"
    params = ["-p", "dataset", "perov_5", "-p", "n_encode", "60", "-p", "n_interp", "3", "-p", "n_opt", "2",
              "-p", "opt_steps", "9", "-p", "sampler_steps", "1", "-p", "interactive", "False",
              "-p", "figures_dir", str(figures), "-p", "export_dir", str(tmp_path / "exports")]
    cmd = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / "04_latent_space.ipynb"),
           str(tmp_path / "out.ipynb"), *params, "--cwd", str(REPO)]
    subprocess.run(cmd, check=True, env={**os.environ, "TVCSP_CACHE_DIR": ""}, timeout=3600)
    written = {p.name for p in figures.iterdir()}
    names = ("projection_pca", "elements_tsne", "projection_umap", "interpolation", "explorer_decoded",
             "neighbourhood", "optimisation")
    expected = {f"perov_5_{name}.png" for name in names}
    assert expected <= written, written
    assert json.loads((figures / "perov_5_optimisation_sr.json").read_text())["decoded_sets"] == 9  # every step


def test_property_loss_ignores_crystals_without_a_label():
    from tvcsp.vae import masked_mse

    prediction = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = masked_mse(prediction, torch.tensor([0.0, float("nan"), 1.0]))
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)  # the unlabelled middle row counts neither way
    loss.backward()
    assert prediction.grad.tolist() == [1.0, 0.0, 2.0]
    none = masked_mse(prediction, torch.full((3,), float("nan")))
    assert none.item() == 0.0 and none.requires_grad
